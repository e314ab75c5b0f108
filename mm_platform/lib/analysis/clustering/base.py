"""Shared pieces of the clustering algorithms: the result type, matrix helpers, thread limits and PCA."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Above this many rows, :func:`kmeans_auto` uses MiniBatchKMeans fitted on a seeded sample.
MINIBATCH_THRESHOLD = 20000
#: Below this many matrix cells, clustering runs single-threaded: OpenMP/BLAS thread start-up and
#: spin-waiting cost more than they save on small inputs, badly so on a busy machine.
SMALL_INPUT_CELLS = 2_000_000


def _thread_limit(X: np.ndarray, n_threads: int | None) -> contextlib.AbstractContextManager[Any]:
    from threadpoolctl import threadpool_limits

    if n_threads is None and X.size < SMALL_INPUT_CELLS:
        n_threads = 1
    return threadpool_limits(limits=n_threads) if n_threads is not None else contextlib.nullcontext()


@dataclass
class ClusterResult:
    """Labels of one clustering run and what produced them."""

    labels: np.ndarray  #: (n,) int64, -1 = outlier (HDBSCAN / DBSCAN only)
    algorithm: str  #: "kmeans" | "minibatch_kmeans" | "hdbscan" | "dbscan"
    k: int  #: clusters found, outliers excluded
    params: dict[str, Any] = field(default_factory=dict)
    silhouette: float | None = None  #: cosine silhouette on a seeded sample, None if undefined
    centroids: np.ndarray | None = None  #: (k, D); HDBSCAN: mean of members
    k_scores: dict[int, float] = field(default_factory=dict)  #: silhouette per candidate k (auto-k)

    @property
    def n_outliers(self) -> int:
        """Number of rows labelled -1."""
        return int(np.sum(self.labels == -1))






def _as_matrix(X: np.ndarray) -> np.ndarray:
    arr = np.asarray(X)
    if arr.dtype not in (np.float32, np.float64):  # keep float32 (fused vectors) to halve memory
        arr = arr.astype(np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1) if arr.size else arr.reshape(0, 0)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("matrix contains NaN or infinite values")
    return arr


def _unit_rows(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.where(norms > 1e-12, X / np.where(norms > 1e-12, norms, 1.0), 0.0)


def _relabel_by_size(labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Renumber clusters 0..k-1 by decreasing size (ties: first occurrence). Returns (labels, old ids)."""
    labels = np.asarray(labels, dtype=np.int64)
    ids = [int(c) for c in np.unique(labels) if c >= 0]
    first = {c: int(np.argmax(labels == c)) for c in ids}
    sizes = {c: int(np.sum(labels == c)) for c in ids}
    old_order = sorted(ids, key=lambda c: (-sizes[c], first[c]))
    mapping = {old: new for new, old in enumerate(old_order)}
    out = np.full(labels.shape, -1, dtype=np.int64)
    for old, new in mapping.items():
        out[labels == old] = new
    return out, old_order


def _sample_index(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False))


def _cosine_silhouette(X: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> float | None:
    """Cosine silhouette of ``labels`` restricted to rows ``idx`` (outliers excluded); None if undefined."""
    from sklearn.metrics import silhouette_score

    idx = idx[labels[idx] >= 0]
    if idx.size < 3:
        return None
    sub = labels[idx]
    n_labels = np.unique(sub).size
    if n_labels < 2 or n_labels > idx.size - 1:
        return None
    value = float(silhouette_score(X[idx], sub, metric="cosine"))
    return value if math.isfinite(value) else None


def _means(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, X.shape[1]), dtype=np.float64)
    for c in range(k):
        members = labels == c
        if members.any():
            out[c] = X[members].mean(axis=0)
    return out


def _n_distinct_rows(X: np.ndarray, cap: int) -> int:
    """Number of distinct rows (byte-wise), at most ``cap`` (enough to bound k)."""
    if X.shape[0] == 0:
        return 0
    if X.shape[1] == 0:
        return 1
    if not np.any(X != X[0]):
        return 1
    rows = np.ascontiguousarray(X + 0.0)  # + 0.0 folds -0.0 into 0.0
    as_bytes = rows.view(np.dtype((np.void, rows.itemsize * rows.shape[1]))).ravel()
    return min(int(np.unique(as_bytes).shape[0]), cap)


def _single_cluster(X: np.ndarray, algorithm: str, params: dict[str, Any], reason: str) -> ClusterResult:
    n = X.shape[0]
    params = {**params, "chosen_k": 1 if n else 0, "degenerate": reason}
    return ClusterResult(
        labels=np.zeros(n, dtype=np.int64),
        algorithm=algorithm,
        k=1 if n else 0,
        params=params,
        silhouette=None,
        centroids=X.mean(axis=0, keepdims=True) if n else np.zeros((0, X.shape[1])),
        k_scores={},
    )




def reduce_dimensions(X: np.ndarray, dim: int, seed: int = 0, sample_size: int = 20000) -> tuple[np.ndarray, dict[str, Any]]:
    """PCA to ``dim`` components (fitted on a seeded sample of <= ``sample_size`` rows), rows re-normalised.

    High-dimensional embeddings spread much of their variance over directions that carry no group structure
    (texture, phrasing), which flattens silhouette curves and makes automatic k unreliable; clustering in a
    small PCA space (as BERTopic does with UMAP) keeps the directions that separate groups. ``dim <= 0`` or a
    matrix already that small returns the rows unit-normalised and unreduced.
    """
    X = _as_matrix(X)
    n, d = X.shape
    k = min(dim, d, n - 1)
    if dim <= 0 or k < 2 or k >= d:
        return _unit_rows(X), {"reduction": "none"}
    from sklearn.decomposition import PCA

    idx = _sample_index(n, sample_size, seed)
    pca = PCA(n_components=k, random_state=seed).fit(X[idx])
    Z = _unit_rows(pca.transform(X).astype(np.float32))
    return Z, {"reduction": f"pca{k}", "explained_variance": round(float(pca.explained_variance_ratio_.sum()), 4)}
