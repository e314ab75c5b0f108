"""Media paths inside a batch folder (never outside it) and content hashes."""

from __future__ import annotations

import hashlib
import stat as _stat
from pathlib import Path, PurePosixPath, PureWindowsPath

from mm_platform.lib.media.errors import MediaError

# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------


def check_relative_path(rel: object) -> str:
    """Syntactic check of a manifest media path (no filesystem access).

    Returns the path unchanged when it is a non-empty, relative, POSIX-style path that stays inside
    its base folder after normalisation. Raises ``MediaError``:

    * ``invalid_path``: not a string, empty/whitespace, contains NUL/control characters, lone
      surrogates or backslashes, or names the batch folder itself (``"."``, ``"./"``).
    * ``path_outside_batch``: absolute (``/x``, ``C:\\x``, ``//host``) or escapes via ``..``.
    """
    if not isinstance(rel, str):
        raise MediaError("invalid_path", f"path must be a string, got {type(rel).__name__}")
    if not rel.strip():
        raise MediaError("invalid_path", "path is empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rel):
        raise MediaError("invalid_path", f"path contains control characters: {rel!r}")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise MediaError("invalid_path", f"path is not valid unicode (lone surrogate): {rel!r}") from None
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).drive or PureWindowsPath(rel).is_absolute():
        raise MediaError("path_outside_batch", f"absolute path not allowed: {rel!r}")
    if "\\" in rel:
        raise MediaError("invalid_path", f"backslashes are not allowed in paths (use '/'): {rel!r}")
    depth = 0
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            depth -= 1
            if depth < 0:
                raise MediaError("path_outside_batch", f"path escapes the batch folder: {rel!r}")
        else:
            depth += 1
    if depth == 0:
        raise MediaError("invalid_path", f"path does not name a file inside the batch: {rel!r}")
    return rel


def resolve_media_path(batch_dir: Path, rel: str) -> Path:
    """Resolve ``rel`` against ``batch_dir`` and return the absolute, symlink-resolved path.

    Raises ``MediaError`` with reason ``invalid_path`` / ``path_outside_batch`` (see
    :func:`check_relative_path`; also when a symlink anywhere on the way points outside the batch
    folder), ``missing_file`` (nothing there, or a dangling symlink) or ``not_a_file`` (a directory
    or other non-regular file).
    """
    check_relative_path(rel)
    try:
        base = Path(batch_dir).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise MediaError("missing_file", f"batch folder {str(batch_dir)!r} not accessible: {exc}") from None
    try:
        target = (base / rel).resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise MediaError("invalid_path", f"cannot resolve {rel!r}: {exc}") from None
    if not target.is_relative_to(base):
        raise MediaError("path_outside_batch", f"{rel!r} resolves outside the batch folder (to {str(target)!r})")
    try:
        st = target.stat()
    except FileNotFoundError:
        raise MediaError("missing_file", f"file {rel!r} does not exist in the batch folder") from None
    except OSError as exc:
        raise MediaError("missing_file", f"file {rel!r} is not accessible: {exc}") from None
    if not _stat.S_ISREG(st.st_mode):
        raise MediaError("not_a_file", f"{rel!r} is not a regular file")
    return target


# --------------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------------


def bytes_sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def text_sha256(text: str) -> str:
    """Hex SHA-256 of the UTF-8 encoding of ``text`` (use on normalised text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
