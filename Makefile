# mm_platform — `make demo` and `make test` work from a fresh clone (they create .venv when missing).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# test processes (pytest-xdist; one test file stays in one process, so module fixtures are built once)
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: setup demo test test-fast ui serve check-defs bench lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

setup: $(STAMP) ## create .venv and install the project with its dev extras

demo: setup ## write a demo batch, ingest it end to end, print what was found
	$(BIN)/mm-platform demo

test: setup ## the whole test suite (unit, asset, end-to-end)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST)

test-fast: setup ## everything but the end-to-end tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST) -m "not e2e"

ui: setup ## the Dagster UI + daemon (sensors, automation) on a project-local DAGSTER_HOME, via `dg dev`
	DAGSTER_HOME="$$($(BIN)/mm-platform home)" $(BIN)/dg dev

serve: setup ## the search and cluster explorer at http://127.0.0.1:8765
	$(BIN)/mm-platform serve

check-defs: setup ## the code location loads and validates: `dg check defs` (project shape from [tool.dg]); for CI
	$(BIN)/dg check defs

bench: setup ## benchmarks that print ratios measured in one run
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_ingest.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_quality.py

lint: setup
	$(BIN)/ruff check mm_platform mm_platform_tests bench

clean: ## remove generated data (not the venv)
	rm -rf data
