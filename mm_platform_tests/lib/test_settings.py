"""One settings registry (mm_platform/lib/settings.py): every variable the code reads is declared there once,
and what is generated from it (.env.example, the docs' configuration table) is current."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mm_platform.lib import settings
from mm_platform.lib.settings import BY_NAME, SETTINGS, setting, setting_int

ROOT = Path(__file__).resolve().parents[2]
ENV_NAME = re.compile(r"""["']((?:MM|QDRANT)_[A-Z0-9_]+)["']""")


def test_env_example_is_generated_from_the_registry() -> None:
    assert (ROOT / ".env.example").read_text() == settings.env_example(), \
        "regenerate: mm-platform config --env-example > .env.example"


def test_docs_configuration_table_is_generated_from_the_registry() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("\n", text.index("<!-- settings-table:start")) + 1
    assert text[start:text.index("<!-- settings-table:end -->")] == settings.config_table(), \
        "regenerate the table in docs/operations.md: mm-platform config --table"


def test_every_variable_the_code_names_is_registered_once() -> None:
    assert len(BY_NAME) == len(SETTINGS)
    named: dict[str, str] = {}
    for path in (ROOT / "mm_platform").rglob("*.py"):
        for name in ENV_NAME.findall(path.read_text()):
            named.setdefault(name, str(path.relative_to(ROOT)))
    missing = {n: p for n, p in named.items() if n not in BY_NAME}
    assert not missing, f"read but not declared in lib/settings.py SETTINGS: {missing}"


def test_defaults_come_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from mm_platform.defs.resources import build_resources
    from mm_platform.lib.encoders.audio import DEFAULT_CLAP_MODEL
    from mm_platform.lib.encoders.registry import EncoderSettings

    for s in SETTINGS:
        monkeypatch.delenv(s.name, raising=False)
    res = build_resources()
    assert res["pipeline"].cluster_k_max == setting_int("MM_CLUSTER_K_MAX") == 12
    assert res["encoders"].clip_arch == EncoderSettings().clip_arch == setting("MM_CLIP_ARCH")
    assert res["qdrant"].backend == "edge" and res["device"].batch_size == 64
    assert DEFAULT_CLAP_MODEL == setting("MM_CLAP_MODEL")
    monkeypatch.setenv("MM_CLUSTER_K_MAX", " 7 ")
    assert setting_int("MM_CLUSTER_K_MAX") == 7
    assert setting("MM_SQL_DIR") == ""  # a computed default is the caller's to compute


def test_config_command_prints_values_and_their_source(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MM_DATA_DIR": str(tmp_path / "d"), "MM_DEVICE": "cpu",
           "QDRANT_API_KEY": "s3cret"}
    out = subprocess.run([sys.executable, "-m", "mm_platform.cli", "config", "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    rows = {r["variable"]: r for r in json.loads(out)}
    assert set(rows) == set(BY_NAME)
    assert (rows["MM_DEVICE"]["value"], rows["MM_DEVICE"]["source"]) == ("cpu", "environment")
    assert (rows["MM_BATCH_SIZE"]["value"], rows["MM_BATCH_SIZE"]["source"]) == ("64", "default")
    assert rows["MM_LAKE_DIR"]["value"] == str((tmp_path / "d" / "lake").resolve())
    assert "s3cret" not in out and rows["QDRANT_API_KEY"]["source"] == "environment"


def test_settings_are_typed_and_every_default_fits_its_type() -> None:
    assert set(settings.KINDS) <= set(BY_NAME), "a type declared for a variable the registry does not have"
    for s in SETTINGS:
        assert s.problem(s.default if not s.computed else "") is None, s.name
    assert BY_NAME["MM_BATCH_SIZE"].kind == "int" and BY_NAME["MM_COMPUTE"].kind == ("local", "ray")
    assert settings.problems({"MM_BATCH_SIZE": "sixty", "MM_COMPUTE": "spark", "MM_DEVICE": "cuda:1",
                              "MM_STEP_THREADS": "3", "MM_LAKE_VACUUM_RETENTION_HOURS": "1.5"}) == [
        "MM_BATCH_SIZE='sixty' is not an integer", "MM_COMPUTE='spark' is not one of local | ray"]
    assert settings.problems({"MM_DEVICE": "cuda:x", "MM_STEP_THREADS": "0"}) == [
        "MM_DEVICE='cuda:x' is not one of auto | cpu | cuda | cuda:N", "MM_STEP_THREADS='0' is not one of auto | N"]
    with pytest.raises(ValueError, match="MM_CLUSTER_K_MAX='many' is not an integer"):
        setting_int("MM_CLUSTER_K_MAX", {"MM_CLUSTER_K_MAX": "many"})


def test_config_command_names_an_invalid_setting(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MM_DATA_DIR": str(tmp_path / "d"), "MM_MAP_METHOD": "umap"}
    done = subprocess.run([sys.executable, "-m", "mm_platform.cli", "config"], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2
    assert "MM_MAP_METHOD='umap' is not one of pca | tsne" in done.stderr
