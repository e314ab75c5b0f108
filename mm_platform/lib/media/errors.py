"""What media and audio validation share: :class:`MediaError` (a stable ``reason`` code plus a specific
``detail``), the regular-file/size check and the audio size limit.

:mod:`mm_platform.lib.media` and :mod:`mm_platform.lib.media.audio` both import this module (and
:mod:`~mm_platform.lib.media` re-exports its names), so neither needs the other at import time.
"""

from __future__ import annotations

import os
import stat as _stat
from pathlib import Path

DEFAULT_MAX_AUDIO_BYTES = 200 * 2**20


class MediaError(Exception):
    """A media/text validation failure with a stable ``reason`` code and a specific ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[MediaError], tuple[str, str]]:  # picklable across processes
        return (MediaError, (self.reason, self.detail))


def check_file(path: Path, max_bytes: int, kind: str) -> int:
    """Size of a regular, non-empty file within ``max_bytes``; else ``missing_file``, ``not_a_file``,
    ``empty_file`` or ``file_too_large``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MediaError("missing_file", f"{str(path)!r} does not exist") from None
    except OSError as exc:
        raise MediaError("missing_file", f"{str(path)!r} is not accessible: {exc}") from None
    if not _stat.S_ISREG(st.st_mode):
        raise MediaError("not_a_file", f"{str(path)!r} is not a regular file")
    if st.st_size == 0:
        raise MediaError("empty_file", f"{kind} file {str(path)!r} is empty (0 bytes)")
    if st.st_size > max_bytes:
        raise MediaError("file_too_large", f"{kind} file {str(path)!r} has {st.st_size} bytes > limit {max_bytes}")
    return int(st.st_size)


__all__ = ["DEFAULT_MAX_AUDIO_BYTES", "MediaError", "check_file"]
