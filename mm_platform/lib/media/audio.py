"""Audio validation and decoding: header probe, full decode to mono float32, resampling.

Everything here turns bad input into a :class:`~mm_platform.lib.media.MediaError` with a stable
snake_case ``reason`` and a specific ``detail``; no soundfile/libsndfile, numpy or OS exception
escapes untranslated. No Dagster and no torch: cheap to import (soundfile and scipy load lazily).

Decoding goes through libsndfile (``soundfile``), which reads WAV, FLAC, OGG/Vorbis(/Opus) and MP3;
only those containers are accepted (:data:`AUDIO_FORMATS`; WAVE_FORMAT_EXTENSIBLE files, which
libsndfile names ``WAVEX``, count as WAV).

Reason codes:

* ``missing_file``, ``not_a_file``, ``empty_file``, ``file_too_large``: file-level checks (as for images).
* ``unreadable_audio``: libsndfile cannot open the file (garbage, unknown container, malformed or
  truncated header), a WAV whose ``data`` chunk declares more bytes than the file holds, or a decode
  that fails or yields fewer frames than the header promises (the detail says ``truncated``).
* ``unsupported_audio_format``: libsndfile opens it but the container is not in :data:`AUDIO_FORMATS`
  (AIFF, AU, CAF, ...).
* ``invalid_sample_rate``: sample rate outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``.
* ``empty_audio``: zero frames.
* ``audio_too_long``: duration above ``max_seconds``.
* ``non_finite_audio``: NaN/Inf samples (possible in float WAV).
* ``silent_audio``: every sample's magnitude is below :data:`SILENCE_PEAK` (about -80 dBFS).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mm_platform.lib.media.errors import DEFAULT_MAX_AUDIO_BYTES, MediaError, check_file

#: libsndfile major formats accepted (``soundfile.info(path).format``).
AUDIO_FORMATS: tuple[str, ...] = ("WAV", "FLAC", "OGG", "MP3")
# Other libsndfile names for an accepted container.
_FORMAT_ALIASES = {"WAVEX": "WAV"}

DEFAULT_MAX_AUDIO_SECONDS = 600.0
#: Peak magnitude (full scale = 1.0) below which a clip counts as silent: 1e-4 = -80 dBFS.
SILENCE_PEAK = 1e-4
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000

_HASH_BLOCK = 1 << 20
_DECODE_BLOCK = 1 << 16  # frames per decode block (bounds the multi-channel float32 buffer)
# MP3 frame counts in headers are estimates (Xing/bitrate); tolerate this much shortfall when decoding.
_MP3_FRAME_SLACK = 0.02
_MP3_FRAME_SLACK_MIN = 2 * 1152


@dataclass(frozen=True)
class AudioMeta:
    """Header-level facts about a valid audio file (from :func:`probe_audio`).

    Attributes:
        path: the file.
        sha256: hex sha256 of the file's bytes.
        n_bytes: file size.
        format: libsndfile container name in :data:`AUDIO_FORMATS` (``"WAV"``, ``"FLAC"``, ...).
        subtype: libsndfile sample encoding (``"PCM_16"``, ``"FLOAT"``, ``"VORBIS"``, ``"MPEG_LAYER_III"``).
        sample_rate: native sample rate in Hz.
        channels: channel count.
        frames: frames per channel according to the header (an estimate for MP3).
        duration_s: ``frames / sample_rate``.
    """

    path: str
    sha256: str
    n_bytes: int
    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int
    duration_s: float


@dataclass(frozen=True)
class DecodedAudio:
    """A decoded clip: mono float32 ``waveform`` at ``sample_rate`` (resampled when asked).

    ``rms`` and ``peak`` are the root-mean-square and maximum magnitude of ``waveform`` (full scale 1.0).
    """

    waveform: np.ndarray
    sample_rate: int
    meta: AudioMeta
    rms: float
    peak: float

    @property
    def duration_s(self) -> float:
        return len(self.waveform) / self.sample_rate


# --------------------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------------------


def _stat_file(path: Path, max_bytes: int) -> int:
    return check_file(path, max_bytes, "audio")


def _hash_file(path: Path, max_bytes: int) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
                n += len(block)
                if n > max_bytes:
                    raise MediaError(
                        "file_too_large", f"audio file {str(path)!r} grew beyond limit {max_bytes} bytes"
                    )
                h.update(block)
    except OSError as exc:
        raise MediaError("missing_file", f"cannot read {str(path)!r}: {exc}") from None
    if n == 0:
        raise MediaError("empty_file", f"audio file {str(path)!r} is empty (0 bytes)")
    return h.hexdigest(), n


def _wav_data_shortfall(path: Path, n_bytes: int) -> str | None:
    """For a RIFF/WAVE file: why its ``data`` chunk is cut off (None when complete or not a RIFF WAV).

    libsndfile silently clamps a truncated WAV to the bytes present, so the header is checked here.
    Streaming writers put 0 or 0xFFFFFFFF in the size fields; those sizes are taken as "unknown".
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos = 12
            for _ in range(1000):  # chunk walk, bounded
                fh.seek(pos)
                hdr = fh.read(8)
                if len(hdr) < 8:
                    return None  # no data chunk: libsndfile decides
                cid, size = hdr[:4], struct.unpack("<I", hdr[4:8])[0]
                if cid == b"data":
                    if size in (0, 0xFFFFFFFF):
                        return None
                    have = n_bytes - (pos + 8)
                    if size > have:
                        return f"WAV data chunk declares {size} bytes but the file holds {have}: truncated"
                    return None
                pos += 8 + size + (size & 1)
    except OSError:
        return None
    return None


def probe_audio(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
    max_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
) -> AudioMeta:
    """Header-level validation of an audio file (``soundfile.info`` + size + sha256; no full decode).

    Raises ``MediaError``: ``missing_file``, ``not_a_file``, ``empty_file``, ``file_too_large``
    (> ``max_bytes``), ``unreadable_audio``, ``unsupported_audio_format``, ``invalid_sample_rate``,
    ``empty_audio`` (0 frames) or ``audio_too_long`` (> ``max_seconds``); see the module docstring.
    """
    import soundfile as sf

    p = Path(path)
    _stat_file(p, max_bytes)
    sha, n_bytes = _hash_file(p, max_bytes)
    try:
        info = sf.info(str(p))
    except Exception as exc:  # noqa: BLE001 - LibsndfileError, RuntimeError, TypeError, ...
        raise MediaError(
            "unreadable_audio",
            f"{p}: not a readable audio file (accepted: {', '.join(AUDIO_FORMATS)}): {_sf_message(exc)}",
        ) from None
    fmt = _FORMAT_ALIASES.get(str(info.format), str(info.format))
    if fmt not in AUDIO_FORMATS:
        raise MediaError(
            "unsupported_audio_format",
            f"{p}: {info.format} ({info.format_info}) audio is not accepted "
            f"(accepted: {', '.join(AUDIO_FORMATS)})",
        )
    rate, channels, frames = int(info.samplerate), int(info.channels), int(info.frames)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise MediaError(
            "invalid_sample_rate",
            f"{p}: sample rate {rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]",
        )
    if channels < 1:
        raise MediaError("unreadable_audio", f"{p}: header declares {channels} channels")
    if fmt == "WAV":
        cut = _wav_data_shortfall(p, n_bytes)
        if cut:
            raise MediaError("unreadable_audio", f"{p}: {cut}")
    if frames <= 0:
        raise MediaError("empty_audio", f"{p}: {fmt} file has no audio frames")
    duration = frames / rate
    if duration > max_seconds:
        raise MediaError("audio_too_long", f"{p}: {duration:.1f} s of audio > limit {max_seconds:g} s")
    return AudioMeta(
        path=str(p),
        sha256=sha,
        n_bytes=n_bytes,
        format=fmt,
        subtype=str(info.subtype),
        sample_rate=rate,
        channels=channels,
        frames=frames,
        duration_s=duration,
    )


def _sf_message(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    # libsndfile's message for unrecognised content opened by name is "File does not exist or is not a
    # regular file (possibly a pipe?)", which is misleading once the file is known to exist.
    if "does not exist or is not a regular file" in msg:
        return "format not recognised"
    return msg


# --------------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------------


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Resample a 1-D signal from ``sr_from`` to ``sr_to`` Hz (polyphase, exact rational ratio).

    Uses ``scipy.signal.resample_poly`` with ``up = sr_to / g`` and ``down = sr_from / g``
    (``g = gcd``); its Kaiser-windowed anti-aliasing filter removes content above the lower Nyquist.
    Returns float32; the input is returned unchanged (as float32) when the rates are equal.
    """
    if sr_from <= 0 or sr_to <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_from} -> {sr_to}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample() takes a 1-D signal, got shape {x.shape}")
    if sr_from == sr_to or x.size == 0:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_from), int(sr_to))
    y = resample_poly(x, int(sr_to) // g, int(sr_from) // g)
    return np.asarray(y, dtype=np.float32)


def _decode_mono(p: Path, meta: AudioMeta) -> np.ndarray:
    """Decode every frame, mixing channels to mono (mean) block by block."""
    import soundfile as sf

    parts: list[np.ndarray] = []
    try:
        with sf.SoundFile(str(p)) as f:
            while True:
                block = f.read(_DECODE_BLOCK, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0].copy()
                parts.append(mono)
    except Exception as exc:  # noqa: BLE001 - libsndfile decode errors, MemoryError from numpy, ...
        got = sum(len(b) for b in parts)
        raise MediaError(
            "unreadable_audio",
            f"{p}: decoding {meta.format} failed after {got} of {meta.frames} frames "
            f"(truncated or corrupt): {_sf_message(exc)}",
        ) from None
    wave = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return wave.astype(np.float32, copy=False)


def load_audio(
    path: str | os.PathLike[str],
    target_sr: int | None,
    *,
    max_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
    max_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
) -> DecodedAudio:
    """Validate and fully decode an audio file to a mono float32 waveform.

    Steps: :func:`probe_audio`; decode every frame with libsndfile (float32, channels averaged to mono);
    reject NaN/Inf and silence; resample to ``target_sr`` (``None`` keeps the native rate) with
    :func:`resample`.

    Raises ``MediaError``: every reason of :func:`probe_audio`, plus ``unreadable_audio`` (decode error
    or fewer frames than the header promises: truncated), ``empty_audio``, ``non_finite_audio`` and
    ``silent_audio`` (peak below :data:`SILENCE_PEAK`, before or after resampling).
    """
    if target_sr is not None and not (isinstance(target_sr, int) and target_sr > 0):
        raise ValueError(f"target_sr must be a positive int or None, got {target_sr!r}")
    p = Path(path)
    meta = probe_audio(p, max_bytes=max_bytes, max_seconds=max_seconds)
    wave = _decode_mono(p, meta)
    n = len(wave)
    if n == 0:
        raise MediaError("empty_audio", f"{p}: {meta.format} file decoded to 0 frames")
    slack = 0
    if meta.format == "MP3":
        slack = max(_MP3_FRAME_SLACK_MIN, int(meta.frames * _MP3_FRAME_SLACK))
    if n + slack < meta.frames:
        raise MediaError(
            "unreadable_audio",
            f"{p}: decoded {n} of the {meta.frames} frames the {meta.format} header promises: truncated",
        )
    if n / meta.sample_rate > max_seconds:  # a header that under-reports (MP3 estimates)
        raise MediaError(
            "audio_too_long", f"{p}: {n / meta.sample_rate:.1f} s of audio > limit {max_seconds:g} s"
        )
    finite = np.isfinite(wave)
    if not finite.all():
        bad = int(n - np.count_nonzero(finite))
        first = int(np.argmin(finite))
        raise MediaError(
            "non_finite_audio",
            f"{p}: {bad} NaN/Inf samples (first at {first / meta.sample_rate:.3f} s)",
        )
    peak = float(np.max(np.abs(wave)))
    if peak < SILENCE_PEAK:
        raise MediaError(
            "silent_audio", f"{p}: silent: peak {_dbfs(peak)} below the {_dbfs(SILENCE_PEAK)} threshold"
        )
    rate = meta.sample_rate
    if target_sr is not None and target_sr != rate:
        try:
            wave = resample(wave, rate, target_sr)
        except MemoryError:
            raise MediaError("audio_too_long", f"{p}: not enough memory to resample {n} frames") from None
        rate = target_sr
        peak = float(np.max(np.abs(wave))) if wave.size else 0.0
        if peak < SILENCE_PEAK:
            raise MediaError(
                "silent_audio",
                f"{p}: silent after resampling to {rate} Hz (no content below {rate // 2} Hz): "
                f"peak {_dbfs(peak)}",
            )
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    return DecodedAudio(waveform=wave, sample_rate=rate, meta=meta, rms=rms, peak=peak)


def _dbfs(x: float) -> str:
    return f"{20 * math.log10(x):.1f} dBFS" if x > 0 else "-inf dBFS"


__all__ = [
    "AUDIO_FORMATS",
    "DEFAULT_MAX_AUDIO_SECONDS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "SILENCE_PEAK",
    "AudioMeta",
    "DecodedAudio",
    "load_audio",
    "probe_audio",
    "resample",
]
