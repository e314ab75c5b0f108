"""K-Means with automatic k (silhouette on a seeded sample; MiniBatchKMeans for large inputs)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from mm_platform.lib.analysis.clustering.base import (
    MINIBATCH_THRESHOLD,
    ClusterResult,
    _as_matrix,
    _cosine_silhouette,
    _n_distinct_rows,
    _relabel_by_size,
    _sample_index,
    _single_cluster,
    _thread_limit,
)


def kmeans_auto(
    X: np.ndarray,
    k: int | None = None,
    k_min: int = 2,
    k_max: int = 12,
    seed: int = 0,
    sample_size: int = 5000,
    *,
    n_init: int = 10,
    minibatch_threshold: int = MINIBATCH_THRESHOLD,
    fit_sample_size: int = 20000,
    n_threads: int | None = None,
) -> ClusterResult:
    """K-Means with k fixed or chosen automatically by cosine silhouette.

    Auto k (``k is None``) tries ``k_min..min(k_max, n - 1, distinct rows)`` and keeps the best
    silhouette (computed for all candidates on the same seeded sample of ``<= sample_size`` rows;
    ties go to the smaller k). Up to ``minibatch_threshold`` rows, ``KMeans(n_init=n_init)`` on all rows;
    above it ``MiniBatchKMeans`` fitted on a seeded sample of ``fit_sample_size`` rows, then used to
    predict every row. Fewer than 3 rows or fewer than 2 distinct rows give a single cluster. A fixed k
    larger than the number of distinct rows is lowered to it (``params["requested_k"]`` keeps the ask).
    The same input and seed always give the same labels. ``n_threads`` caps OpenMP/BLAS threads
    (default: 1 for small inputs, the library default otherwise).
    """
    X = _as_matrix(X)
    with _thread_limit(X, n_threads):
        return _kmeans_auto(
            X, k, k_min, k_max, seed, sample_size, n_init, minibatch_threshold, fit_sample_size
        )


def _best_k(
    fit: Callable[[int], tuple[np.ndarray, np.ndarray]],
    X_fit: np.ndarray,
    sil_idx: np.ndarray,
    candidates: list[int],
    k_scores: dict[int, float],
) -> tuple[int, np.ndarray, np.ndarray]:
    """``(k, labels, centers)`` of the candidate with the best cosine silhouette (the first on ties; the first
    candidate when none has one); records each candidate's silhouette in ``k_scores``."""
    best: tuple[float, int, np.ndarray, np.ndarray] | None = None
    for kk in candidates:
        fit_labels, centers = fit(kk)
        score = _cosine_silhouette(X_fit, fit_labels, sil_idx)
        if score is not None:
            k_scores[kk] = score
        key = score if score is not None else -math.inf
        if best is None or key > best[0]:
            best = (key, kk, fit_labels, centers)
    assert best is not None
    return best[1], best[2], best[3]


def _nearest_centroid(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Label of every row's nearest centroid (Euclidean, as K-Means), in blocks of 65536 rows."""
    n = X.shape[0]
    labels = np.empty(n, dtype=np.int64)
    c_sq = (centers**2).sum(axis=1)
    for start in range(0, n, 65536):
        block = X[start : start + 65536]
        d = c_sq[None, :] - 2.0 * block @ centers.T
        labels[start : start + 65536] = np.argmin(d, axis=1)
    return labels


def _kmeans_auto(
    X: np.ndarray,
    k: int | None,
    k_min: int,
    k_max: int,
    seed: int,
    sample_size: int,
    n_init: int,
    minibatch_threshold: int,
    fit_sample_size: int,
) -> ClusterResult:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n = X.shape[0]
    use_minibatch = n > minibatch_threshold
    algorithm = "minibatch_kmeans" if use_minibatch else "kmeans"
    params: dict[str, Any] = {
        "seed": seed,
        "requested_k": k,
        "k_min": k_min,
        "k_max": k_max,
        "n": n,
        "sample_size": sample_size,
        "n_init": n_init,
    }
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < 3:
        return _single_cluster(X, algorithm, params, "fewer than 3 rows")
    upper_bound = max(k_max, k or 0, k_min) + 1
    n_distinct = _n_distinct_rows(X, cap=upper_bound)
    if n_distinct < 2:
        return _single_cluster(X, algorithm, params, "all rows identical")
    if k == 1:
        return _single_cluster(X, algorithm, params, "k=1 requested")

    if use_minibatch:
        fit_idx = _sample_index(n, fit_sample_size, seed)
        params["fit_sample_size"] = int(fit_idx.size)
    else:
        fit_idx = np.arange(n)
    X_fit = X[fit_idx]

    def fit(kk: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels of the fitting rows and centroids for ``kk`` clusters."""
        if use_minibatch:
            model = MiniBatchKMeans(
                n_clusters=kk, random_state=seed, n_init=3, batch_size=2048, max_iter=200
            ).fit(X_fit)
        else:
            model = KMeans(n_clusters=kk, n_init=n_init, random_state=seed).fit(X_fit)
        return np.asarray(model.labels_, dtype=np.int64), np.asarray(model.cluster_centers_)

    sil_idx = _sample_index(X_fit.shape[0], sample_size, seed + 1)
    k_scores: dict[int, float] = {}
    if k is None:
        lo = max(2, k_min)
        hi = min(k_max, n - 1, n_distinct)
        candidates = list(range(lo, hi + 1)) if lo <= hi else [max(2, min(hi, lo))]
        params["k_candidates"] = candidates
        chosen, fit_labels, centers = _best_k(fit, X_fit, sil_idx, candidates, k_scores)
    else:
        chosen = min(k, n_distinct)
        fit_labels, centers = fit(chosen)

    labels = _nearest_centroid(X, centers) if use_minibatch else fit_labels

    labels, old_order = _relabel_by_size(labels)
    centroids = centers[old_order] if old_order else np.zeros((0, X.shape[1]))
    k_found = len(old_order)
    silhouette = k_scores.get(chosen) if k is None and k_found == chosen else None
    if silhouette is None:
        silhouette = _cosine_silhouette(X, labels, _sample_index(n, sample_size, seed + 1))
    params["chosen_k"] = k_found
    return ClusterResult(
        labels=labels,
        algorithm=algorithm,
        k=k_found,
        params=params,
        silhouette=silhouette,
        centroids=centroids,
        k_scores=k_scores,
    )
