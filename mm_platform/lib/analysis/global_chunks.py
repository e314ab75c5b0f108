"""The global layer over vectors read chunk by chunk: what a step needs without holding every vector.

Each function takes ``chunks``, a callable returning a fresh iterator of ``(record_ids, matrix)`` pairs (one
per lake partition, say: the matrix read zero-copy with :func:`mm_platform.lib.arrays.embedding_matrix`), so
a corpus far larger than memory is read pass by pass, one partition at a time.

* :func:`sample_rows` -- a seeded uniform sample of rows (to fit PCA, the map projection, a density clustering);
* :func:`reduce_chunks` -- every row through a fitted PCA (``mean``, ``components``) into unit rows of the
  reduced space (what the clustering runs on: ``n x 16`` floats instead of ``n x d``);
* :func:`chunked_representatives` -- per cluster the ``n`` members closest (cosine) to the mean of its unit
  rows, as :func:`mm_platform.lib.analysis.clustering.representatives` returns them, in two passes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence

import numpy as np

Chunks = Callable[[], Iterator[tuple[Sequence[str], np.ndarray]]]


def _unit(X: np.ndarray) -> np.ndarray:
    A = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    return np.divide(A, norms, out=np.zeros_like(A), where=norms > 1e-12)


def sample_rows(chunks: Chunks, n_total: int, size: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of ``min(size, n_total)`` rows (in row order) gathered in one pass."""
    take = np.arange(n_total) if n_total <= size else np.sort(
        np.random.default_rng(seed).choice(n_total, size=size, replace=False))
    parts, start = [], 0
    for _, X in chunks():
        stop = start + X.shape[0]
        lo, hi = np.searchsorted(take, [start, stop])
        if hi > lo:
            parts.append(np.array(X[take[lo:hi] - start], dtype=np.float32))
        start = stop
    if start != n_total:
        raise ValueError(f"chunks held {start} rows, expected {n_total}")
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def reduce_chunks(chunks: Chunks, mean: np.ndarray | None, components: np.ndarray | None) -> np.ndarray:
    """Unit rows of ``(X - mean) @ components.T`` for every row (float32), or unit rows of ``X`` when there is no
    projection; one pass."""
    out = []
    for _, X in chunks():
        Z = X if components is None else (np.asarray(X, np.float32) - mean) @ components.T
        out.append(_unit(Z))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def chunked_representatives(chunks: Chunks, labels: np.ndarray, n: int = 3) -> dict[int, list[str]]:
    """Per cluster (outliers -1 excluded), the ``n`` member ids most cosine-similar to the mean of the
    cluster's unit rows; ties go to the earlier row. Two passes (means, then similarities)."""
    labels = np.asarray(labels, dtype=np.int64)
    ids = sorted(int(c) for c in np.unique(labels) if c >= 0)
    if not ids:
        return {}
    pos = {c: i for i, c in enumerate(ids)}
    sums: np.ndarray | None = None
    start = 0
    for _, X in chunks():
        lab = labels[start : start + X.shape[0]]
        U = _unit(X)
        if sums is None:
            sums = np.zeros((len(ids), U.shape[1]), dtype=np.float64)
        for c in np.unique(lab[lab >= 0]).tolist():
            sums[pos[c]] += U[lab == c].sum(axis=0, dtype=np.float64)
        start += X.shape[0]
    assert sums is not None
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    means = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 1e-12).astype(np.float32)
    best: dict[int, list[tuple[float, int, str]]] = {c: [] for c in ids}
    start = 0
    for rids, X in chunks():
        lab = labels[start : start + X.shape[0]]
        U = _unit(X)
        for c in np.unique(lab[lab >= 0]).tolist():
            rows = np.flatnonzero(lab == c)
            sims = U[rows] @ means[pos[c]]
            top = rows[np.argsort(-sims, kind="stable")[:n]]
            heap = best[c]
            for r, s in zip(top.tolist(), (U[top] @ means[pos[c]]).tolist(), strict=True):
                item = (s, -(start + r), str(rids[r]))
                if len(heap) < n:
                    heapq.heappush(heap, item)
                else:
                    heapq.heappushpop(heap, item)
        start += X.shape[0]
    return {c: [rid for _, _, rid in sorted(best[c], reverse=True)] for c in ids}
