"""The offline log-mel/MFCC statistics audio encoder (torch only, no weights); see :mod:`mm_platform.lib.encoders.audio`."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mm_platform.lib.media.audio import DEFAULT_MAX_AUDIO_SECONDS
from mm_platform.lib.device import DeviceConfig, LazyModule, OOMBackoff, resolve_device
from mm_platform.lib.encoders.audio.waveform import WaveformAudioEncoder, check_waveforms
from mm_platform.lib.encoders.base import (
    ModelInfo,
    ProgressFn,
    content_version,
    empty_vectors,
)
from mm_platform.lib.media import DEFAULT_MAX_AUDIO_BYTES

if TYPE_CHECKING:
    import torch
else:  # imported on first use (lib/device.py LazyModule)
    torch = LazyModule("torch")

logger = logging.getLogger(__name__)


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
