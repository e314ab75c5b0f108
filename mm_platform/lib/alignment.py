"""Contrastive projection heads mapping frozen per-modality embeddings into one shared space.

The per-modality encoders (text, image, audio, tabular) are frozen and live in unrelated spaces of different
dimensions. Alignment learns one small head per modality,

    f_m(x) = normalize(h_m(normalize(x))),   h_m = Linear(d_m, D)  or  Linear(d_m, H) -> GELU -> Linear(H, D),

so that the two views of one record land close together: for records ``i`` (seen through modality ``a``) and
``j`` (seen through ``b``) the similarity is the cosine ``s_ij = <f_a(x_i^a), f_b(x_j^b)>``. Inputs are
L2-normalised first, so heads see every encoder on the same scale.

**Anchor modalities** (``AlignmentConfig.anchors``) already live in the target space, e.g. text and image in
the ``clip`` profile share CLIP's space. An anchor's head is ``f_m(x) = normalize(x)`` (no parameters, never
trained) and the shared space *is* the anchors' space: every anchor must have the same input dimension, which
becomes ``shared_dim``. Only the other heads train, pulled into the anchors' space by the anchor-other pairs;
anchor-anchor pairs have nothing to train and are left out of the loss (their retrieval is still reported).

**Loss** (CLIP's symmetric InfoNCE). For a mini-batch and a pair of modalities ``(a, b)`` let ``R`` be the rows
of the batch having both, ``Z_a, Z_b`` their ``(|R|, D)`` head outputs and ``L = Z_a Z_b^T / tau`` (``tau``
fixed). Row ``r``'s positive is column ``r``; every other row of ``R`` is a negative:

    loss_ab = 1/2 * [ CE(L, diag) + CE(L^T, diag) ],   CE = mean over rows of  -log softmax(L)_{r,r}.

The batch loss is the mean of ``loss_ab`` over the trainable pairs (not both anchors) with ``|R| >= 2``. Only
the heads are trained (AdamW, cosine learning-rate decay to 0). A random head already scores ``log |R|`` on
average; the loss falls as matching views become each other's nearest neighbours.

**Evaluation** uses held-out rows only: for each ordered pair ``a->b`` the validation rows having both
modalities form queries (their ``a`` vectors) and the gallery (their ``b`` vectors); see
:func:`retrieval_recall` for the metric definitions.

**Reproducibility.** Heads are initialised under ``torch.manual_seed(seed)`` (inside ``fork_rng``: the
caller's RNG state is restored), batches come from a seeded NumPy generator, deterministic algorithms are on and
the thread count is fixed during training, so the same inputs, config and machine give bit-identical weights
and hence the same :attr:`AlignmentModel.version`.

Models are saved with ``safetensors`` (plain tensors named ``<modality>.<param>``, JSON metadata); loading never
unpickles anything and re-checks the version against the weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from mm_platform.lib.device import step_threads
from mm_platform.lib.fusion import modality_order

#: Format tag written into saved models; :meth:`AlignmentModel.load` refuses anything else.
MODEL_FORMAT = "mm_platform.alignment/1"
#: Metadata keys written by :meth:`AlignmentModel.save`; ``extra`` may not use them.
RESERVED_METADATA = frozenset({"format", "version", "config", "in_dims", "modalities"})
#: ``k`` values of the recall metrics reported by :func:`train_alignment`.
RECALL_KS: tuple[int, ...] = (1, 5, 10)
#: Upper bound of torch intra-op threads while training (a fixed count keeps results reproducible).
MAX_TRAIN_THREADS = 4
#: Rows per forward pass in :meth:`AlignmentModel.project`.
_BLOCK = 8192
#: Query x gallery similarities computed at once by :func:`retrieval_recall` (~64 MB of float32).
_SIM_CELLS = 1 << 24


@dataclass(frozen=True)
class AlignmentConfig:
    """Hyper-parameters of :func:`train_alignment` (all part of the model version)."""

    shared_dim: int = 128  #: D, dimension of the shared space
    hidden_dim: int = 256  #: H of the two-layer heads; 0 = linear heads
    epochs: int = 60  #: passes over the training rows (0 = untrained heads, a baseline)
    batch_size: int = 256  #: rows per mini-batch (in-batch negatives per pair: rows having both - 1)
    lr: float = 2e-3  #: AdamW peak learning rate (cosine decay to 0)
    weight_decay: float = 1e-4  #: AdamW decoupled weight decay
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
            (self.hidden_dim >= 0, "hidden_dim must be >= 0 (0 = linear heads)"),
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
    if config.hidden_dim > 0:
        return nn.Sequential(
            nn.Linear(in_dim, config.hidden_dim), nn.GELU(), nn.Linear(config.hidden_dim, config.shared_dim)
        )
    return nn.Sequential(nn.Linear(in_dim, config.shared_dim))


def _forward(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``normalize(head(normalize(x)))`` row-wise (just ``normalize(x)`` for an anchor's identity head)."""
    unit = F.normalize(x, dim=1, eps=1e-12)
    if isinstance(head, nn.Identity):
        return unit
    return F.normalize(head(unit), dim=1, eps=1e-12)


@contextlib.contextmanager
def _training_context() -> Iterator[None]:
    """Fixed thread count, deterministic algorithms and flushed denormals for the duration.

    Thread count and deterministic mode are restored afterwards; flush-denormal is switched back off (torch's
    default; it has no getter). Without flushing, Adam's second-moment estimates and the gradients of
    well-separated pairs decay into denormal floats late in training and CPU steps become ~10x slower.
    """
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(max(1, min(MAX_TRAIN_THREADS, step_threads())))
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


class AlignmentModel:
    """Trained projection heads, one per modality, into a shared ``shared_dim``-dimensional space.

    Modalities named in ``config.anchors`` must have an ``nn.Identity`` head and ``in_dims == shared_dim``;
    they are listed in :attr:`anchors`.
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
        if set(heads) != set(in_dims):
            raise ValueError(f"heads {sorted(heads)} and in_dims {sorted(in_dims)} name different modalities")
        self.modalities: tuple[str, ...] = modality_order(list(heads))
        self.in_dims: dict[str, int] = {m: int(in_dims[m]) for m in self.modalities}
        self.config = config
        self.shared_dim = config.shared_dim
        self.extra: dict[str, str] = dict(extra or {})
        self.anchors: tuple[str, ...] = tuple(m for m in self.modalities if m in config.anchors)
        for m in self.anchors:
            if not isinstance(heads[m], nn.Identity):
                raise ValueError(f"anchor modality {m!r} needs an identity head, got {type(heads[m]).__name__}")
            if self.in_dims[m] != self.shared_dim:
                raise ValueError(
                    f"anchor modality {m!r} has dimension {self.in_dims[m]}, the shared space {self.shared_dim}"
                )
        self._heads = nn.ModuleDict({m: heads[m] for m in self.modalities}).eval()
        self.version = self._compute_version()

    def __repr__(self) -> str:
        return f"AlignmentModel(version={self.version!r}, modalities={self.modalities}, shared_dim={self.shared_dim})"

    # -- weights and version ------------------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        """All weights as contiguous float32 CPU tensors named ``<modality>.<param>`` (e.g. ``text.0.weight``)."""
        out: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            for name, t in self._heads[m].state_dict().items():
                out[f"{m}.{name}"] = t.detach().to("cpu", torch.float32).contiguous().clone()
        return out

    def _compute_version(self) -> str:
        """First 12 hex digits of sha256 over (name, shape, bytes) of every tensor, config JSON and in_dims."""
        h = hashlib.sha256()
        for name, t in sorted(self.tensors().items()):
            h.update(name.encode())
            h.update(json.dumps(list(t.shape)).encode())
            h.update(t.numpy().tobytes())
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
        if modality not in self._heads:
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
        head = self._heads[modality]
        with torch.no_grad():
            for start in range(0, rows.size, _BLOCK):
                idx = rows[start : start + _BLOCK]
                out[idx] = _forward(head, torch.from_numpy(np.ascontiguousarray(arr[idx]))).numpy()
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
            save_file(self.tensors(), tmp_name, metadata=metadata)
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
            with safe_open(str(path), framework="pt") as fh:
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
        heads: dict[str, nn.Module] = {}
        used: set[str] = set()
        for m in modalities:
            if m in config.anchors:
                heads[m] = nn.Identity()  # no tensors
                continue
            head = _make_head(in_dims[m], config)
            state = {}
            for name in head.state_dict():
                key = f"{m}.{name}"
                if key not in tensors:
                    raise ValueError(f"{path}: missing tensor {key!r}")
                state[name] = tensors[key]
                used.add(key)
            try:
                head.load_state_dict(state, strict=True)
            except RuntimeError as exc:  # shape mismatch
                raise ValueError(f"{path}: tensors of {m!r} do not fit the config ({exc})") from exc
            heads[m] = head
        unexpected = sorted(set(tensors) - used)
        if unexpected:
            raise ValueError(f"{path}: unexpected tensors {unexpected[:5]}")
        extra = {k: v for k, v in metadata.items() if k not in RESERVED_METADATA}
        try:
            model = cls(heads, in_dims, config, extra=extra)
        except ValueError as exc:
            raise ValueError(f"{path}: inconsistent alignment model ({exc})") from exc
        if model.version != stored_version:
            raise ValueError(
                f"{path}: version mismatch: file says {stored_version!r}, weights give {model.version!r}"
            )
        return model


# -- retrieval metrics --------------------------------------------------------------------------------------


def _missing(v: object) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def _unit(X: np.ndarray) -> np.ndarray:
    arr = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.where(norms > 1e-12, arr / np.where(norms > 1e-12, norms, 1.0), 0.0).astype(np.float32)


def retrieval_recall(
    Q: np.ndarray,
    G: np.ndarray,
    k: int | Sequence[int] = RECALL_KS,
    q_labels: Sequence[str | None] | None = None,
    g_labels: Sequence[str | None] | None = None,
) -> dict[str, float | int | None]:
    """Cosine retrieval metrics of queries ``Q`` (nq, D) against a gallery ``G`` (ng, D), ``ng >= nq``.

    * ``recall@k`` (instance level): query ``i``'s single target is gallery item ``i``; the fraction of queries
      whose target ranks among the ``k`` most similar gallery items. Rank = number of gallery items with a
      higher similarity, plus the number with an equal similarity and a smaller index (stable ordering).
    * ``median_rank``: median 1-based rank of the target.
    * ``label_recall@k`` (only when both label lists are given): over queries with a label, the fraction for
      which at least one of the top-``k`` gallery items (the target included) carries the query's label; gallery
      items without a label never match. ``n_labelled_queries`` counts those queries.

    Rows are L2-normalised first. Returns also ``n_queries`` and ``n_gallery``; metrics are None without queries.
    """
    ks = (k,) if isinstance(k, int) else tuple(int(v) for v in k)
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    Qu, Gu = _unit(Q), _unit(G)
    if Qu.ndim != 2 or Gu.ndim != 2 or Qu.shape[1] != Gu.shape[1]:
        raise ValueError(f"queries {Qu.shape} and gallery {Gu.shape} must be 2-D with the same width")
    nq, ng = Qu.shape[0], Gu.shape[0]
    if ng < nq:
        raise ValueError(f"gallery ({ng}) must hold every query's target ({nq} queries)")
    with_labels = q_labels is not None and g_labels is not None
    if with_labels:
        assert q_labels is not None and g_labels is not None
        if len(q_labels) != nq or len(g_labels) != ng:
            raise ValueError(f"{len(q_labels)} query labels / {len(g_labels)} gallery labels for {nq} x {ng}")
    out: dict[str, float | int | None] = {"n_queries": nq, "n_gallery": ng}
    if nq == 0:
        out.update({f"recall@{kk}": None for kk in ks})
        out["median_rank"] = None
        if with_labels:
            out.update({f"label_recall@{kk}": None for kk in ks})
            out["n_labelled_queries"] = 0
        return out

    ranks = np.empty(nq, dtype=np.int64)
    kmax = min(max(ks), ng)
    label_hits = {kk: 0 for kk in ks}
    n_labelled = 0
    if with_labels:
        assert q_labels is not None and g_labels is not None
        names = sorted({str(v) for v in [*q_labels, *g_labels] if not _missing(v)})
        code = {name: i for i, name in enumerate(names)}
        q_codes = np.array([-1 if _missing(v) else code[str(v)] for v in q_labels], dtype=np.int64)
        g_codes = np.array([-2 if _missing(v) else code[str(v)] for v in g_labels], dtype=np.int64)
    gallery_index = np.arange(ng)
    block_rows = max(1, _SIM_CELLS // max(ng, 1))  # bounds the (block, ng) similarity temporaries
    for start in range(0, nq, block_rows):
        stop = min(start + block_rows, nq)
        S = Qu[start:stop] @ Gu.T  # (b, ng)
        rows = np.arange(stop - start)
        target = S[rows, np.arange(start, stop)][:, None]
        before = (S > target) | ((S == target) & (gallery_index[None, :] < np.arange(start, stop)[:, None]))
        ranks[start:stop] = before.sum(axis=1)
        if with_labels:
            top = (
                np.argpartition(-S, kmax - 1, axis=1)[:, :kmax]
                if kmax < ng
                else np.tile(gallery_index, (stop - start, 1))
            )
            # order the top block by (similarity desc, index asc) so top-k for every k <= kmax is exact
            top_s = np.take_along_axis(S, top, axis=1)
            order = np.lexsort((top, -top_s), axis=1)
            top = np.take_along_axis(top, order, axis=1)
            qc = q_codes[start:stop]
            labelled = qc >= 0
            n_labelled += int(labelled.sum())
            match = g_codes[top] == qc[:, None]  # (b, kmax)
            for kk in ks:
                label_hits[kk] += int((match[:, :kk].any(axis=1) & labelled).sum())
    for kk in ks:
        out[f"recall@{kk}"] = float(np.mean(ranks < kk))
    out["median_rank"] = float(np.median(ranks + 1))
    if with_labels:
        out["n_labelled_queries"] = n_labelled
        for kk in ks:
            out[f"label_recall@{kk}"] = label_hits[kk] / n_labelled if n_labelled else None
    return out


# -- training ------------------------------------------------------------------------------------------------


def _prepare(
    blocks: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray]
) -> tuple[tuple[str, ...], dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Validated float32 blocks (non-finite / zero / absent rows zeroed) and usable-row masks."""
    if not blocks:
        raise ValueError("train_alignment needs at least two modality blocks, got none")
    order = modality_order(list(blocks))
    lengths = {m: np.asarray(blocks[m]).shape[0] for m in order}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"modality blocks have different row counts: {lengths}")
    n = next(iter(lengths.values()))
    X: dict[str, np.ndarray] = {}
    P: dict[str, np.ndarray] = {}
    for m in order:
        if m not in present:
            raise ValueError(f"no presence mask for modality {m!r}")
        block = np.asarray(blocks[m], dtype=np.float32)
        if block.ndim != 2 or block.shape[1] < 1:
            raise ValueError(f"{m}: block must be 2-D with at least one column, got shape {block.shape}")
        mask = np.asarray(present[m], dtype=bool).reshape(-1)
        if mask.shape[0] != n:
            raise ValueError(f"{m}: presence mask has {mask.shape[0]} rows, blocks have {n}")
        finite = np.isfinite(block).all(axis=1)
        block = np.where(finite[:, None], block, 0.0).astype(np.float32)
        usable = mask & finite & (np.linalg.norm(block, axis=1) > 1e-12)
        X[m] = np.ascontiguousarray(np.where(usable[:, None], block, 0.0).astype(np.float32))
        P[m] = usable
    return order, X, P, n


def _pair_loss(za: torch.Tensor, zb: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = za @ zb.T / temperature
    target = torch.arange(za.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _batch_loss(
    heads: Mapping[str, nn.Module],
    Xt: Mapping[str, torch.Tensor],
    Pt: Mapping[str, torch.Tensor],
    pairs: Sequence[tuple[str, str]],
    idx: torch.Tensor,
    temperature: float,
) -> torch.Tensor | None:
    """Mean symmetric InfoNCE over the pairs with >= 2 rows having both in batch ``idx``; None if no pair has."""
    mods = sorted({m for p in pairs for m in p})
    masks = {m: Pt[m][idx] for m in mods}
    needed = [m for m in mods if bool(masks[m].any())]
    Z = {m: _forward(heads[m], Xt[m][idx]) for m in needed}
    losses = []
    for a, b in pairs:
        if a not in Z or b not in Z:
            continue
        both = masks[a] & masks[b]
        if int(both.sum()) < 2:
            continue
        losses.append(_pair_loss(Z[a][both], Z[b][both], temperature))
    if not losses:
        return None
    return torch.stack(losses).mean()


def _mean_loss(
    heads: Mapping[str, nn.Module],
    Xt: Mapping[str, torch.Tensor],
    Pt: Mapping[str, torch.Tensor],
    pairs: Sequence[tuple[str, str]],
    rows: np.ndarray,
    config: AlignmentConfig,
) -> float | None:
    """Mean batch loss over ``rows`` taken in order in chunks of ``batch_size`` (no gradients)."""
    values = []
    with torch.no_grad():
        for start in range(0, rows.size, config.batch_size):
            loss = _batch_loss(
                heads,
                Xt,
                Pt,
                pairs,
                torch.from_numpy(rows[start : start + config.batch_size]),
                config.temperature,
            )
            if loss is not None:
                values.append(float(loss))
    return float(np.mean(values)) if values else None


def _anchored_config(config: AlignmentConfig, dims: Mapping[str, int]) -> AlignmentConfig:
    """``config`` with ``shared_dim`` set to the common dimension of the anchors among ``dims``.

    ValueError when those anchors differ in dimension, or ``config.shared_dim`` was set (is not the default)
    and differs from theirs.
    """
    anchor_dims = {m: int(dims[m]) for m in config.anchors if m in dims}
    if not anchor_dims:
        return config
    if len(set(anchor_dims.values())) != 1:
        raise ValueError(f"anchor modalities must share one dimension (the shared space), got {anchor_dims}")
    dim = next(iter(anchor_dims.values()))
    if config.shared_dim == dim:
        return config
    default = next(f.default for f in fields(AlignmentConfig) if f.name == "shared_dim")
    if config.shared_dim != default:
        raise ValueError(
            f"shared_dim={config.shared_dim} conflicts with the anchors' dimension {dim} {anchor_dims}; "
            "leave shared_dim at its default or set it to the anchors' dimension"
        )
    return replace(config, shared_dim=dim)


def train_alignment(
    blocks: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    config: AlignmentConfig | None = None,
    labels: Sequence[str | None] | None = None,
) -> tuple[AlignmentModel, dict[str, Any]]:
    """Train one projection head per modality with symmetric InfoNCE over every pair of modalities.

    Args:
        blocks: modality -> ``(n, d_m)`` frozen-encoder vectors aligned by row (zeros where absent), as
            :func:`mm_platform.lib.fusion.align_blocks` returns them.
        present: modality -> ``(n,)`` bool mask. All-zero or non-finite rows count as absent.
        config: hyper-parameters (default :class:`AlignmentConfig`).
        labels: optional class label per row (None/blank = unlabelled), only used for ``label_recall@10``.

    Rows with at least two modalities are *usable*; a seeded permutation of them puts ``round(val_fraction *
    usable)`` rows into validation (kept >= 2 rows for training), the rest trains (subsampled to ``max_train``).
    Pairs of modalities with >= 2 training rows having both are trained; modalities in no such pair are
    dropped (``metrics["dropped_modalities"]``).

    Anchors (``config.anchors`` present in ``blocks``) get identity heads. They must all have the same
    dimension ``d``; the model's config gets ``shared_dim = d`` (ValueError when ``config.shared_dim`` is not
    the default and differs from ``d``). Pairs of two anchors are evaluated but not trained; when every kept
    modality is an anchor nothing is trained (``metrics["epochs"] == 0``, losses None).

    Returns:
        ``(model, metrics)`` with ``train_loss`` (mean batch loss of the last epoch; with ``epochs=0`` the loss
        of the untrained heads on the training rows), ``val_loss`` (same batching over validation rows, None
        without validation rows), ``train_loss_curve`` / ``val_loss_curve`` (per epoch; empty without
        training, the latter also without validation rows), ``n_train``, ``n_val``, ``pairs`` (``"a|b"`` trained), ``epochs`` (epochs
        actually run), ``seconds``, ``retrieval`` (``{"a->b": retrieval_recall(...) on validation rows having
        both, for k in (1, 5, 10)}`` for every kept pair, anchor pairs included, with ``label_recall@10`` when
        labels are given), ``mean_recall@1`` / ``mean_recall@10`` (mean over ordered pairs, None without any),
        ``dropped_modalities`` and ``anchors`` (the model's anchor modalities).

    Raises:
        ValueError: inconsistent inputs, anchors of different dimensions (or not matching an explicit
            ``shared_dim``), fewer than 4 usable rows, or no pair of modalities with rows in common.
    """
    t0 = time.perf_counter()
    config = config or AlignmentConfig()
    order, X, P, n = _prepare(blocks, present)
    config = _anchored_config(config, {m: X[m].shape[1] for m in order})
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} rows")
    n_modalities = np.sum([P[m] for m in order], axis=0) if n else np.zeros(0)
    usable = np.flatnonzero(n_modalities >= 2)
    if usable.size < 4:
        raise ValueError(f"alignment needs at least 4 rows with two or more modalities, got {usable.size}")

    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(usable)
    n_val = min(int(round(usable.size * config.val_fraction)), usable.size - 2)
    val_idx = np.sort(perm[:n_val])
    train_idx = np.sort(perm[n_val:][: config.max_train])
    pairs = [(a, b) for a, b in combinations(order, 2) if int(np.sum(P[a][train_idx] & P[b][train_idx])) >= 2]
    if not pairs:
        raise ValueError("no pair of modalities has two or more training rows in common")
    used = modality_order({m for p in pairs for m in p})
    dropped = [m for m in order if m not in used]
    anchors = set(config.anchors)
    trained_pairs = [(a, b) for a, b in pairs if not (a in anchors and b in anchors)]
    epochs = config.epochs if trained_pairs else 0

    Xt = {m: torch.from_numpy(X[m]) for m in used}
    Pt = {m: torch.from_numpy(P[m]) for m in used}
    train_loss: float | None = None
    train_curve: list[float | None] = []
    val_curve: list[float | None] = []
    with _training_context():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            heads: dict[str, nn.Module] = {
                m: nn.Identity() if m in anchors else _make_head(X[m].shape[1], config) for m in used
            }
        if epochs > 0:
            params = [p for m in used for p in heads[m].parameters()]
            opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
            steps_per_epoch = math.ceil(train_idx.size / config.batch_size)
            total = max(1, epochs * steps_per_epoch)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
            )
            batch_rng = np.random.default_rng([config.seed, 1])
            for head in heads.values():
                head.train()
            for _ in range(epochs):
                epoch_losses: list[float] = []
                shuffled = batch_rng.permutation(train_idx)
                for start in range(0, shuffled.size, config.batch_size):
                    idx = torch.from_numpy(shuffled[start : start + config.batch_size])
                    loss = _batch_loss(heads, Xt, Pt, trained_pairs, idx, config.temperature)
                    if loss is None:
                        sched.step()
                        continue
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    epoch_losses.append(float(loss.detach()))
                train_loss = float(np.mean(epoch_losses)) if epoch_losses else None
                train_curve.append(train_loss)
                if val_idx.size:  # eval mode: no dropout, no RNG draws, so the trained weights are unchanged
                    for head in heads.values():
                        head.eval()
                    val_curve.append(_mean_loss(heads, Xt, Pt, trained_pairs, val_idx, config))
                    for head in heads.values():
                        head.train()
            for head in heads.values():
                head.eval()
        else:
            train_loss = _mean_loss(heads, Xt, Pt, trained_pairs, train_idx, config)
        val_loss = _mean_loss(heads, Xt, Pt, trained_pairs, val_idx, config) if val_idx.size else None
    model = AlignmentModel(heads, {m: X[m].shape[1] for m in used}, config)

    retrieval: dict[str, dict[str, float | int | None]] = {}
    for a, b in pairs:
        rows = val_idx[P[a][val_idx] & P[b][val_idx]]
        if rows.size < 2:
            continue
        row_labels = [labels[i] for i in rows] if labels is not None else None
        for q, g in ((a, b), (b, a)):
            retrieval[f"{q}->{g}"] = retrieval_recall(
                model.project(q, X[q][rows]), model.project(g, X[g][rows]), RECALL_KS, row_labels, row_labels
            )

    def mean_of(key: str) -> float | None:
        values = [float(r[key]) for r in retrieval.values() if r.get(key) is not None]  # type: ignore[arg-type]
        return float(np.mean(values)) if values else None

    metrics: dict[str, Any] = {
        "train_loss": train_loss,
        "val_loss": val_loss,
        "train_loss_curve": train_curve,
        "val_loss_curve": val_curve,
        "n_train": int(train_idx.size),
        "n_val": int(val_idx.size),
        "n_usable": int(usable.size),
        "pairs": [f"{a}|{b}" for a, b in trained_pairs],
        "epochs": epochs,
        "retrieval": retrieval,
        "mean_recall@1": mean_of("recall@1"),
        "mean_recall@10": mean_of("recall@10"),
        "dropped_modalities": dropped,
        "anchors": list(model.anchors),
        "version": model.version,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if labels is not None:
        metrics["mean_label_recall@10"] = mean_of("label_recall@10")
    return model, metrics
