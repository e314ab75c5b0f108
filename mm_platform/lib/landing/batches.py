"""Complete batches in the landing dir: a batch is complete exactly when its manifest exists."""

from __future__ import annotations

import os
from pathlib import Path

from mm_platform.lib.landing.manifest.parse import (
    MANIFEST_NAME,
    BatchInfo,
    file_sha256,
    is_valid_batch_id,
)

# --------------------------------------------------------------------------------------------------
# batch discovery
# --------------------------------------------------------------------------------------------------


def list_complete_batches(landing_dir: Path) -> list[BatchInfo]:
    """List complete batches under ``landing_dir``, sorted by ``(manifest_mtime, batch_id)``.

    Skips: non-directories, hidden/dot entries, names failing :func:`is_valid_batch_id`, folders
    without a regular-file manifest, and entries that vanish or become unreadable while scanning.
    A missing ``landing_dir`` yields ``[]``.
    """
    landing_dir = Path(landing_dir)
    out: list[BatchInfo] = []
    try:
        entries = list(os.scandir(landing_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or not is_valid_batch_id(name):
            continue
        try:
            if not entry.is_dir():
                continue
            mpath = Path(entry.path) / MANIFEST_NAME
            if not mpath.is_file():
                continue
            mtime = mpath.stat().st_mtime
            sha = file_sha256(mpath)
        except OSError:
            continue
        out.append(BatchInfo(name, Path(entry.path), mpath, mtime, sha))
    out.sort(key=lambda b: (b.manifest_mtime, b.batch_id))
    return out
