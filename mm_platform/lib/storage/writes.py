"""Writes that either happen whole or not at all: atomic file replacement, Delta commits, and write errors
(disk full, quota, read-only) reported as :class:`LakeWriteError` instead of a traceback."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa

from mm_platform.lib.storage import delta as delta_store

#: errno values that mean "the data dir cannot take this write" (not a bug): reported as ``LakeWriteError``.
_WRITE_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EFBIG: "file too large"}


class LakeWriteError(OSError):
    """A lake write failed for lack of space or permission; nothing half-written is left visible."""

    def __init__(self, what: str, path: Path | str, cause: OSError):
        super().__init__(cause.errno, f"{what} writing {path}: {cause.strerror or cause} "
                                      "(nothing was half-written; free space or fix permissions, then run again)")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def _write_parquet_file(df: pl.DataFrame, path: Path) -> None:
    """The one place side-file Parquet bytes hit the disk (tests replace it to simulate a full disk)."""
    df.write_parquet(path, compression="zstd", statistics=True)


def _commit_delta(uri: str, data: pa.Table, opts: dict[str, str] | None, predicate: str | None,
                  partition_by: list[str] | None, schema_mode: str) -> None:
    """The one place lake table bytes are written: one Delta commit (tests replace it to simulate a full disk)."""
    delta_store.write_arrow(uri, data, opts, predicate=predicate, partition_by=partition_by, schema_mode=schema_mode)


def _as_os_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write: itself, or one named in a ``deltalake`` error's message."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    for code in _WRITE_ERRNOS:
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code))
    return None


def _guard_write(path: Path | str) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except LakeWriteError:
            raise
        except Exception as exc:
            cause = _as_os_error(exc)
            what = _WRITE_ERRNOS.get(cause.errno or 0) if cause is not None else None
            if what is None or cause is None:
                raise
            raise LakeWriteError(what, path, cause) from exc
    return guard()


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` into a temp file beside ``path``, then an atomic rename onto ``path``. The temp file is
    removed whatever happens; a full disk or read-only data dir raises ``LakeWriteError``."""
    with _guard_write(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def atomic_write_parquet(df: pl.DataFrame, path: Path) -> Path:
    """Write ``df`` to ``path`` through a temp file in the same directory and an atomic rename (side files:
    per-stage rejections, SQL model scratch). A full disk raises ``LakeWriteError`` and leaves the old file."""
    _atomic_write(path, lambda tmp: _write_parquet_file(df, tmp))
    return path


def _atomic_write_text(text: str, path: Path) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
