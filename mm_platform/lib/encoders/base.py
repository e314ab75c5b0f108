"""Encoder contracts (protocols, model metadata, errors) and small shared helpers.

Heavy libraries (sentence-transformers, timm, open_clip, transformers) are imported lazily by the concrete
encoders, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

MODALITIES: tuple[str, ...] = ("text", "image", "audio")

ProgressFn = Callable[[int, int], None]
"""Progress callback: ``progress(done, total)`` after each batch."""


class EncoderUnavailable(RuntimeError):
    """The weights of an encoder cannot be had here; the message says what to install or set."""


class ImageDecodeError(ValueError):
    """An image file could not be opened or decoded; the message names the file."""


class AudioDecodeError(ValueError):
    """An audio file could not be decoded; the message names the file.

    ``reason`` is the :class:`~mm_platform.lib.media.MediaError` reason code (``"unreadable_audio"``,
    ``"silent_audio"``, ...) and ``path`` the file.
    """

    def __init__(self, message: str, reason: str = "unreadable_audio", path: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path

    def __reduce__(self) -> tuple[type[AudioDecodeError], tuple[str, str, str]]:
        return (AudioDecodeError, (str(self), self.reason, self.path))


@dataclass(frozen=True)
class ModelInfo:
    """Identity of an encoder, recorded next to every vector it produces.

    Attributes:
        model_id: human-readable model name, e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``.
        model_version: stable content hash of the weights (first 12 hex digits of a sha256); it changes
            when the weights change.
        dim: vector dimension.
        space: vectors of encoders whose ``space`` is equal are directly comparable (CLIP's text and image
            encoders share one; MiniLM and EfficientNet each have their own).
        modality: ``"text"``, ``"image"`` or ``"audio"``.
    """

    model_id: str
    model_version: str
    dim: int
    space: str
    modality: str

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form, for metadata columns and logs."""
        return {
            "model_id": self.model_id,
            "model_version": self.model_version,
            "dim": self.dim,
            "space": self.space,
            "modality": self.modality,
        }


@runtime_checkable
class TextEncoder(Protocol):
    """Encodes texts into L2-normalised float32 vectors."""

    info: ModelInfo

    def encode(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        """Return an ``(len(texts), info.dim)`` float32 array with unit-norm rows (``(0, dim)`` when empty).

        Texts are processed in batches of ``DeviceConfig.batch_size``; texts longer than the model's
        maximum length are truncated.
        """
        ...


@runtime_checkable
class ImageEncoder(Protocol):
    """Encodes images into L2-normalised float32 vectors."""

    info: ModelInfo

    def encode_paths(
        self, paths: Sequence[str | os.PathLike[str]], progress: ProgressFn | None = None
    ) -> np.ndarray:
        """Decode (PIL, RGB), preprocess and encode image files; ``(len(paths), info.dim)`` float32.

        Decoding runs in torch DataLoader workers so it overlaps inference. Raises
        :class:`ImageDecodeError` naming the first file that cannot be read.
        """
        ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode in-memory PIL images; ``(len(images), info.dim)`` float32 with unit-norm rows."""
        ...


@runtime_checkable
class AudioEncoder(Protocol):
    """Encodes audio clips into L2-normalised float32 vectors.

    Attributes:
        info: the model's identity (``modality == "audio"``).
        sample_rate: the rate (Hz) :meth:`encode_waveforms` expects its mono waveforms at.
    """

    info: ModelInfo
    sample_rate: int

    def encode_waveforms(self, waves: Sequence[np.ndarray], progress: ProgressFn | None = None) -> np.ndarray:
        """Encode mono float32 waveforms sampled at ``sample_rate``; ``(len(waves), info.dim)`` float32 with
        unit-norm rows (``(0, dim)`` when empty). Raises ValueError for an empty or non-finite waveform."""
        ...

    def encode_paths(
        self, paths: Sequence[str | os.PathLike[str]], progress: ProgressFn | None = None
    ) -> np.ndarray:
        """Decode audio files with :func:`mm_platform.lib.media.audio.load_audio` (``target_sr=sample_rate``) and
        encode them; ``(len(paths), info.dim)`` float32. Raises :class:`AudioDecodeError` naming the first
        file that cannot be decoded."""
        ...


# --------------------------------------------------------------------------------------------------------
# helpers


def empty_vectors(dim: int) -> np.ndarray:
    """A ``(0, dim)`` float32 array."""
    return np.zeros((0, dim), dtype=np.float32)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def check_texts(texts: Sequence[str]) -> list[str]:
    """Validate a text batch: a sequence (not a bare string) of ``str``. Returns it as a list."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("encode() takes a sequence of strings, not a single string; wrap it in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return out


_HASH_MEMO: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def state_dict_hash(model: Any) -> str:
    """Hex sha256 over a torch module's state dict (names and raw bytes, in order): the weights' identity."""
    import torch  # lazy: importing the encoder base stays torch-free

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, memoised per (real path, size, mtime) for this process.

    Files in a Hugging Face cache are symlinks to ``blobs/<sha256>`` for large (LFS) files; that name is
    the content hash already, so it is used without reading the file.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASH_MEMO:
            return _HASH_MEMO[key]
    p = Path(real)
    if p.parent.name == "blobs" and _SHA256_HEX.match(p.name):
        digest = p.name
    else:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    with _HASH_LOCK:
        _HASH_MEMO[key] = digest
    return digest


def content_version(files: Iterable[str | os.PathLike[str]], extra: Any = None, length: int = 12) -> str:
    """Stable version string: first ``length`` hex of a sha256 over the files' content hashes (+ ``extra``).

    Only content counts (not file names or order): the same weights under another name get the same
    version. ``extra`` (JSON-serialisable, e.g. a model config) is folded in so the same weights under a
    different architecture or preprocessing differ.
    """
    h = hashlib.sha256()
    for digest in sorted(file_sha256(f) for f in files):
        h.update(f"{digest}\n".encode())
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:length]


_OFFLINE_LOCK = threading.RLock()


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Force Hugging Face Hub / transformers offline mode for the enclosed block, then restore it.

    Sets ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` and patches ``huggingface_hub.constants`` (read
    at import time), so cached files resolve without any network call and missing ones fail at once
    instead of retrying. Process-wide while active; serialised by a lock.
    """
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    with _OFFLINE_LOCK:
        old_env = {k: os.environ.get(k) for k in keys}
        constants: Any = None
        old_const: Any = None
        try:
            from huggingface_hub import constants

            old_const = constants.HF_HUB_OFFLINE
        except ImportError:  # pragma: no cover - huggingface_hub is a dependency
            constants = None
        try:
            for k in keys:
                os.environ[k] = "1"
            if constants is not None:
                constants.HF_HUB_OFFLINE = True
            yield
        finally:
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            if constants is not None:
                constants.HF_HUB_OFFLINE = old_const
