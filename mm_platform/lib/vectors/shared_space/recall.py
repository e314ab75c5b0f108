"""Cross-modal retrieval metrics on held-out rows: instance recall@k, median rank, label recall@k."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: ``k`` values of the recall metrics reported by training and by the baseline comparison.
RECALL_KS: tuple[int, ...] = (1, 5, 10)
#: Query x gallery similarities computed at once by :func:`retrieval_recall` (~64 MB of float32).
_SIM_CELLS = 1 << 24


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
