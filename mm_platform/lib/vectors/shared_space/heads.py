"""Projection heads into one shared space: their hyper-parameters, the model, its persistence.

See :mod:`mm_platform.lib.vectors.shared_space` for the maths. A model is either trained heads (``config.mapping ==
"heads"``) or a closed-form linear baseline (``"ridge"`` / ``"cca"``, :mod:`.baseline`) stored in the same
form: one ``Linear`` head per modality, so search and the shared-space strategy use either without knowing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from mm_platform.lib.device import LazyModule
from mm_platform.lib.vectors.fusion import modality_order

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import nn
else:  # imported on first use (lib/device.py LazyModule)
    torch = LazyModule("torch")
    F = LazyModule("torch.nn.functional")
    nn = LazyModule("torch.nn")

#: Format tag written into saved models; :meth:`AlignmentModel.load` refuses anything else.
MODEL_FORMAT = "mm_platform.alignment/1"
#: Metadata keys written by :meth:`AlignmentModel.save`; ``extra`` may not use them.
RESERVED_METADATA = frozenset({"format", "version", "config", "in_dims", "modalities"})
#: ``hidden_dim`` value meaning "scale the hidden width with the number of training rows" (:func:`scaled_hidden_dim`).
AUTO_HIDDEN = -1
#: Kinds of shared-space mapping: trained heads, or a closed-form linear baseline.
MAPPINGS = ("heads", "ridge", "cca")
#: Rows per forward pass in :meth:`AlignmentModel.project`.
_BLOCK = 8192


@dataclass(frozen=True)
class AlignmentConfig:
    """Hyper-parameters of :func:`train_alignment` (all part of the model version)."""

    shared_dim: int = 128  #: D, dimension of the shared space
    #: H of the two-layer heads; 0 = linear heads; -1 (AUTO_HIDDEN) = scaled with the training rows
    #: (:func:`scaled_hidden_dim`), resolved before training so a trained model's config holds the real width
    hidden_dim: int = AUTO_HIDDEN
    epochs: int = 60  #: maximum passes over the training rows (0 = untrained heads)
    batch_size: int = 256  #: rows per mini-batch (in-batch negatives per pair: rows having both - 1)
    lr: float = 2e-3  #: AdamW peak learning rate (cosine decay to 0 over ``epochs``)
    weight_decay: float = 0.05  #: AdamW decoupled weight decay
    dropout: float = 0.2  #: dropout on the hidden layer (on the input of linear heads) while training
    #: early stopping: stop after this many epochs without a new best validation loss and restore the best
    #: epoch's weights; 0 = run every epoch and keep the last weights
    patience: int = 5
    #: what the model is: "heads" (trained) or a linear baseline ("ridge", "cca"; :mod:`.baseline`)
    mapping: str = "heads"
    temperature: float = 0.07  #: fixed InfoNCE temperature tau
    val_fraction: float = 0.2  #: share of the usable rows held out for validation
    seed: int = 0  #: seeds the split, the initialisation and the batch order
    max_train: int = 50_000  #: training rows above this are subsampled (seeded)
    #: modalities already in the target space: identity (+ L2 normalisation) heads, never trained. Stored in
    #: canonical modality order without duplicates. When any is present, :func:`train_alignment` sets
    #: ``shared_dim`` to their (common) input dimension; a non-default ``shared_dim`` that differs is an error.
    anchors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.anchors, str) or not all(isinstance(m, str) and m for m in self.anchors):
            raise ValueError(f"anchors must be a sequence of modality names, got {self.anchors!r}")
        object.__setattr__(self, "anchors", modality_order(list(self.anchors)))
        checks = [
            (self.shared_dim >= 2, "shared_dim must be >= 2"),
            (self.hidden_dim >= AUTO_HIDDEN, "hidden_dim must be >= 0 (0 = linear heads) or -1 (auto)"),
            (math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.mapping in MAPPINGS, f"mapping must be one of {MAPPINGS}"),
            (self.epochs >= 0, "epochs must be >= 0"),
            (self.batch_size >= 2, "batch_size must be >= 2"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be > 0"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay must be >= 0"),
            (math.isfinite(self.temperature) and self.temperature > 0, "temperature must be > 0"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (self.max_train >= 2, "max_train must be >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}, got {self}")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), the form hashed into the model version.

        ``anchors`` is written only when non-empty, so configs without anchors keep the JSON (and hence the
        model versions) they had before anchors existed.
        """
        data = asdict(self)
        if not data["anchors"]:
            del data["anchors"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlignmentConfig:
        """Inverse of ``asdict``; ValueError on unknown keys or bad values."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown alignment config keys: {unknown}")
        return cls(**dict(data))


def _make_head(in_dim: int, config: AlignmentConfig) -> nn.Sequential:
    """``Linear -> GELU -> Dropout -> Linear`` (or ``Dropout -> Linear``). Dropout has no tensors; the named
    modules keep the tensor names (``0.weight``, ``2.bias``) of models saved before dropout existed."""
    if config.hidden_dim < 0:
        raise ValueError("hidden_dim is 'auto' (-1): resolve it with scaled_hidden_dim before building heads")
    if config.hidden_dim > 0:
        return nn.Sequential(OrderedDict([
            ("0", nn.Linear(in_dim, config.hidden_dim)), ("1", nn.GELU()), ("drop", nn.Dropout(config.dropout)),
            ("2", nn.Linear(config.hidden_dim, config.shared_dim)),
        ]))
    return nn.Sequential(OrderedDict([("drop", nn.Dropout(config.dropout)),
                                      ("0", nn.Linear(in_dim, config.shared_dim))]))


def _forward(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``normalize(head(normalize(x)))`` row-wise (just ``normalize(x)`` for an anchor's identity head)."""
    unit = F.normalize(x, dim=1, eps=1e-12)
    if isinstance(head, nn.Identity):
        return unit
    return F.normalize(head(unit), dim=1, eps=1e-12)



def head_shapes(in_dim: int, config: AlignmentConfig) -> dict[str, tuple[int, ...]]:
    """The tensors of one (non-anchor) head, by name, as :func:`_make_head` builds it."""
    if config.hidden_dim > 0:
        return {"0.weight": (config.hidden_dim, in_dim), "0.bias": (config.hidden_dim,),
                "2.weight": (config.shared_dim, config.hidden_dim), "2.bias": (config.shared_dim,)}
    return {"0.weight": (config.shared_dim, in_dim), "0.bias": (config.shared_dim,)}


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows divided by ``max(norm, 1e-12)``, like ``F.normalize(x, eps=1e-12)``."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, to a relative error below 1.2e-7 of ``erfc`` (Numerical Recipes'
    Chebyshev fit ``erfcc``): well inside the float32 the heads compute in, without importing scipy."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def _forward_numpy(weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """:func:`_forward` of a trained head in numpy (float64): ``Linear -> GELU (erf) -> Linear`` or ``Linear``,
    dropout being the identity at inference. Agrees with the torch forward to float32 rounding."""
    h = _unit(x) @ weights["0.weight"].T.astype(np.float64) + weights["0.bias"]
    if "2.weight" in weights:
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        h = h @ weights["2.weight"].T.astype(np.float64) + weights["2.bias"]
    return _unit(h)


class AlignmentModel:
    """Trained projection heads, one per modality, into a shared ``shared_dim``-dimensional space.

    Modalities named in ``config.anchors`` must have an ``nn.Identity`` head and ``in_dims == shared_dim``;
    they are listed in :attr:`anchors`. The model keeps its weights as float32 arrays and projects with
    numpy: loading and using one (the refresh, search, the explorer) never imports torch; only training does.
    """

    def __init__(
        self,
        heads: Mapping[str, nn.Module],
        in_dims: Mapping[str, int],
        config: AlignmentConfig,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        if not heads:
            raise ValueError("an alignment model needs at least one head")
        identity = {m: isinstance(h, nn.Identity) for m, h in heads.items()}
        for m in heads:
            if m in config.anchors and not identity[m]:
                raise ValueError(f"anchor modality {m!r} needs an identity head, got {type(heads[m]).__name__}")
        weights = {m: None if identity[m] else
                   {name: t.detach().to("cpu", torch.float32).contiguous().numpy().copy()
                    for name, t in heads[m].state_dict().items()}
                   for m in heads}
        self._setup(weights, in_dims, config, extra)

    @classmethod
    def from_weights(cls, weights: Mapping[str, Mapping[str, np.ndarray] | None], in_dims: Mapping[str, int],
                     config: AlignmentConfig, extra: Mapping[str, str] | None = None) -> AlignmentModel:
        """A model from float32 arrays per modality (``None`` for an anchor's identity head), without torch."""
        model = cls.__new__(cls)
        model._setup(weights, in_dims, config, extra)
        return model

    def _setup(self, weights: Mapping[str, Mapping[str, np.ndarray] | None], in_dims: Mapping[str, int],
               config: AlignmentConfig, extra: Mapping[str, str] | None) -> None:
        if not weights:
            raise ValueError("an alignment model needs at least one head")
        if set(weights) != set(in_dims):
            raise ValueError(f"heads {sorted(weights)} and in_dims {sorted(in_dims)} name different modalities")
        self.modalities: tuple[str, ...] = modality_order(list(weights))
        self.in_dims: dict[str, int] = {m: int(in_dims[m]) for m in self.modalities}
        self.config = config
        self.shared_dim = config.shared_dim
        self.extra: dict[str, str] = dict(extra or {})
        self.anchors: tuple[str, ...] = tuple(m for m in self.modalities if m in config.anchors)
        for m in self.anchors:
            if weights[m] is not None:
                raise ValueError(f"anchor modality {m!r} needs an identity head")
            if self.in_dims[m] != self.shared_dim:
                raise ValueError(
                    f"anchor modality {m!r} has dimension {self.in_dims[m]}, the shared space {self.shared_dim}"
                )
        self._weights: dict[str, dict[str, np.ndarray] | None] = {
            m: None if weights[m] is None else
            {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in weights[m].items()}
            for m in self.modalities
        }
        self.version = self._compute_version()

    @property
    def mapping(self) -> str:
        """``"heads"`` (trained) or the linear baseline this model is (``"ridge"``, ``"cca"``)."""
        return self.config.mapping

    def n_parameters(self) -> int:
        """Number of trainable weights over all heads."""
        return int(sum(a.size for w in self._weights.values() if w for a in w.values()))

    def __repr__(self) -> str:
        return f"AlignmentModel(version={self.version!r}, modalities={self.modalities}, shared_dim={self.shared_dim})"

    # -- weights and version ------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """All weights as contiguous float32 arrays named ``<modality>.<param>`` (e.g. ``text.0.weight``)."""
        return {f"{m}.{name}": a.copy() for m in self.modalities for name, a in (self._weights[m] or {}).items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """:meth:`arrays` as CPU torch tensors."""
        return {name: torch.from_numpy(a) for name, a in self.arrays().items()}

    def _compute_version(self) -> str:
        """First 12 hex digits of sha256 over (name, shape, bytes) of every tensor, config JSON and in_dims."""
        h = hashlib.sha256()
        for name, a in sorted(self.arrays().items()):
            h.update(name.encode())
            h.update(json.dumps(list(a.shape)).encode())
            h.update(a.tobytes())
        h.update(self.config.to_json().encode())
        h.update(json.dumps(self.in_dims, sort_keys=True).encode())
        return h.hexdigest()[:12]

    # -- inference ------------------------------------------------------------------------------------

    def project(self, modality: str, X: np.ndarray) -> np.ndarray:
        """Map ``(n, in_dims[modality])`` encoder vectors to ``(n, shared_dim)`` float32 unit-norm rows.

        Zero rows (absent values) map to zero rows. An anchor's rows are just L2-normalised
        (``x / np.linalg.norm(x)`` in float32). Raises ValueError on an unknown modality, a wrong shape or
        non-finite values.
        """
        if modality not in self._weights:
            raise ValueError(f"no alignment head for modality {modality!r} (have {list(self.modalities)})")
        arr = np.asarray(X, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.in_dims[modality]:
            raise ValueError(f"{modality}: expected shape (n, {self.in_dims[modality]}), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{modality}: input contains NaN or infinite values")
        out = np.zeros((arr.shape[0], self.shared_dim), dtype=np.float32)
        nonzero = np.linalg.norm(arr, axis=1) > 1e-12
        rows = np.flatnonzero(nonzero)
        if modality in self.anchors:
            sub = arr[rows]
            out[rows] = sub / np.linalg.norm(sub, axis=1, keepdims=True)
            return out
        weights = self._weights[modality]
        for start in range(0, rows.size, _BLOCK):
            idx = rows[start : start + _BLOCK]
            out[idx] = _forward_numpy(weights, arr[idx].astype(np.float64))
        return out

    # -- persistence ----------------------------------------------------------------------------------

    def save(self, path: Path | str, extra: Mapping[str, str] | None = None) -> Path:
        """Write the heads to ``path`` (safetensors) atomically: temporary file + ``os.replace``.

        Metadata (all strings): ``format``, ``version``, ``config`` (JSON), ``in_dims`` (JSON), ``modalities``
        (JSON), plus :attr:`extra` updated with ``extra`` (e.g. the encoder model ids). ValueError when an extra
        key is reserved or a value is not a string.
        """
        meta_extra = {**self.extra, **dict(extra or {})}
        for key, value in meta_extra.items():
            if key in RESERVED_METADATA:
                raise ValueError(f"extra metadata key {key!r} is reserved")
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"extra metadata must map str to str, got {key!r}: {value!r}")
        metadata = {
            **meta_extra,
            "format": MODEL_FORMAT,
            "version": self.version,
            "config": self.config.to_json(),
            "in_dims": json.dumps(self.in_dims, sort_keys=True),
            "modalities": json.dumps(list(self.modalities)),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(self.arrays(), tmp_name, metadata=metadata)
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        return path

    @classmethod
    def load(cls, path: Path | str) -> AlignmentModel:
        """Read a model written by :meth:`save` (no pickle) and verify its version against the weights.

        Raises ValueError on a foreign or broken file, missing/unexpected/misshapen tensors, or when the
        recomputed version differs from the stored one (weights or config tampered with).
        """
        path = Path(path)
        try:
            with safe_open(str(path), framework="np") as fh:
                metadata = dict(fh.metadata() or {})
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types on bad headers
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
        if metadata.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path}: not an alignment model (format {metadata.get('format')!r})")
        try:
            config = AlignmentConfig.from_dict(json.loads(metadata["config"]))
            in_dims = {str(k): int(v) for k, v in json.loads(metadata["in_dims"]).items()}
            modalities = [str(m) for m in json.loads(metadata["modalities"])]
            stored_version = metadata["version"]
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: broken alignment metadata ({exc})") from exc
        if set(modalities) != set(in_dims):
            raise ValueError(f"{path}: modalities {modalities} do not match in_dims {sorted(in_dims)}")
        weights: dict[str, dict[str, np.ndarray] | None] = {}
        used: set[str] = set()
        for m in modalities:
            if m in config.anchors:
                weights[m] = None  # an identity head: no tensors
                continue
            if config.hidden_dim < 0:
                raise ValueError(f"{path}: hidden_dim is 'auto' (-1) in a saved model")
            weights[m] = {}
            for name, shape in head_shapes(in_dims[m], config).items():
                key = f"{m}.{name}"
                if key not in tensors:
                    raise ValueError(f"{path}: missing tensor {key!r}")
                if tuple(tensors[key].shape) != shape:
                    raise ValueError(f"{path}: tensors of {m!r} do not fit the config ({key} has shape "
                                     f"{tuple(tensors[key].shape)}, the config wants {shape})")
                weights[m][name] = tensors[key]
                used.add(key)
        unexpected = sorted(set(tensors) - used)
        if unexpected:
            raise ValueError(f"{path}: unexpected tensors {unexpected[:5]}")
        extra = {k: v for k, v in metadata.items() if k not in RESERVED_METADATA}
        try:
            model = cls.from_weights(weights, in_dims, config, extra=extra)
        except ValueError as exc:
            raise ValueError(f"{path}: inconsistent alignment model ({exc})") from exc
        if model.version != stored_version:
            raise ValueError(
                f"{path}: version mismatch: file says {stored_version!r}, weights give {model.version!r}"
            )
        return model

