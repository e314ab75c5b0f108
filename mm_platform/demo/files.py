"""Writing a demo batch's files: plain bytes, and the manifest last and atomically."""

from __future__ import annotations

import os
from pathlib import Path

from mm_platform.lib.landing.manifest import MANIFEST_NAME


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def write_manifest(out_dir: Path, lines: list[str]) -> None:
    """Write ``records.jsonl`` (temp file + fsync + ``os.replace``): the batch is complete only once it exists."""
    tmp = out_dir / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(lines) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out_dir / MANIFEST_NAME)
