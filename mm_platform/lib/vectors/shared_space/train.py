"""Training of the contrastive projection heads (symmetric InfoNCE; see :mod:`mm_platform.lib.vectors.shared_space`).

Generalisation on small corpora comes from four things, all in :class:`AlignmentConfig`: early stopping on the
validation loss (``patience``; the best epoch's weights are restored), AdamW decoupled ``weight_decay``,
``dropout`` and a hidden width that grows with the number of training rows (:func:`scaled_hidden_dim`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

from mm_platform.lib.arrays import presence_mask, zero_nonfinite_rows
from mm_platform.lib.device import LazyModule, step_threads
from mm_platform.lib.vectors.fusion import modality_order
from mm_platform.lib.vectors.shared_space.heads import (
    AUTO_HIDDEN,
    AlignmentConfig,
    AlignmentModel,
    _forward,
    _make_head,
)
from mm_platform.lib.vectors.shared_space.recall import RECALL_KS, retrieval_recall

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import nn
else:  # imported on first use (lib/device.py LazyModule)
    torch = LazyModule("torch")
    F = LazyModule("torch.nn.functional")
    nn = LazyModule("torch.nn")

#: Upper bound of torch intra-op threads while training (a fixed count keeps results reproducible).
MAX_TRAIN_THREADS = 4
#: Training rows per extra training thread (:func:`train_threads`): below this, one thread is fastest.
ROWS_PER_THREAD = 2000
#: Hidden width rule (:func:`scaled_hidden_dim`): about one hidden unit per this many training rows ...
ROWS_PER_HIDDEN_UNIT = 4
#: ... rounded down to a power of two and clipped to this range.
HIDDEN_RANGE = (16, 512)
#: A validation loss counts as a new best when it is lower than the best so far by more than this.
MIN_IMPROVEMENT = 1e-4


def scaled_hidden_dim(n_train: int) -> int:
    """Hidden width for ``n_train`` training rows: ``2**floor(log2(n_train / 4))`` clipped to [16, 512].

    A head's weights grow linearly with the width (``d_in*H + H*D``); keeping about 4 training rows per hidden
    unit keeps the heads small where data is scarce (192 training rows -> 32, 480 -> 64, 2000 -> 256).
    """
    lo, hi = HIDDEN_RANGE
    if n_train < lo * ROWS_PER_HIDDEN_UNIT:
        return lo
    return int(min(hi, 2 ** math.floor(math.log2(n_train / ROWS_PER_HIDDEN_UNIT))))


def train_threads(n_train: int) -> int:
    """Torch threads for training on ``n_train`` rows: one per 2000 rows, at most 4 and the step's share of
    the cores (:func:`mm_platform.lib.device.step_threads`, the thread policy).

    The heads are small: below a few thousand rows the per-operation work is too small to share between
    threads and extra threads only add synchronisation (and steal cores from the rest of the run).
    """
    return max(1, min(MAX_TRAIN_THREADS, step_threads(), 1 + n_train // ROWS_PER_THREAD))


@contextlib.contextmanager
def _training_context(threads: int) -> Iterator[None]:
    """Fixed thread count, deterministic algorithms and flushed denormals for the duration.

    Thread count and deterministic mode are restored afterwards; flush-denormal is switched back off (torch's
    default; it has no getter). Without flushing, Adam's second-moment estimates and the gradients of
    well-separated pairs decay into denormal floats late in training and CPU steps become ~10x slower.
    """
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


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
        block = np.asarray(blocks[m], dtype=np.float32)
        if block.ndim != 2 or block.shape[1] < 1:
            raise ValueError(f"{m}: block must be 2-D with at least one column, got shape {block.shape}")
        mask = presence_mask(m, present, n)
        block, finite = zero_nonfinite_rows(block)
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
    chunk: int | None = None,
) -> float | None:
    """Mean batch loss over ``rows`` taken in order in ``ceil(rows / chunk)`` near-equal chunks (no gradients).

    ``chunk`` defaults to ``batch_size``. The InfoNCE loss grows with the log of the rows compared at once, so
    losses of two row sets are comparable only when measured with the same chunk size (:func:`_eval_chunk`).
    """
    chunk = chunk or config.batch_size
    values = []
    with torch.no_grad():
        for part in np.array_split(rows, max(1, math.ceil(rows.size / chunk))):
            loss = _batch_loss(heads, Xt, Pt, pairs, torch.from_numpy(part), config.temperature)
            if loss is not None:
                values.append(float(loss))
    return float(np.mean(values)) if values else None


def _eval_chunk(n_val: int, config: AlignmentConfig) -> int:
    """Rows per chunk when measuring losses: ``min(batch_size, validation rows)``, the same for the training and
    the validation rows so that their losses compare like with like."""
    return min(config.batch_size, n_val) if n_val >= 2 else config.batch_size


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




@dataclass(frozen=True)
class Split:
    """Validated inputs and the seeded train/validation split shared by the heads and the linear baselines."""

    config: AlignmentConfig  #: with anchors' shared_dim applied (hidden_dim may still be auto)
    X: dict[str, np.ndarray]  #: modality -> float32 rows, zeros where unusable
    P: dict[str, np.ndarray]  #: modality -> usable-row mask
    n: int
    usable: np.ndarray  #: rows with >= 2 modalities
    train_idx: np.ndarray
    val_idx: np.ndarray
    pairs: list[tuple[str, str]]  #: kept pairs (>= 2 training rows having both), anchor pairs included
    trained_pairs: list[tuple[str, str]]  #: kept pairs that are not two anchors
    used: tuple[str, ...]
    dropped: list[str]


def split_rows(
    blocks: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], config: AlignmentConfig,
    labels: Sequence[str | None] | None = None,
) -> Split:
    """Validate the inputs and split the usable rows (see :func:`train_alignment` for the rules)."""
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
    anchors = set(config.anchors)
    return Split(config=config, X=X, P=P, n=n, usable=usable, train_idx=train_idx, val_idx=val_idx, pairs=pairs,
                 trained_pairs=[(a, b) for a, b in pairs if not (a in anchors and b in anchors)],
                 used=used, dropped=[m for m in order if m not in used])


def validation_retrieval(
    model: AlignmentModel, split: Split, labels: Sequence[str | None] | None = None
) -> dict[str, dict[str, float | int | None]]:
    """``{"a->b": retrieval_recall(...)}`` of ``model`` on the validation rows having both, every kept pair."""
    retrieval: dict[str, dict[str, float | int | None]] = {}
    X, P, val_idx = split.X, split.P, split.val_idx
    for a, b in split.pairs:
        rows = val_idx[P[a][val_idx] & P[b][val_idx]]
        if rows.size < 2:
            continue
        row_labels = [labels[i] for i in rows] if labels is not None else None
        for q, g in ((a, b), (b, a)):
            retrieval[f"{q}->{g}"] = retrieval_recall(
                model.project(q, X[q][rows]), model.project(g, X[g][rows]), RECALL_KS, row_labels, row_labels
            )
    return retrieval


def mean_metric(retrieval: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    """Mean of ``key`` over the ordered pairs that have it (None without any)."""
    values = [float(r[key]) for r in retrieval.values() if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def _set_mode(heads: Mapping[str, nn.Module], train: bool) -> None:
    for head in heads.values():
        head.train(train)


def _fit(
    heads: dict[str, nn.Module], split: Split, Xt: Mapping[str, torch.Tensor], Pt: Mapping[str, torch.Tensor],
    config: AlignmentConfig,
) -> dict[str, Any]:
    """AdamW + cosine decay with early stopping on the validation loss; the best epoch's weights are restored.

    Both curves are measured after each epoch in eval mode (no dropout), in chunks of the same size
    (:func:`_eval_chunk`), so they are comparable: ``train_loss_curve[e]`` and ``val_loss_curve[e]`` are the
    losses of the weights after epoch ``e + 1`` on the training and the validation rows.
    """
    train_idx, val_idx, pairs = split.train_idx, split.val_idx, split.trained_pairs
    params = [p for m in split.used for p in heads[m].parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    total = max(1, config.epochs * math.ceil(train_idx.size / config.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )
    batch_rng = np.random.default_rng([config.seed, 1])
    chunk = _eval_chunk(int(val_idx.size), config)
    train_curve: list[float | None] = []
    val_curve: list[float | None] = []
    best: tuple[float, int, dict[str, dict[str, torch.Tensor]]] | None = None
    stopped_early = False
    for epoch in range(config.epochs):
        _set_mode(heads, True)
        shuffled = batch_rng.permutation(train_idx)
        for start in range(0, shuffled.size, config.batch_size):
            idx = torch.from_numpy(shuffled[start : start + config.batch_size])
            loss = _batch_loss(heads, Xt, Pt, pairs, idx, config.temperature)
            if loss is not None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
        _set_mode(heads, False)
        train_curve.append(_mean_loss(heads, Xt, Pt, pairs, train_idx, config, chunk))
        val = _mean_loss(heads, Xt, Pt, pairs, val_idx, config, chunk) if val_idx.size else None
        if val_idx.size:
            val_curve.append(val)
        if config.patience and val is not None:
            if best is None or val < best[0] - MIN_IMPROVEMENT:
                best = (val, epoch, {m: {k: v.clone() for k, v in h.state_dict().items()} for m, h in heads.items()})
            elif epoch - best[1] >= config.patience:
                stopped_early = True
                break
    best_epoch = len(train_curve) - 1
    if best is not None:
        best_epoch = best[1]
        for m, state in best[2].items():
            heads[m].load_state_dict(state)
    _set_mode(heads, False)
    return {
        "train_loss_curve": train_curve, "val_loss_curve": val_curve, "epochs": len(train_curve),
        "best_epoch": best_epoch + 1 if train_curve else 0, "stopped_early": stopped_early,
        "train_loss": train_curve[best_epoch] if train_curve else None,
        "val_loss": val_curve[best_epoch] if val_curve else None,
    }


def train_alignment(
    blocks: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    config: AlignmentConfig | None = None,
    labels: Sequence[str | None] | None = None,
) -> tuple[AlignmentModel, dict[str, Any]]:
    """Train one projection head per modality with symmetric InfoNCE over every pair of modalities.

    Args:
        blocks: modality -> ``(n, d_m)`` frozen-encoder vectors aligned by row (zeros where absent), as
            :func:`mm_platform.lib.vectors.fusion.align_blocks` returns them.
        present: modality -> ``(n,)`` bool mask. All-zero or non-finite rows count as absent.
        config: hyper-parameters (default :class:`AlignmentConfig`). ``hidden_dim=-1`` is resolved with
            :func:`scaled_hidden_dim` from the number of training rows; the model's config holds the result.
        labels: optional class label per row (None/blank = unlabelled), only used for ``label_recall@10``.

    Rows with at least two modalities are *usable*; a seeded permutation of them puts ``round(val_fraction *
    usable)`` rows into validation (kept >= 2 rows for training), the rest trains (subsampled to ``max_train``).
    Pairs of modalities with >= 2 training rows having both are trained; modalities in no such pair are
    dropped (``metrics["dropped_modalities"]``).

    Anchors (``config.anchors`` present in ``blocks``) get identity heads. They must all have the same
    dimension ``d``; the model's config gets ``shared_dim = d`` (ValueError when ``config.shared_dim`` is not
    the default and differs from ``d``). Pairs of two anchors are evaluated but not trained; when every kept
    modality is an anchor nothing is trained (``metrics["epochs"] == 0``, losses None).

    Early stopping (``patience > 0`` and validation rows): training stops once ``patience`` epochs in a row
    bring no validation loss lower than the best by more than 1e-4, and the best epoch's weights are restored.

    Returns:
        ``(model, metrics)`` with ``train_loss`` / ``val_loss`` (losses of the returned weights, eval mode, on
        the training / validation rows in chunks of ``min(batch_size, validation rows)`` rows, so they compare;
        with ``epochs=0`` those of the untrained heads; ``val_loss`` None
        without validation rows), ``train_loss_curve`` / ``val_loss_curve`` (per epoch run, eval mode; empty
        without training, the latter also without validation rows), ``best_epoch`` (1-based epoch whose
        weights are returned), ``stopped_early``, ``n_train``, ``n_val``, ``pairs`` (``"a|b"`` trained),
        ``epochs`` (epochs actually run), ``hidden_dim``, ``n_parameters``, ``threads``, ``seconds``,
        ``retrieval`` (``{"a->b": retrieval_recall(...) on validation rows having both, for k in (1, 5, 10)}``
        for every kept pair, anchor pairs included, with ``label_recall@10`` when labels are given),
        ``mean_recall@1`` / ``mean_recall@10`` (mean over ordered pairs, None without any),
        ``dropped_modalities`` and ``anchors`` (the model's anchor modalities).

    Raises:
        ValueError: inconsistent inputs, anchors of different dimensions (or not matching an explicit
            ``shared_dim``), fewer than 4 usable rows, or no pair of modalities with rows in common.
    """
    t0 = time.perf_counter()
    split = split_rows(blocks, present, config or AlignmentConfig(), labels)
    config = split.config
    if config.hidden_dim == AUTO_HIDDEN:
        config = replace(config, hidden_dim=scaled_hidden_dim(int(split.train_idx.size)))
    epochs = config.epochs if split.trained_pairs else 0
    anchors = set(config.anchors)
    X, used = split.X, split.used
    Xt = {m: torch.from_numpy(X[m]) for m in used}
    Pt = {m: torch.from_numpy(split.P[m]) for m in used}
    threads = train_threads(int(split.train_idx.size))
    with _training_context(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        heads: dict[str, nn.Module] = {
            m: nn.Identity() if m in anchors else _make_head(X[m].shape[1], config) for m in used
        }
        if epochs > 0:
            fit = _fit(heads, split, Xt, Pt, replace(config, epochs=epochs))
        else:
            _set_mode(heads, False)
            chunk = _eval_chunk(int(split.val_idx.size), config)
            fit = {"train_loss_curve": [], "val_loss_curve": [], "epochs": 0, "best_epoch": 0,
                   "stopped_early": False,
                   "train_loss": _mean_loss(heads, Xt, Pt, split.trained_pairs, split.train_idx, config, chunk),
                   "val_loss": _mean_loss(heads, Xt, Pt, split.trained_pairs, split.val_idx, config, chunk)
                   if split.val_idx.size else None}
    model = AlignmentModel(heads, {m: X[m].shape[1] for m in used}, config)
    retrieval = validation_retrieval(model, split, labels)
    metrics: dict[str, Any] = {
        **fit,
        "n_train": int(split.train_idx.size),
        "n_val": int(split.val_idx.size),
        "n_usable": int(split.usable.size),
        "pairs": [f"{a}|{b}" for a, b in split.trained_pairs],
        "hidden_dim": config.hidden_dim,
        "n_parameters": model.n_parameters(),
        "threads": threads,
        "retrieval": retrieval,
        "mean_recall@1": mean_metric(retrieval, "recall@1"),
        "mean_recall@10": mean_metric(retrieval, "recall@10"),
        "dropped_modalities": split.dropped,
        "anchors": list(model.anchors),
        "version": model.version,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if labels is not None:
        metrics["mean_label_recall@10"] = mean_metric(retrieval, "label_recall@10")
    return model, metrics
