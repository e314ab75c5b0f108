"""Shared base of the audio encoders: waveform checks and file decoding in a thread pool one batch ahead."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from mm_platform.lib.media.audio import DEFAULT_MAX_AUDIO_SECONDS, load_audio
from mm_platform.lib.device import DeviceConfig
from mm_platform.lib.encoders.base import (
    AudioDecodeError,
    ModelInfo,
    ProgressFn,
    empty_vectors,
)
from mm_platform.lib.media import DEFAULT_MAX_AUDIO_BYTES, MediaError


def check_waveforms(waves: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validate a waveform batch: a sequence of non-empty, finite 1-D arrays. Returns them as float32.

    A 2-D array counts as a batch of equal-length rows; a bare 1-D array is refused (wrap it in a list).
    """
    if isinstance(waves, np.ndarray) and waves.ndim == 1:
        raise TypeError(
            "encode_waveforms() takes a sequence of waveforms, not a single one; wrap it in a list"
        )
    if isinstance(waves, (str, bytes, os.PathLike)):
        raise TypeError("encode_waveforms() takes waveforms (arrays); use encode_paths() for files")
    out: list[np.ndarray] = []
    for i, w in enumerate(waves):
        try:
            a = np.asarray(w, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"waves[{i}] is not a numeric array: {exc}") from None
        if a.ndim != 1:
            raise ValueError(f"waves[{i}] has shape {a.shape}: expected a 1-D mono waveform")
        if a.size == 0:
            raise ValueError(f"waves[{i}] is empty")
        if not np.isfinite(a).all():
            raise ValueError(f"waves[{i}] contains NaN or Inf samples")
        out.append(a)
    return out


class WaveformAudioEncoder:
    """Base of the audio encoders: file decoding + batching around ``encode_waveforms``.

    Subclasses set ``info``, ``sample_rate``, ``config`` and implement :meth:`encode_waveforms`.

    Attributes:
        max_audio_bytes / max_audio_seconds: limits passed to :func:`~mm_platform.lib.media.audio.load_audio`.
    """

    info: ModelInfo
    sample_rate: int
    config: DeviceConfig
    max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS

    def encode_waveforms(self, waves: Sequence[np.ndarray], progress: ProgressFn | None = None) -> np.ndarray:
        raise NotImplementedError

    def decode(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Decode one file to a mono float32 waveform at ``sample_rate``.

        Raises:
            AudioDecodeError: the file fails :func:`~mm_platform.lib.media.audio.load_audio` (message names the
                file; ``reason`` is the media reason code).
        """
        try:
            decoded = load_audio(
                path,
                self.sample_rate,
                max_bytes=self.max_audio_bytes,
                max_seconds=self.max_audio_seconds,
            )
        except MediaError as exc:
            raise AudioDecodeError(
                f"cannot decode audio {os.fspath(path)!r}: {exc.reason}: {exc.detail}",
                reason=exc.reason,
                path=os.fspath(path),
            ) from None
        return decoded.waveform

    def _decode_batches(self, items: list[str]) -> Iterator[list[np.ndarray]]:
        """Decoded batches of ``config.batch_size`` files, in order; the next batch decodes while the caller
        encodes the current one (``config.num_workers`` threads; 0 = sequential, in this thread)."""
        bs = self.config.batch_size
        chunks = [items[i : i + bs] for i in range(0, len(items), bs)]
        workers = min(self.config.num_workers, len(items))
        if workers <= 0 or len(items) == 1:
            for chunk in chunks:
                yield [self.decode(p) for p in chunk]
            return
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mm-audio-decode")
        try:
            pending: list[Future[np.ndarray]] = [pool.submit(self.decode, p) for p in chunks[0]]
            for k in range(len(chunks)):
                current = pending
                if k + 1 < len(chunks):
                    pending = [pool.submit(self.decode, p) for p in chunks[k + 1]]
                yield [f.result() for f in current]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def encode_paths(
        self, paths: Sequence[str | os.PathLike[str]], progress: ProgressFn | None = None
    ) -> np.ndarray:
        """Decode (resampled to ``sample_rate``, mono) and encode audio files; ``(n, dim)`` float32 unit rows.

        Raises :class:`AudioDecodeError` naming the first file (in order) that cannot be decoded.
        """
        if isinstance(paths, (str, bytes, os.PathLike)):
            raise TypeError("encode_paths() takes a sequence of paths, not a single path; wrap it in a list")
        items = [os.fspath(p) for p in paths]
        n = len(items)
        if n == 0:
            return empty_vectors(self.info.dim)
        out: list[np.ndarray] = []
        done = 0
        for waves in self._decode_batches(items):
            out.append(self.encode_waveforms(waves))
            done += len(waves)
            if progress is not None:
                progress(done, n)
        return np.concatenate(out, axis=0)
