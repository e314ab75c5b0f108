"""A small ingested demo corpus (offline profile, ~40 records, all modalities) for the explorer's tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mm_platform.lib.settings import Paths

ENV_VARS = ("MM_LANDING_DIR", "MM_LAKE_DIR", "MM_DUCKDB_PATH", "MM_QDRANT_PATH", "QDRANT_URL", "MM_SERVE_TOKEN")


def corpus_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(MM_DATA_DIR=str(root / "data"), MM_MODEL_PROFILE="offline", HF_HUB_OFFLINE="1",
               DAGSTER_HOME=str(root / "dagster_home"))
    return env


def build_corpus(root: Path, records: int = 40) -> dict[str, str]:
    """Make and ingest a demo batch with the real CLI; returns the environment that points at it."""
    env = corpus_env(root)
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    for args in (["make-demo-data", "--records", str(records), "--seed", "3", "--broken", "2"], ["ingest"]):
        proc = subprocess.run([sys.executable, "-m", "mm_platform.cli", *args], env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        assert proc.returncode == 0, f"mm-platform {args}: {proc.stdout}\n{proc.stderr}"
    return env


@contextmanager
def corpus_environ(env: dict[str, str]) -> Iterator[Paths]:
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV_VARS:
            mp.delenv(var, raising=False)
        for key in ("MM_DATA_DIR", "MM_MODEL_PROFILE", "HF_HUB_OFFLINE", "DAGSTER_HOME"):
            mp.setenv(key, env[key])
        yield Paths.from_env()
