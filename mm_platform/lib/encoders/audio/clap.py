"""The CLAP audio encoder: the audio tower of a transformers ``ClapModel``, windowed and averaged."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mm_platform.lib.device import DeviceConfig, LazyModule, OOMBackoff, autocast_context, resolve_device
from mm_platform.lib.encoders.audio.waveform import WaveformAudioEncoder, check_waveforms
from mm_platform.lib.encoders.audio.weights import (
    _CLAP_CONFIG,
    CLAP_MAX_WINDOWS,
    DEFAULT_CLAP_MODEL,
    ClapWeights,
    clap_unavailable,
    find_clap_weights,
)
from mm_platform.lib.encoders.base import (
    ModelInfo,
    ProgressFn,
    content_version,
    empty_vectors,
    hub_offline,
    l2_normalise,
    state_dict_hash,
)
from mm_platform.lib.media import DEFAULT_MAX_AUDIO_BYTES
from mm_platform.lib.media.audio import DEFAULT_MAX_AUDIO_SECONDS

if TYPE_CHECKING:
    import torch
else:  # imported on first use (lib/device.py LazyModule)
    torch = LazyModule("torch")

logger = logging.getLogger(__name__)


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
            h = hashlib.sha256(state_dict_hash(self.model).encode())
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
