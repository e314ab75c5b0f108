"""Helpers for end-to-end tests: run the real `mm-platform` CLI in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "mm_platform.cli"]


def run_cli(*args: str, env: dict | None = None, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"mm-platform {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli_json(*args: str) -> dict:
    return json.loads(run_cli(*args, "--json").stdout)


@pytest.fixture()
def cli_paths(paths, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("MM_MODEL_PROFILE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return paths
