"""Audio header validation (libsndfile) without importing numpy until a file is checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mm_platform.lib.media.errors import DEFAULT_MAX_AUDIO_BYTES

# --------------------------------------------------------------------------------------------------
# Audio (header-level validation through libsndfile; see mm_platform.lib.media.audio)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioInfo:
    """Facts about an audio file whose header libsndfile accepts (format is lower-case: ``"wav"``,
    ``"flac"``, ``"ogg"``, ``"mp3"``)."""

    path: str
    sha256: str
    n_bytes: int
    format: str
    duration_s: float | None
    sample_rate: int | None


def inspect_audio(
    path: Path, max_bytes: int = DEFAULT_MAX_AUDIO_BYTES, max_seconds: float | None = None
) -> AudioInfo:
    """Validate an audio file's header with libsndfile (:func:`mm_platform.lib.media.audio.probe_audio`).

    No full decode (truncation or corruption past the header shows up when the file is decoded for
    embedding). Reasons: ``missing_file``, ``not_a_file``, ``empty_file``, ``file_too_large``,
    ``unreadable_audio`` (not audio libsndfile can open, or a truncated WAV), ``unsupported_audio_format``
    (not WAV/FLAC/OGG/MP3), ``invalid_sample_rate``, ``empty_audio`` (0 frames), ``audio_too_long``
    (> ``max_seconds``; default :data:`mm_platform.lib.media.audio.DEFAULT_MAX_AUDIO_SECONDS`).
    """
    from mm_platform.lib.media import audio  # lazy: keeps numpy out of importing this module

    limit = audio.DEFAULT_MAX_AUDIO_SECONDS if max_seconds is None else max_seconds
    meta = audio.probe_audio(Path(path), max_bytes=max_bytes, max_seconds=limit)
    return AudioInfo(
        path=meta.path,
        sha256=meta.sha256,
        n_bytes=meta.n_bytes,
        format=meta.format.lower(),
        duration_s=meta.duration_s,
        sample_rate=meta.sample_rate,
    )
