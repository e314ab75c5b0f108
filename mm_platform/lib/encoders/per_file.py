"""Encode media files so that one that fails to decode is reported, not fatal.

Ingest validates every file (``raw_images`` / ``raw_audio``), but a file can still fail at the embedding
step: it changed after validation, or the decoder of the encoder refuses what the header check accepted.
The in-process encoders raise on the first such file (:class:`ImageDecodeError` /
:class:`AudioDecodeError`, naming it); here that file is taken out with its reason and the others are
encoded again, so the step quarantines one row instead of failing the batch. The Ray pipeline reports the
same failures per row, so both compute modes quarantine the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from mm_platform.lib.encoders.base import AudioDecodeError, ImageDecodeError


def _failing_index(exc: Exception, items: Sequence[str], remaining: list[int]) -> int | None:
    path = getattr(exc, "path", "") or ""
    for i in remaining:
        p = os.fspath(items[i])
        if (path and path == p) or repr(p) in str(exc):
            return i
    return None


def _reason(exc: Exception, path: str) -> str:
    if isinstance(exc, AudioDecodeError):
        return exc.reason
    return "missing_file" if not os.path.exists(path) else "corrupt_image"


def encode_per_file(encode: Callable[[list[str]], np.ndarray], items: Sequence[str],
                    dim: int) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
    """``(vectors, failures)``: ``encode`` over ``items`` (file paths) where a file it cannot decode is left
    out: its row of ``vectors`` is zeros and ``failures[index] = (reason, message)`` (``corrupt_image``,
    ``missing_file``, or the audio reason). An error that names no file of ``items`` is raised as is."""
    remaining = list(range(len(items)))
    failures: dict[int, tuple[str, str]] = {}
    while True:
        try:
            vectors = encode([os.fspath(items[i]) for i in remaining]) if remaining else None
            break
        except (ImageDecodeError, AudioDecodeError) as exc:
            bad = _failing_index(exc, items, remaining)
            if bad is None:
                raise
            failures[bad] = (_reason(exc, os.fspath(items[bad])), str(exc))
            remaining.remove(bad)
    out = np.zeros((len(items), dim), dtype=np.float32)
    if vectors is not None:
        out[remaining] = vectors
    return out, failures
