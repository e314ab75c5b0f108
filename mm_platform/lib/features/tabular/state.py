"""Persisting encoder states: content-versioned JSON files, atomic writes and a locked fit-or-load."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mm_platform.lib.features.tabular.fit import fit_tabular
from mm_platform.lib.features.tabular.numbers import _short
from mm_platform.lib.features.tabular.spec import (
    _VERSION_RE,
    CURRENT_NAME,
    LOCK_NAME,
    STATE_PREFIX,
    FieldValue,
    TabularEncoderState,
    _canonical,
)


def state_path(directory: Path | str, version: str) -> Path:
    """``<directory>/tabular_encoder-<version>.json``."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise ValueError(f"bad tabular encoder version {_short(version)} (expected 12 lowercase hex digits)")
    return Path(directory) / f"{STATE_PREFIX}{version}.json"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_state(state: TabularEncoderState, directory: Path | str) -> Path:
    """Write the state as ``tabular_encoder-<version>.json`` and point ``current.json`` at it.

    Both writes are atomic (temp file + ``os.replace``). Returns the state file path.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = state_path(d, state.version)
    _atomic_write(path, state.to_json())
    _atomic_write(d / CURRENT_NAME, _canonical({"version": state.version, "file": path.name}) + "\n")
    return path


def load_state(directory: Path | str, version: str | None = None) -> TabularEncoderState | None:
    """Load state ``version`` (the one ``current.json`` points at when ``None``).

    Returns ``None`` when nothing is saved (no ``current.json``, or no file for ``version``).

    Raises:
        ValueError: a malformed ``current.json`` or state file, or a file whose content does not match
            its version.
    """
    d = Path(directory)
    if version is None:
        try:
            text = (d / CURRENT_NAME).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{d / CURRENT_NAME}: not valid JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("version"), str):
            raise ValueError(f"{d / CURRENT_NAME}: expected {{'version': ..., 'file': ...}}, got {_short(obj)}")
        version = obj["version"]
        path = state_path(d, version)
        if not path.exists():
            raise ValueError(f"{d / CURRENT_NAME} points at {path.name}, which does not exist")
    else:
        path = state_path(d, version)
        if not path.exists():
            return None
    try:
        state = TabularEncoderState.from_json(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if state.version != version:
        raise ValueError(f"{path}: holds state {state.version}, expected {version}")
    return state


def fit_or_load(
    directory: Path | str, rows: Sequence[Mapping[str, FieldValue] | None], **params: Any
) -> tuple[TabularEncoderState, bool]:
    """The current saved state, or a state fitted on ``rows`` and saved -- ``(state, fitted_now)``.

    Runs under an exclusive ``fcntl.flock`` on ``<directory>/.lock``, so concurrent callers agree on
    one state: the first to take the lock fits on its rows and saves; the others load that state (their
    ``params`` are then ignored). A fitted state with no usable feature (``raw_dim == 0``) is returned
    but *not* saved, so a later batch with usable fields can still fit one.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / LOCK_NAME, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            existing = load_state(d)
            if existing is not None:
                return existing, False
            state = fit_tabular(rows, **params)
            if state.raw_dim > 0:
                save_state(state, d)
            return state, True
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
