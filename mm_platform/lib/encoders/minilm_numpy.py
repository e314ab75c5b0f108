"""all-MiniLM-L6-v2 in plain numpy, for a cold query: no torch, no transformers.

A CLI search starts a fresh process; importing torch and sentence-transformers alone takes several seconds,
more than a query is worth. This module reads the same bundled files (``model.safetensors`` memory-mapped,
``tokenizer.json`` through the Rust ``tokenizers`` library) and runs the BERT forward pass with numpy:
embeddings → 6 × (self-attention, GELU feed-forward, post-LayerNorm) → mean pooling over real tokens → L2
normalisation, exactly the ``Transformer → Pooling(mean) → Normalize`` pipeline of the sentence-transformers
model. Its vectors equal :class:`~mm_platform.lib.encoders.text.MiniLMTextEncoder`'s to float32 rounding
(a test holds cosine ≥ 0.9999), and its ``info`` is the same identity, so a query embedded here matches the
collection's text vectors. Only for queries: ingest keeps the torch encoder (batched, GPU-capable).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mm_platform.lib.encoders.base import EncoderUnavailable, ModelInfo, check_texts, empty_vectors


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 absolute (Abramowitz & Stegun 7.1.26), vectorised: numpy has no erf of its own."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's GELU, x·Φ(x) in its erf form (``hidden_act: gelu``)."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)))).astype(np.float32)


class NumpyMiniLM:
    """The bundled MiniLM as numpy arrays; ``encode`` gives unit-norm 384-d float32 rows."""

    def __init__(self, model_dir: str | Path | None = None) -> None:
        from mm_platform.lib.encoders.minilm_files import minilm_model_dir, minilm_model_info

        self.path = Path(model_dir) if model_dir is not None else minilm_model_dir()
        info = minilm_model_info(self.path)
        if info is None:
            raise EncoderUnavailable(f"MiniLM under {self.path} lacks its sentence-transformers config")
        self.info: ModelInfo = info
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer

            config = json.loads((self.path / "config.json").read_text())
            self.max_seq_length = int(json.loads((self.path / "sentence_bert_config.json").read_text())
                                      ["max_seq_length"])
            self.w = load_file(str(self.path / "model.safetensors"))
            self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - missing file, bad JSON, bad tensors
            raise EncoderUnavailable(f"cannot read MiniLM from {self.path}: {type(exc).__name__}: {exc}") from exc
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_seq_length)
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self._max_chars = self.max_seq_length * 32  # the torch encoder's cap on raw characters

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _embed_one(self, text: str) -> np.ndarray:
        ids = np.asarray(self.tokenizer.encode(text[: self._max_chars]).ids, dtype=np.int64)
        w, n = self.w, len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        head_dim = x.shape[1] // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._linear(x, f"{p}.attention.self.{m}").reshape(n, self.heads, head_dim).transpose(1, 0, 2)
                       for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            ctx = (scores / scores.sum(axis=-1, keepdims=True)) @ v
            attn = self._linear(ctx.transpose(1, 0, 2).reshape(n, -1), f"{p}.attention.output.dense")
            x = _layer_norm(attn + x, w[f"{p}.attention.output.LayerNorm.weight"],
                            w[f"{p}.attention.output.LayerNorm.bias"], self.eps)
            ff = self._linear(_gelu(self._linear(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
            x = _layer_norm(ff + x, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], self.eps)
        pooled = x.mean(axis=0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), 384)`` float32 unit rows (one forward pass per text: queries are few and short).
        BLAS runs on one thread: for matrices this small, more threads only contend (measured: a 256-token
        text took 0.67 s on one thread, 10x longer with the default pool on a busy 2-core machine)."""
        from threadpoolctl import threadpool_limits

        texts = check_texts(texts)
        if not texts:
            return empty_vectors(self.info.dim)
        with threadpool_limits(limits=1):
            return np.stack([self._embed_one(t) for t in texts])


class TextQueryEncoders:
    """The one slice of an :class:`~mm_platform.lib.encoders.registry.EncoderSet` a text query needs, backed
    by :class:`NumpyMiniLM`: ``text()``, ``profile`` and ``shares_space`` (the offline profile: a modality
    shares a space only with itself). Lets :func:`mm_platform.lib.search.search` answer a text query without
    torch."""

    profile = "offline"

    def __init__(self, model: NumpyMiniLM | None = None) -> None:
        self._model = model or NumpyMiniLM()

    def text(self) -> NumpyMiniLM:
        return self._model

    def shares_space(self, a: str, b: str) -> bool:
        return a == b
