"""Audio encoders: an offline log-mel/MFCC statistics embedding (torch only) and the CLAP audio tower.

Both take mono float32 waveforms at their own ``sample_rate`` (:meth:`encode_waveforms`) or audio files
(:meth:`encode_paths`, decoded and resampled by :func:`mm_platform.lib.audio.load_audio` in a small thread
pool that runs one batch ahead of inference).

:class:`LogMelAudioEncoder` needs no weights: 16 kHz, STFT (512-point Hann, hop 10 ms), 64 HTK mel bands
(30 Hz - 8 kHz, Slaney area-normalised), log-mel in dB floored 80 dB below the clip's maximum, 20 MFCCs
(orthonormal DCT-II of the log-mel, c1..c20; c0 is loudness) and per-clip statistics over time:

============  ====  =====================================================================================
group         dims  content
============  ====  =====================================================================================
mel_mean        64  mean log-mel per band minus the clip's overall mean (spectral shape, loudness-free)
mel_std         64  std of log-mel per band over time
mfcc_mean       20  mean of c1..c20
mfcc_std        20  std of c1..c20
delta_std       20  std of the frame-to-frame MFCC differences
spectral        12  mean and std of centroid, bandwidth, flatness, 85% roll-off, zero-crossing rate and
                    frame RMS relative to the clip's loudest frame (each mapped to a signed, ~unit scale)
============  ====  =====================================================================================

Each group is divided by ``max(||group||, ref * sqrt(dims))`` (capped at unit norm, but near-zero groups,
e.g. the flat spectral shape of noise, are not blown up into random directions), weighted, concatenated and
L2-normalised: :data:`LOGMEL_DIM` = 200. Scaling a clip's amplitude leaves its vector unchanged.

:class:`ClapAudioEncoder` runs the audio tower of a transformers ``ClapModel`` (e.g.
``laion/clap-htsat-unfused``: 48 kHz, 10 s windows). Clips longer than one window are cut into up to
``max_windows`` evenly spaced windows whose embeddings are averaged (deterministic: the feature extractor's
random crop is never used).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from mm_platform.lib.audio import DEFAULT_MAX_AUDIO_SECONDS, load_audio
from mm_platform.lib.device import DeviceConfig, OOMBackoff, autocast_context, resolve_device
from mm_platform.lib.encoders.base import (
    AudioDecodeError,
    EncoderUnavailable,
    ModelInfo,
    ProgressFn,
    content_version,
    empty_vectors,
    hub_offline,
    l2_normalise,
)
from mm_platform.lib.media import DEFAULT_MAX_AUDIO_BYTES, MediaError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------
# shared


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
        max_audio_bytes / max_audio_seconds: limits passed to :func:`~mm_platform.lib.audio.load_audio`.
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
            AudioDecodeError: the file fails :func:`~mm_platform.lib.audio.load_audio` (message names the
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


# --------------------------------------------------------------------------------------------------------
# log-mel / MFCC statistics

LOGMEL_MODEL_ID = "mm_platform/logmel-mfcc-stats"
LOGMEL_SPACE = "logmel-mfcc-stats"
LOGMEL_SAMPLE_RATE = 16_000
LOGMEL_N_FFT = 512
LOGMEL_HOP = 160
LOGMEL_N_MELS = 64
LOGMEL_FMIN = 30.0
LOGMEL_FMAX = 8_000.0
LOGMEL_N_MFCC = 20
LOGMEL_TOP_DB = 80.0
LOGMEL_ROLLOFF = 0.85
# Frames more than this far below the clip's loudest frame are left out of the spectral descriptors.
LOGMEL_ACTIVE_DB = 60.0
# (name, dims, reference RMS per dimension, weight); see the module docstring.
LOGMEL_GROUPS: tuple[tuple[str, int, float, float], ...] = (
    ("mel_mean", LOGMEL_N_MELS, 3.0, 1.0),
    ("mel_std", LOGMEL_N_MELS, 3.0, 0.7),
    ("mfcc_mean", LOGMEL_N_MFCC, 3.0, 1.0),
    ("mfcc_std", LOGMEL_N_MFCC, 3.0, 0.7),
    ("delta_std", LOGMEL_N_MFCC, 3.0, 0.5),
    ("spectral", 12, 0.5, 0.8),
)
LOGMEL_DIM = sum(g[1] for g in LOGMEL_GROUPS)  # 200
# At most this many samples (all clips of a batch, padded to the longest) go through one STFT.
_LOGMEL_BATCH_SAMPLES = LOGMEL_SAMPLE_RATE * 60 * 8


def logmel_config() -> dict[str, Any]:
    """Everything that defines the log-mel embedding (hashed into its ``model_version``)."""
    return {
        "sample_rate": LOGMEL_SAMPLE_RATE,
        "n_fft": LOGMEL_N_FFT,
        "hop": LOGMEL_HOP,
        "window": "hann",
        "n_mels": LOGMEL_N_MELS,
        "fmin": LOGMEL_FMIN,
        "fmax": LOGMEL_FMAX,
        "mel_scale": "htk",
        "mel_norm": "slaney",
        "n_mfcc": LOGMEL_N_MFCC,
        "mfcc": "dct2-ortho-c1",
        "top_db": LOGMEL_TOP_DB,
        "rolloff": LOGMEL_ROLLOFF,
        "active_db": LOGMEL_ACTIVE_DB,
        "groups": [list(g) for g in LOGMEL_GROUPS],
        "group_norm": "soft-l2",
        "feature_code": 1,  # bump when the feature computation changes
    }


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int = LOGMEL_SAMPLE_RATE,
    n_fft: int = LOGMEL_N_FFT,
    n_mels: int = LOGMEL_N_MELS,
    fmin: float = LOGMEL_FMIN,
    fmax: float = LOGMEL_FMAX,
) -> np.ndarray:
    """Triangular HTK-mel filterbank, Slaney area normalisation: ``(n_mels, n_fft // 2 + 1)`` float32.

    Band edges are equally spaced in HTK mel between ``fmin`` and ``fmax``; each triangle is scaled by
    ``2 / (upper - lower)`` so a flat (white) spectrum gives equal values in every band.
    """
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= {sample_rate / 2}, got {fmin}, {fmax}")
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(fmin)), _hz_to_mel(np.array(fmax)), n_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lower) / (center - lower)
    down = (upper - freqs[None, :]) / (upper - center)
    fb = np.maximum(0.0, np.minimum(up, down)) * (2.0 / (upper - lower))
    return fb.astype(np.float32)


def dct_matrix(n_mfcc: int = LOGMEL_N_MFCC, n_mels: int = LOGMEL_N_MELS) -> np.ndarray:
    """Orthonormal DCT-II rows for coefficients 1..n_mfcc (c0 left out): ``(n_mfcc, n_mels)`` float32."""
    n = np.arange(n_mels)[None, :] + 0.5
    k = np.arange(1, n_mfcc + 1)[:, None]
    return (np.sqrt(2.0 / n_mels) * np.cos(np.pi / n_mels * n * k)).astype(np.float32)


def _masked_stats(v: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over the last axis of ``v`` (B, K, N) where ``mask`` (B, N) is true."""
    m = mask[:, None, :].to(v.dtype)
    count = m.sum(-1).clamp_min(1.0)
    mean = (v * m).sum(-1) / count
    var = ((v - mean[..., None]).square() * m).sum(-1) / count
    return mean, var.clamp_min(0.0).sqrt()


def _soft_l2(x: torch.Tensor, ref: float) -> torch.Tensor:
    floor = ref * math.sqrt(x.shape[-1])
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(floor)


def logmel_model_info() -> ModelInfo:
    """The identity of :class:`LogMelAudioEncoder` (its version hashes the feature configuration)."""
    version = content_version([], extra=logmel_config())
    return ModelInfo(model_id=LOGMEL_MODEL_ID, model_version=version, dim=LOGMEL_DIM, space=LOGMEL_SPACE,
                     modality="audio")


class LogMelAudioEncoder(WaveformAudioEncoder):
    """Offline audio embedding: log-mel / MFCC / spectral statistics, :data:`LOGMEL_DIM`-d, unit-norm, 16 kHz.

    Pure signal processing in torch (no weights, deterministic); batches of clips (padded, masked) run on
    the configured device. Runs in fp32 whatever ``DeviceConfig.precision`` says (DSP is cheap and
    reduced precision would cost accuracy in the dB domain). Clips shorter than one STFT frame are
    zero-padded.

    Args:
        device: where to run and how (batch size; decode threads for :meth:`encode_paths`).
        max_audio_bytes / max_audio_seconds: file limits for :meth:`encode_paths`.
    """

    sample_rate = LOGMEL_SAMPLE_RATE

    def __init__(
        self,
        device: DeviceConfig | None = None,
        *,
        max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
        max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
    ) -> None:
        self.config = device or DeviceConfig()
        self.device = resolve_device(self.config.device)
        self.max_audio_bytes = max_audio_bytes
        self.max_audio_seconds = max_audio_seconds
        self._fb = torch.from_numpy(mel_filterbank()).to(self.device)
        self._dct = torch.from_numpy(dct_matrix()).to(self.device)
        self._window = torch.hann_window(LOGMEL_N_FFT, periodic=True, device=self.device)
        self._freqs = torch.linspace(0.0, LOGMEL_SAMPLE_RATE / 2, LOGMEL_N_FFT // 2 + 1, device=self.device)
        self.info = logmel_model_info()
        logger.info("log-mel audio encoder %s (%d-d) on %s", self.info.model_version, LOGMEL_DIM, self.device)

    # ---- batching

    def _groups(self, lengths: list[int]) -> list[list[int]]:
        """Clip indices grouped for batching: sorted by length, at most ``batch_size`` clips and (unless a
        single clip is longer) ``_LOGMEL_BATCH_SAMPLES`` padded samples per group."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        groups: list[list[int]] = []
        current: list[int] = []
        for i in order:
            longest = lengths[i]  # ascending order: the newcomer is the longest
            if current and (
                len(current) >= self.config.batch_size or longest * (len(current) + 1) > _LOGMEL_BATCH_SAMPLES
            ):
                groups.append(current)
                current = []
            current.append(i)
        if current:
            groups.append(current)
        return groups

    def encode_waveforms(self, waves: Sequence[np.ndarray], progress: ProgressFn | None = None) -> np.ndarray:
        """Embed mono 16 kHz float32 waveforms: ``(n, LOGMEL_DIM)`` float32 unit rows; ``(0, dim)`` if none.

        Raises ValueError for an empty or non-finite waveform.
        """
        items = check_waveforms(waves)
        n = len(items)
        if n == 0:
            return empty_vectors(self.info.dim)
        out = np.zeros((n, self.info.dim), dtype=np.float32)
        backoff = OOMBackoff(self.config.batch_size)
        done = 0
        with torch.inference_mode():
            for group in self._groups([len(w) for w in items]):
                rows = backoff.run(self._embed, [items[i] for i in group])
                out[group] = np.concatenate(rows, axis=0)
                done += len(group)
                if progress is not None:
                    progress(done, n)
        return out

    def _embed(self, batch: list[np.ndarray]) -> np.ndarray:
        lengths = [len(w) for w in batch]
        host = np.zeros((len(batch), max(lengths)), dtype=np.float32)
        for i, w in enumerate(batch):
            host[i, : len(w)] = w
        x = torch.from_numpy(host)
        if self.device.type == "cuda":
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        n_frames = torch.tensor([1 + n // LOGMEL_HOP for n in lengths], device=self.device)
        feats = self._features(x, n_frames)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    # ---- features

    def _features(self, x: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T) zero-padded clips, ``n_frames`` (B,) valid STFT frames per clip -> (B, LOGMEL_DIM)."""
        eps = 1e-10
        spec = torch.stft(
            x,
            LOGMEL_N_FFT,
            hop_length=LOGMEL_HOP,
            win_length=LOGMEL_N_FFT,
            window=self._window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # (B, F, N)
        n = power.shape[-1]
        mask = torch.arange(n, device=x.device)[None, :] < n_frames[:, None]  # (B, N)
        neg_inf = torch.tensor(float("-inf"), device=x.device)
        # relative to the clip's strongest bin, so every eps below is relative too: amplitude-invariant
        peak = torch.where(mask[:, None, :], power, torch.zeros((), device=x.device)).amax(dim=(1, 2))
        power = power / peak.clamp_min(1e-30)[:, None, None]

        # log-mel (dB), floored top_db below the clip's maximum
        logmel = 10.0 * torch.log10(torch.matmul(self._fb, power).clamp_min(eps))  # (B, M, N)
        top = torch.where(mask[:, None, :], logmel, neg_inf).amax(dim=(1, 2))
        logmel = torch.maximum(logmel, (top - LOGMEL_TOP_DB)[:, None, None])
        mel_mean, mel_std = _masked_stats(logmel, mask)
        mel_shape = mel_mean - mel_mean.mean(dim=-1, keepdim=True)

        mfcc = torch.einsum("km,bmn->bkn", self._dct, logmel)  # (B, 20, N)
        mfcc_mean, mfcc_std = _masked_stats(mfcc, mask)
        delta = mfcc[..., 1:] - mfcc[..., :-1]
        if delta.shape[-1] > 0:
            _, delta_std = _masked_stats(delta, mask[:, 1:] & mask[:, :-1])
        else:
            delta_std = torch.zeros_like(mfcc_std)

        # frame loudness (Parseval over the one-sided spectrum) and active frames
        energy = power.sum(dim=1) * 2.0 - power[:, 0, :] - power[:, -1, :]  # (B, N)
        frame_db = 10.0 * torch.log10(energy.clamp_min(eps))
        loudest = torch.where(mask, frame_db, neg_inf).amax(dim=1, keepdim=True)
        rel_db = (frame_db - loudest).clamp_min(-LOGMEL_TOP_DB)
        active = mask & (rel_db > -LOGMEL_ACTIVE_DB)
        active = torch.where(active.any(dim=1, keepdim=True), active, mask)

        # spectral descriptors per frame
        total = power.sum(dim=1).clamp_min(eps)  # (B, N)
        f = self._freqs[None, :, None]
        centroid = (power * f).sum(dim=1) / total
        bandwidth = ((power * (f - centroid[:, None, :]).square()).sum(dim=1) / total).clamp_min(0.0).sqrt()
        flatness = torch.exp(torch.log(power + eps).mean(dim=1)) / (power.mean(dim=1) + eps)
        below = (torch.cumsum(power, dim=1) < LOGMEL_ROLLOFF * total[:, None, :]).sum(dim=1)
        rolloff = self._freqs[below.clamp_max(self._freqs.numel() - 1)]
        half = LOGMEL_N_FFT // 2
        framed = torch.nn.functional.pad(x, (half, half)).unfold(-1, LOGMEL_N_FFT, LOGMEL_HOP)[:, :n]
        sign = framed >= 0
        zcr = (sign[..., 1:] != sign[..., :-1]).float().mean(dim=-1)  # (B, N)

        def log_hz(v: torch.Tensor) -> torch.Tensor:  # 125 Hz -> -1, 1 kHz -> 0, 8 kHz -> +1
            return torch.log2(v.clamp_min(20.0) / 1000.0) / 3.0

        descriptors = torch.stack(
            [
                log_hz(centroid),
                log_hz(bandwidth),
                (torch.log10(flatness.clamp_min(eps)) + 2.5) / 2.5,  # noise ~ +0.9, pure tone ~ -1
                log_hz(rolloff),
                torch.log2(zcr.clamp_min(1e-4) / 0.05) / 3.0,
                rel_db / 20.0,
            ],
            dim=1,
        )  # (B, 6, N)
        d_mean, d_std = _masked_stats(descriptors, active)
        spectral = torch.cat([d_mean, d_std], dim=1)

        groups = (mel_shape, mel_std, mfcc_mean, mfcc_std, delta_std, spectral)
        parts = [
            weight * _soft_l2(g, ref) for g, (_, _, ref, weight) in zip(groups, LOGMEL_GROUPS, strict=True)
        ]
        return torch.nn.functional.normalize(torch.cat(parts, dim=1), dim=-1)


# --------------------------------------------------------------------------------------------------------
# CLAP

DEFAULT_CLAP_MODEL = "laion/clap-htsat-unfused"
CLAP_MAX_WINDOWS = 6
CLAP_HINT = (
    "Set MM_CLAP_MODEL to a local directory holding a transformers CLAP model (config.json, "
    "preprocessor_config.json and model.safetensors or pytorch_model.bin) or to a Hugging Face hub id whose "
    "files are cached locally (or downloadable); without CLAP the clip profile falls back to the built-in "
    "log-mel audio encoder (MM_MODEL_PROFILE=offline uses it always)."
)
_CLAP_CONFIG = "config.json"
_CLAP_PREPROCESSOR = "preprocessor_config.json"
_CLAP_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_CLAP_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def clap_unavailable(msg: str) -> EncoderUnavailable:
    """An :class:`EncoderUnavailable` for CLAP whose message ends with the configuration hint."""
    return EncoderUnavailable(f"{msg}. {CLAP_HINT}")


@dataclass(frozen=True)
class ClapWeights:
    """Where a CLAP model is.

    Attributes:
        status: ``"dir"`` (a complete local directory), ``"cached"`` (a hub id whose files are all in the
            local Hugging Face cache), ``"remote"`` (a hub id that would need a download from ``host``) or
            ``"missing"``.
        source: what to pass to ``from_pretrained`` (the directory, or the hub id).
        files: the local files that define the model (config, preprocessor config, weights), for versioning.
        host: ``(hostname, port)`` a download would come from, for ``remote``.
        detail: a human-readable explanation.
    """

    status: str
    source: str = ""
    files: tuple[str, ...] = ()
    host: tuple[str, int] | None = None
    detail: str = ""

    @property
    def local(self) -> bool:
        return self.status in ("dir", "cached")


def _hub_host() -> tuple[str, int]:
    from mm_platform.lib.encoders.clip import hf_endpoint

    u = urlparse(hf_endpoint())
    return (u.hostname or "huggingface.co", u.port or (80 if u.scheme == "http" else 443))


def _weights_in(lookup: Any) -> tuple[list[str] | None, str]:
    """Weight files via ``lookup(name) -> local path | None``: a single file, or every shard of an index."""
    for name in _CLAP_WEIGHTS:
        found = lookup(name)
        if found:
            return [found], name
    for name in _CLAP_INDEXES:
        index = lookup(name)
        if not index:
            continue
        try:
            with open(index, encoding="utf-8") as fh:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return None, f"unreadable weight index {name} ({exc})"
        paths = [lookup(s) for s in shards]
        missing = [s for s, p in zip(shards, paths, strict=True) if not p]
        if missing:
            return None, f"weight shards missing: {', '.join(missing[:3])}"
        return [index, *[p for p in paths if p]], name
    return None, f"no weights ({' / '.join(_CLAP_WEIGHTS)})"


def find_clap_weights(name_or_path: str) -> ClapWeights:
    """Locate a CLAP model without loading it and without any network call."""
    name = (name_or_path or "").strip()
    if not name:
        return ClapWeights("missing", detail="no CLAP model given")
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        root = Path(expanded)

        def in_dir(f: str) -> str | None:
            p = root / f
            return str(p) if p.is_file() else None

        need = [f for f in (_CLAP_CONFIG, _CLAP_PREPROCESSOR) if not in_dir(f)]
        weights, why = _weights_in(in_dir)
        if need or weights is None:
            lacks = ", ".join(need + ([why] if weights is None else []))
            return ClapWeights("missing", detail=f"CLAP directory {expanded} is incomplete: {lacks}")
        files = (str(root / _CLAP_CONFIG), str(root / _CLAP_PREPROCESSOR), *weights)
        return ClapWeights("dir", source=str(root), files=files, detail=f"local CLAP directory {root}")
    if name.startswith(("/", "./", "../", "~")) or os.sep != "/" and os.sep in name or name.count("/") > 1:
        return ClapWeights("missing", detail=f"CLAP model directory {name!r} does not exist")
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except ImportError:  # pragma: no cover - dependency of transformers
        return ClapWeights("missing", detail="huggingface_hub is not installed")
    except Exception as exc:  # noqa: BLE001 - HFValidationError
        return ClapWeights(
            "missing", detail=f"{name!r} is neither an existing directory nor a valid hub repo id ({exc})"
        )

    def in_cache(f: str) -> str | None:
        try:
            found = try_to_load_from_cache(repo_id=name, filename=f)
        except Exception:  # noqa: BLE001 - anything odd means "not cached"
            return None
        return found if isinstance(found, str) and os.path.isfile(found) else None

    config, pre = in_cache(_CLAP_CONFIG), in_cache(_CLAP_PREPROCESSOR)
    weights, why = _weights_in(in_cache)
    if config and pre and weights:
        return ClapWeights(
            "cached", source=name, files=(config, pre, *weights), detail=f"hub id {name} cached at {config}"
        )
    lacks = [f for f, p in ((_CLAP_CONFIG, config), (_CLAP_PREPROCESSOR, pre)) if not p]
    if weights is None:
        lacks.append(why)
    return ClapWeights(
        "remote",
        source=name,
        host=_hub_host(),
        detail=f"hub id {name} is not in the local Hugging Face cache (lacks {', '.join(lacks)})",
    )


def locate_clap_weights(name_or_path: str) -> tuple[bool, str]:
    """``(local, detail)``: whether the CLAP model loads without a network call (a complete local directory,
    or a hub id whose config, preprocessor config and weights are all cached), and why. Never loads
    anything and never touches the network."""
    where = find_clap_weights(name_or_path)
    return where.local, where.detail


def _state_dict_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fp32_kwargs() -> dict[str, Any]:
    """``from_pretrained`` keyword for float32: ``dtype`` (transformers >= 4.56) or ``torch_dtype``."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"
    return {key: torch.float32}


def _pooled(out: Any) -> torch.Tensor:
    """The embedding from ``get_audio_features``: a tensor (transformers 4.x) or a model output whose
    ``pooler_output`` holds it (5.x)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(out, (tuple, list)) and len(out) > 1 and isinstance(out[1], torch.Tensor):
        return out[1]
    raise TypeError(f"unexpected get_audio_features() result {type(out).__name__}")


def _clap_version_extra(max_windows: int) -> dict[str, object]:
    return {"model_type": "clap", "max_windows": max_windows, "window_mean": True}


def _clap_label(where: ClapWeights) -> str:
    return Path(where.source).name if where.status == "dir" else where.source


def _clap_info(where: ClapWeights, files: Sequence[str], max_windows: int, dim: int) -> ModelInfo:
    label = _clap_label(where)
    version = content_version(files, extra=_clap_version_extra(max_windows))
    return ModelInfo(model_id=label, model_version=version, dim=dim, space=f"clap:{label}", modality="audio")


def clap_model_info(model: str = DEFAULT_CLAP_MODEL, max_windows: int = CLAP_MAX_WINDOWS) -> ModelInfo | None:
    """The identity :class:`ClapAudioEncoder` will report, read from a local model's files without loading
    it; None when the model is not local or its config does not state ``projection_dim``."""
    where = find_clap_weights(model)
    if not where.local or not where.files:
        return None
    config = next((f for f in where.files if Path(f).name == _CLAP_CONFIG), None)
    try:
        dim = json.loads(Path(config).read_text())["projection_dim"] if config else None
    except (OSError, ValueError, KeyError):
        return None
    return None if dim is None else _clap_info(where, where.files, max_windows, int(dim))


class ClapAudioEncoder(WaveformAudioEncoder):
    """CLAP audio tower (transformers ``ClapModel.get_audio_features``): unit-norm ``projection_dim`` vectors.

    Args:
        device: where to run and how (batch size = windows per forward pass, precision, decode threads).
        model: a hub id (default ``laion/clap-htsat-unfused``) or a local directory.
        allow_download: fetch a hub model that is not cached (only pass True when the hub is reachable);
            otherwise everything loads with the hub forced offline.
        max_windows: clips longer than the model's window (10 s for LAION CLAP) are embedded as the mean
            of at most this many evenly spaced windows.
        max_audio_bytes / max_audio_seconds: file limits for :meth:`encode_paths`.

    Raises:
        EncoderUnavailable: transformers lacks CLAP, the model is missing, not cached and downloads are not
            allowed, or it fails to load (the message names ``MM_CLAP_MODEL``).
    """

    def __init__(
        self,
        device: DeviceConfig | None = None,
        model: str = DEFAULT_CLAP_MODEL,
        *,
        allow_download: bool = False,
        max_windows: int = CLAP_MAX_WINDOWS,
        max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
        max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
    ) -> None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        self.config = device or DeviceConfig()
        self.device = resolve_device(self.config.device)
        self.max_windows = max_windows
        self.max_audio_bytes = max_audio_bytes
        self.max_audio_seconds = max_audio_seconds
        t0 = time.perf_counter()
        where = find_clap_weights(model)
        if where.status == "missing":
            raise clap_unavailable(f"CLAP model unavailable: {where.detail}")
        if where.status == "remote" and not allow_download:
            raise clap_unavailable(f"CLAP model unavailable: {where.detail} and downloads are not allowed")
        try:
            from transformers import ClapFeatureExtractor, ClapModel
        except ImportError as exc:
            raise clap_unavailable(f"transformers with CLAP support is not installed ({exc})") from exc
        ctx: contextlib.AbstractContextManager[object] = (
            hub_offline() if where.local else contextlib.nullcontext()
        )
        try:
            with ctx:
                self.feature_extractor = ClapFeatureExtractor.from_pretrained(
                    where.source, local_files_only=where.local
                )
                self.model = ClapModel.from_pretrained(
                    where.source, local_files_only=where.local, **_fp32_kwargs()
                )
        except Exception as exc:  # noqa: BLE001 - OSError, ValueError, safetensors errors, ...
            raise clap_unavailable(f"cannot load CLAP model {model!r}: {type(exc).__name__}: {exc}") from exc
        self.model.eval().to(self.device)
        fe = self.feature_extractor
        self.sample_rate = int(fe.sampling_rate)
        self.window_samples = int(fe.nb_max_samples)

        if not where.local:  # downloaded just now: version the cached files if they can be found
            where_after = find_clap_weights(model)
            files = where_after.files if where_after.local else ()
        else:
            files = where.files
        if files:
            self.info = _clap_info(where, files, max_windows, int(self.model.config.projection_dim))
        else:
            extra = _clap_version_extra(max_windows)
            h = hashlib.sha256(_state_dict_hash(self.model).encode())
            h.update(json.dumps({**extra, "fe": fe.to_dict()}, sort_keys=True, default=str).encode())
            label = _clap_label(where)
            self.info = ModelInfo(model_id=label, model_version=h.hexdigest()[:12],
                                  dim=int(self.model.config.projection_dim), space=f"clap:{label}", modality="audio")
        self.load_seconds = time.perf_counter() - t0
        logger.info(
            "loaded CLAP %s (%s, %d-d, %d Hz) on %s in %.2fs",
            self.info.model_id,
            self.info.model_version,
            self.info.dim,
            self.sample_rate,
            self.device,
            self.load_seconds,
        )

    def windows(self, wave: np.ndarray) -> list[np.ndarray]:
        """The model windows of one clip: the clip itself when it fits, else up to ``max_windows`` evenly
        spaced full windows covering its start and end."""
        size = self.window_samples
        if len(wave) <= size:
            return [wave]
        k = min(self.max_windows, math.ceil(len(wave) / size))
        starts = np.linspace(0, len(wave) - size, k).round().astype(int)
        return [wave[s : s + size] for s in starts]

    def _embed(self, windows: list[np.ndarray]) -> np.ndarray:
        feats = self.feature_extractor(windows, sampling_rate=self.sample_rate, return_tensors="np")
        x = torch.from_numpy(np.ascontiguousarray(feats["input_features"], dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        # Every window fits the model: no fusion (the extractor would otherwise flag a random one as long).
        is_longer = torch.zeros((len(windows), 1), dtype=torch.bool, device=self.device)
        with autocast_context(self.device, self.config.precision):
            out = self.model.get_audio_features(input_features=x, is_longer=is_longer)
        emb = torch.nn.functional.normalize(_pooled(out).float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32, copy=False)

    def encode_waveforms(self, waves: Sequence[np.ndarray], progress: ProgressFn | None = None) -> np.ndarray:
        """Embed mono float32 waveforms at ``sample_rate``; ``(n, dim)`` float32 unit rows (``(0, dim)`` if
        empty). ``batch_size`` windows per forward pass. Raises ValueError for an empty or non-finite wave."""
        items = check_waveforms(waves)
        n = len(items)
        if n == 0:
            return empty_vectors(self.info.dim)
        windows: list[np.ndarray] = []
        ends: list[int] = []  # exclusive end index (in ``windows``) of each clip's windows
        for w in items:
            windows.extend(self.windows(w))
            ends.append(len(windows))
        owner = np.repeat(np.arange(n), np.diff([0, *ends]))
        step = self.config.batch_size
        backoff = OOMBackoff(step)
        emb = np.zeros((len(windows), self.info.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(windows), step):
                stop = min(start + step, len(windows))
                emb[start:stop] = np.concatenate(backoff.run(self._embed, windows[start:stop]), axis=0)
                if progress is not None:
                    progress(bisect.bisect_right(ends, stop), n)
        sums = np.zeros((n, self.info.dim), dtype=np.float32)
        np.add.at(sums, owner, emb)
        return l2_normalise(sums)


__all__ = [
    "CLAP_HINT",
    "DEFAULT_CLAP_MODEL",
    "LOGMEL_DIM",
    "LOGMEL_MODEL_ID",
    "LOGMEL_SAMPLE_RATE",
    "ClapAudioEncoder",
    "ClapWeights",
    "LogMelAudioEncoder",
    "WaveformAudioEncoder",
    "check_waveforms",
    "dct_matrix",
    "find_clap_weights",
    "locate_clap_weights",
    "logmel_config",
    "mel_filterbank",
]
