"""Helpers for end-to-end tests: run the real `mm-platform` CLI in a subprocess."""

import json
import os
import socket
import subprocess
import sys
import urllib.request
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as resp:
        body = json.loads(resp.read())
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]
