"""Density clustering: HDBSCAN, and DBSCAN with an automatic eps from the k-distance curve."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mm_platform.lib.analysis.clustering.base import (
    ClusterResult,
    _as_matrix,
    _cosine_silhouette,
    _means,
    _relabel_by_size,
    _sample_index,
    _thread_limit,
    _unit_rows,
)


def hdbscan_cluster(
    X: np.ndarray,
    min_cluster_size: int = 5,
    min_samples: int | None = None,
    *,
    metric: str = "euclidean",
    seed: int = 0,
    sample_size: int = 5000,
) -> ClusterResult:
    """Density clustering with ``sklearn.cluster.HDBSCAN``; noise points get label -1.

    Fewer rows than ``max(min_cluster_size, 2)`` give all-outliers (k = 0). Centroids are member means.
    For unit-norm (fused) vectors Euclidean distance orders pairs exactly as cosine distance does.
    """
    from sklearn.cluster import HDBSCAN

    if min_cluster_size < 2:
        raise ValueError(f"min_cluster_size must be >= 2, got {min_cluster_size}")
    X = _as_matrix(X)
    n = X.shape[0]
    params: dict[str, Any] = {
        "min_cluster_size": min_cluster_size,
        "min_samples": min_samples,
        "metric": metric,
        "n": n,
        "seed": seed,
        "sample_size": sample_size,
    }
    eff_min_samples = min_samples if min_samples is not None else min_cluster_size
    if n < max(min_cluster_size, 2) or n <= eff_min_samples:
        params["chosen_k"] = 0
        params["degenerate"] = "too few rows"
        return ClusterResult(
            labels=np.full(n, -1, dtype=np.int64),
            algorithm="hdbscan",
            k=0,
            params=params,
            silhouette=None,
            centroids=np.zeros((0, X.shape[1])),
        )
    model = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, metric=metric, copy=True)
    with _thread_limit(X, None):
        raw = np.asarray(model.fit_predict(X), dtype=np.int64)
    raw = np.where(raw < 0, -1, raw)
    labels, old_order = _relabel_by_size(raw)
    k = len(old_order)
    params["chosen_k"] = k
    return ClusterResult(
        labels=labels,
        algorithm="hdbscan",
        k=k,
        params=params,
        silhouette=_cosine_silhouette(X, labels, _sample_index(n, sample_size, seed + 1)),
        centroids=_means(X, labels, k),
    )





#: Algorithms with density-defined clusters: :func:`fit_on_sample` assigns left-out rows to them only within
#: reach (see there); other algorithms partition the whole space.
DENSITY_ALGORITHMS = frozenset({"hdbscan", "dbscan"})
#: Policies of :func:`apply_outlier_policy`.
OUTLIER_POLICIES: tuple[str, ...] = ("keep", "nearest")
#: Fallback quantile of the k-distances used as eps when the k-distance curve has no knee.
EPS_FALLBACK_QUANTILE = 0.9
#: Smallest eps handed to DBSCAN (duplicate rows give k-distances of 0, which sklearn rejects).
_MIN_EPS = 1e-6


def _auto_eps(U: np.ndarray, min_samples: int, seed: int, sample_size: int) -> tuple[float, dict[str, Any]]:
    """eps from the knee of the sorted k-distance curve of unit rows ``U`` (cosine distance).

    The k-distance of a row is the cosine distance to its ``min_samples``-th nearest row, the row itself
    counted first -- exactly the radius at which it becomes a DBSCAN core point. It is computed for a seeded
    sample of ``<= sample_size`` query rows (against all rows) and sorted ascending. With the index rescaled to
    ``x in [0, 1]`` and the distance to ``y in [0, 1]`` (min-max), the knee is the point farthest below the
    chord ``y = x``, i.e. ``argmax(x - y)``: dense rows sit on the flat start of the curve, noise on its steep
    end. When the curve is flat, too short, or never falls ``0.05`` below the chord (no knee), the
    :data:`EPS_FALLBACK_QUANTILE` quantile is used instead.
    """
    from sklearn.neighbors import NearestNeighbors

    n = U.shape[0]
    queries = _sample_index(n, sample_size, seed)
    nn = NearestNeighbors(n_neighbors=min_samples, metric="cosine", algorithm="brute").fit(U)
    dist, _ = nn.kneighbors(U[queries], n_neighbors=min_samples)
    kdist = np.sort(np.clip(dist[:, -1], 0.0, 2.0))
    info: dict[str, Any] = {"eps_sample_size": int(queries.size)}
    lo, hi = float(kdist[0]), float(kdist[-1])
    if kdist.size >= 3 and hi - lo > 1e-12:
        x = np.linspace(0.0, 1.0, kdist.size)
        gap = x - (kdist - lo) / (hi - lo)
        i = int(np.argmax(gap))
        if gap[i] >= 0.05:
            info.update({"eps_method": "knee", "eps_knee_quantile": round(float(x[i]), 4)})
            return max(float(kdist[i]), _MIN_EPS), info
    info.update({"eps_method": "quantile", "eps_knee_quantile": EPS_FALLBACK_QUANTILE})
    return max(float(np.quantile(kdist, EPS_FALLBACK_QUANTILE)), _MIN_EPS), info


def dbscan_cluster(
    X: np.ndarray,
    *,
    eps: float | None = None,
    min_samples: int = 5,
    seed: int = 0,
    sample_size: int = 5000,
) -> ClusterResult:
    """DBSCAN with cosine distance on unit-normalised rows; noise points get label -1.

    A row is a core point when at least ``min_samples`` rows (itself included) lie within cosine distance
    ``eps``; clusters are the connected components of core points plus the non-core rows within ``eps`` of
    one. ``eps=None`` chooses eps from the k-distance curve (see :func:`_auto_eps`; ``params["eps_method"]``
    says "knee" or "quantile"), a given eps is recorded as "given". Clusters are renumbered by size, centroids
    are member means of the unit rows, and the silhouette (cosine, seeded sample of ``<= sample_size`` rows)
    ignores noise. Fewer than ``min_samples`` rows give all-noise (k = 0). DBSCAN is deterministic; ``seed``
    only picks the rows of the samples.

    Raises ValueError when ``min_samples < 1`` or ``eps`` is not in ``(0, 2]``.
    """
    from sklearn.cluster import DBSCAN

    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    if eps is not None and not (math.isfinite(eps) and 0.0 < eps <= 2.0):
        raise ValueError(f"eps must be a cosine distance in (0, 2], got {eps}")
    X = _as_matrix(X)
    n = X.shape[0]
    U = _unit_rows(X)
    params: dict[str, Any] = {"min_samples": min_samples, "metric": "cosine", "n": n, "seed": seed}
    if n < max(min_samples, 2):
        params.update({"eps": eps, "eps_method": "given" if eps is not None else None, "chosen_k": 0})
        params["degenerate"] = "too few rows"
        return ClusterResult(
            labels=np.full(n, -1, dtype=np.int64),
            algorithm="dbscan",
            k=0,
            params=params,
            silhouette=None,
            centroids=np.zeros((0, X.shape[1])),
        )
    with _thread_limit(X, None):
        if eps is None:
            eps_value, info = _auto_eps(U, min_samples, seed, sample_size)
            params.update(info)
        else:
            eps_value = float(eps)
            params["eps_method"] = "given"
        params["eps"] = eps_value
        model = DBSCAN(eps=eps_value, min_samples=min_samples, metric="cosine", algorithm="brute")
        raw = np.asarray(model.fit_predict(U), dtype=np.int64)
    labels, old_order = _relabel_by_size(np.where(raw < 0, -1, raw))
    k = len(old_order)
    params["chosen_k"] = k
    params["noise_fraction"] = round(float(np.mean(labels == -1)), 4) if n else 0.0
    return ClusterResult(
        labels=labels,
        algorithm="dbscan",
        k=k,
        params=params,
        silhouette=_cosine_silhouette(U, labels, _sample_index(n, sample_size, seed + 1)),
        centroids=_means(U, labels, k),
    )
