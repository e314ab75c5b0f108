"""Clustering of fused vectors: K-Means with automatic k, HDBSCAN, DBSCAN, scores, and cluster descriptions.

Cluster ids are renumbered by decreasing size (cluster 0 is the largest; ties broken by first member),
so ids are stable for a given input and seed. ``-1`` marks HDBSCAN / DBSCAN outliers;
:func:`apply_outlier_policy` can fold them into the nearest cluster and :func:`fit_on_sample` extends any
clustering fitted on a sample to all rows.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
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


# -- helpers -----------------------------------------------------------------------------------------


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


# -- K-Means -------------------------------------------------------------------------------------------


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
        chosen, fit_labels, centers = best[1], best[2], best[3]
    else:
        chosen = min(k, n_distinct)
        fit_labels, centers = fit(chosen)

    if use_minibatch:
        # assign every row to its nearest centroid (Euclidean, as K-Means)
        labels = np.empty(n, dtype=np.int64)
        c_sq = (centers**2).sum(axis=1)
        for start in range(0, n, 65536):
            block = X[start : start + 65536]
            d = c_sq[None, :] - 2.0 * block @ centers.T
            labels[start : start + 65536] = np.argmin(d, axis=1)
    else:
        labels = fit_labels

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


# -- HDBSCAN -------------------------------------------------------------------------------------------


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


# -- DBSCAN, outlier policy, fitting on a sample -------------------------------------------------------------

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


def _unit_centroids(U: np.ndarray, labels: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """(len(ids), D) unit-norm means of the unit rows ``U`` of each cluster id."""
    return _unit_rows(np.stack([U[labels == c].mean(axis=0) for c in ids]))


def apply_outlier_policy(labels: np.ndarray, X: np.ndarray, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply an outlier policy to clustering labels; returns ``(labels, is_outlier)``.

    ``is_outlier`` is ``labels == -1`` *before* the policy. ``"keep"`` leaves -1 as is. ``"nearest"`` gives every
    -1 row the id of the cluster whose centroid (mean of the unit-normalised member rows) is most cosine-similar
    (ties: lowest id); its ``is_outlier`` flag stays True so callers can still tell. With no cluster at all the
    labels stay -1. Raises ValueError on an unknown policy or mismatched lengths.
    """
    if policy not in OUTLIER_POLICIES:
        raise ValueError(f"unknown outlier policy {policy!r} (expected one of {OUTLIER_POLICIES})")
    out = np.array(labels, dtype=np.int64, copy=True).reshape(-1)
    X = _as_matrix(X)
    if X.shape[0] != out.shape[0]:
        raise ValueError(f"{out.shape[0]} labels for {X.shape[0]} rows")
    is_outlier = out == -1
    ids = sorted(int(c) for c in np.unique(out) if c >= 0)
    if policy == "keep" or not is_outlier.any() or not ids:
        return out, is_outlier
    U = _unit_rows(X)
    C = _unit_centroids(U, out, ids)
    rows = np.flatnonzero(is_outlier)
    id_arr = np.asarray(ids, dtype=np.int64)
    for start in range(0, rows.size, 65536):
        block = rows[start : start + 65536]
        out[block] = id_arr[np.argmax(U[block] @ C.T, axis=1)]
    return out, is_outlier


def fit_on_sample(
    X: np.ndarray,
    fit: Callable[[np.ndarray], ClusterResult],
    *,
    sample_size: int = 20000,
    seed: int = 0,
) -> ClusterResult:
    """Run ``fit`` on a seeded sample of ``<= sample_size`` rows and extend its clusters to every row.

    Up to ``sample_size`` rows, ``fit(X)`` is returned as is (``params["fitted_on_sample"] = False``). Above, the
    sampled rows keep the labels ``fit`` gave them (sample noise stays -1) and the other rows are assigned:

    * partitioning algorithms (K-Means family): to the nearest of the fitted centroids, Euclidean as
      ``KMeans.predict`` does (identical to cosine on unit-norm rows);
    * density algorithms (:data:`DENSITY_ALGORITHMS`): to the cluster of the most cosine-similar unit centroid
      (mean of the unit member rows in the sample), but only when the row's cosine distance to it is at most the
      largest distance of that cluster's sampled members (its radius); otherwise -1. Rows beyond every
      cluster's reach are left as noise, as the density method would have left them.

    Clusters are then renumbered by size over all rows; centroids are the fitted ones (K-Means) or the member
    means over all rows (density); the silhouette is recomputed on a seeded sample of all rows. ``params`` gain
    ``fitted_on_sample``, ``fit_sample_size``, ``assignment`` and ``assigned_noise`` (left-out rows set to -1).

    Raises ValueError when ``sample_size < 2`` or ``fit`` returns a result of the wrong length.
    """
    if sample_size < 2:
        raise ValueError(f"sample_size must be >= 2, got {sample_size}")
    X = _as_matrix(X)
    n = X.shape[0]
    if n <= sample_size:
        res = fit(X)
        res.params = {**res.params, "fitted_on_sample": False}
        return res
    idx = _sample_index(n, sample_size, seed)
    res = fit(X[idx])
    fit_labels = np.asarray(res.labels, dtype=np.int64)
    if fit_labels.shape != (idx.size,):
        raise ValueError(f"fit returned {fit_labels.shape[0]} labels for a sample of {idx.size} rows")
    labels = np.full(n, -1, dtype=np.int64)
    labels[idx] = fit_labels
    rest = np.setdiff1d(np.arange(n), idx, assume_unique=True)
    ids = sorted(int(c) for c in np.unique(fit_labels) if c >= 0)
    density = res.algorithm in DENSITY_ALGORITHMS
    assigned_noise = 0
    centers: np.ndarray | None = None
    if ids:
        id_arr = np.asarray(ids, dtype=np.int64)
        if density:
            assignment = "nearest_centroid_within_radius"
            U = _unit_rows(X)
            U_fit = U[idx]
            C = _unit_centroids(U_fit, fit_labels, ids)
            radius = np.array(
                [float(np.max(1.0 - U_fit[fit_labels == c] @ C[j])) for j, c in enumerate(ids)]
            )
            for start in range(0, rest.size, 65536):
                block = rest[start : start + 65536]
                sims = U[block] @ C.T
                best = np.argmax(sims, axis=1)
                dist = 1.0 - sims[np.arange(block.size), best]
                ok = dist <= radius[best] + 1e-9
                labels[block] = np.where(ok, id_arr[best], -1)
                assigned_noise += int(np.sum(~ok))
        else:
            assignment = "nearest_centroid"
            fitted = np.asarray(res.centroids) if res.centroids is not None else None
            if fitted is None or fitted.ndim != 2 or fitted.shape != (max(ids) + 1, X.shape[1]):
                fitted = _means(X[idx], fit_labels, max(ids) + 1)
            centers = fitted
            sel = fitted[id_arr]
            c_sq = (sel**2).sum(axis=1)
            for start in range(0, rest.size, 65536):
                block = rest[start : start + 65536]
                d = c_sq[None, :] - 2.0 * X[block] @ sel.T
                labels[block] = id_arr[np.argmin(d, axis=1)]
    else:
        assignment = "none (no cluster in the sample)"
        assigned_noise = int(rest.size)
    labels, old_order = _relabel_by_size(labels)
    k = len(old_order)
    if centers is not None:
        centroids = centers[old_order] if old_order else np.zeros((0, X.shape[1]))
    else:
        centroids = _means(X, labels, k)
    fit_sil_size = res.params.get("sample_size")
    sil_size = fit_sil_size if isinstance(fit_sil_size, int) and fit_sil_size > 0 else 5000
    params = {
        **res.params,
        "n": n,
        "chosen_k": k,
        "fitted_on_sample": True,
        "fit_sample_size": int(idx.size),
        "fit_seed": seed,
        "assignment": assignment,
        "assigned_noise": assigned_noise,
    }
    if "noise_fraction" in params:
        params["noise_fraction"] = round(float(np.mean(labels == -1)), 4)
    return ClusterResult(
        labels=labels,
        algorithm=res.algorithm,
        k=k,
        params=params,
        silhouette=_cosine_silhouette(X, labels, _sample_index(n, sil_size, seed + 1)),
        centroids=centroids,
        k_scores=dict(res.k_scores),
    )


# -- scores and descriptions ----------------------------------------------------------------------------


def is_missing_label(v: object) -> bool:
    """None, NaN or a blank string: no label."""
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def external_scores(labels: np.ndarray, truth: Sequence[str | None]) -> dict[str, float | int | None]:
    """NMI and ARI of ``labels`` against ground-truth ``truth`` over the labelled rows.

    Rows whose truth is None, NaN or blank are ignored; outliers (-1) count as one more group.
    Returns ``{"nmi", "ari", "n_labelled"}``; nmi/ari are None when fewer than 2 rows are labelled.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    if len(truth) != labels.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels but {len(truth)} truth values")
    keep = [i for i, t in enumerate(truth) if not is_missing_label(t)]
    n = len(keep)
    if n < 2:
        return {"nmi": None, "ari": None, "n_labelled": n}
    y_true = [str(truth[i]) for i in keep]
    y_pred = labels[keep]
    nmi = float(normalized_mutual_info_score(y_true, y_pred))
    ari = float(adjusted_rand_score(y_true, y_pred))
    return {
        "nmi": nmi if math.isfinite(nmi) else None,
        "ari": ari if math.isfinite(ari) else None,
        "n_labelled": n,
    }


def representatives(
    X: np.ndarray, labels: np.ndarray, record_ids: Sequence[str], n: int = 3
) -> dict[int, list[str]]:
    """Per cluster (outliers excluded), the ``n`` member ids closest (cosine) to the cluster mean."""
    X = _as_matrix(X)
    labels = np.asarray(labels)
    if not (X.shape[0] == labels.shape[0] == len(record_ids)):
        raise ValueError("X, labels and record_ids must have the same length")
    unit = _unit_rows(X)
    out: dict[int, list[str]] = {}
    for c in sorted(int(v) for v in np.unique(labels) if v != -1):
        members = np.flatnonzero(labels == c)
        mean = unit[members].mean(axis=0)
        norm = np.linalg.norm(mean)
        sims = unit[members] @ (mean / norm) if norm > 1e-12 else np.zeros(members.size)
        order = np.lexsort((members, -sims))  # best similarity first, then input order
        out[c] = [str(record_ids[members[j]]) for j in order[:n]]
    return out


def distances_to_centroid(X: np.ndarray, labels: np.ndarray, centroids: np.ndarray | None) -> np.ndarray:
    """Cosine distance of each row to its cluster's centroid (row ``labels[i]`` of ``centroids``).

    NaN for outliers (-1) and when there are no centroids; 1.0 when either vector is zero.
    """
    X = _as_matrix(X)
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(X.shape[0], np.nan, dtype=np.float64)
    if centroids is None or X.shape[0] == 0:
        return out
    C = np.asarray(centroids, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] == 0:
        return out
    valid = (labels >= 0) & (labels < C.shape[0])
    if labels.max(initial=-1) >= C.shape[0]:
        raise ValueError(f"label {labels.max()} has no centroid ({C.shape[0]} centroids)")
    ux = _unit_rows(X[valid])
    uc = _unit_rows(C)[labels[valid]]
    out[valid] = 1.0 - np.clip(np.einsum("ij,ij->i", ux, uc), -1.0, 1.0)
    return out


def top_terms(
    texts_by_cluster: Mapping[int, Sequence[str]], n: int = 8
) -> dict[int, list[tuple[str, float]]]:
    """Class-based TF-IDF (BERTopic's c-TF-IDF) top terms per cluster.

    All texts of a cluster form one document. Counts of unigrams and bigrams (English stop words removed,
    lower-cased) are normalised per class (``tf``); ``idf = log(1 + A / f_t)`` with ``A`` the average
    number of words per class and ``f_t`` the frequency of term t across all classes. Returns the ``n``
    best ``(term, score)`` per cluster (ties alphabetical); clusters without usable text get ``[]``.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    keys = list(texts_by_cluster)
    out: dict[int, list[tuple[str, float]]] = {c: [] for c in keys}
    docs = [" ".join(t for t in texts_by_cluster[c] if isinstance(t, str)) for c in keys]
    if not keys or not any(d.strip() for d in docs):
        return out
    vectorizer = CountVectorizer(stop_words="english", ngram_range=(1, 2), lowercase=True)
    try:
        counts = vectorizer.fit_transform(docs).astype(np.float64)
    except ValueError:  # empty vocabulary: only stop words / one-letter tokens
        return out
    counts = counts.tocsr()  # (classes, terms), sparse: the bigram vocabulary can be large
    terms = vectorizer.get_feature_names_out()
    words_per_class = np.asarray(counts.sum(axis=1)).ravel()
    avg_words = float(words_per_class.mean())
    term_freq = np.asarray(counts.sum(axis=0)).ravel()
    idf = np.log(1.0 + avg_words / np.where(term_freq > 0, term_freq, 1.0))
    for row, c in enumerate(keys):
        lo, hi = counts.indptr[row], counts.indptr[row + 1]
        cols = counts.indices[lo:hi]
        if cols.size == 0:
            continue
        scores = counts.data[lo:hi] / words_per_class[row] * idf[cols]
        ranked = sorted(range(cols.size), key=lambda j: (-scores[j], terms[cols[j]]))[:n]
        out[c] = [(str(terms[cols[j]]), float(scores[j])) for j in ranked if scores[j] > 0]
    return out


def label_summary(labels: np.ndarray, truth: Sequence[str | None]) -> dict[int, dict[str, int]]:
    """Per cluster id (outliers -1 included when present), counts of truth labels, most common first.

    Missing truth values (None, NaN, blank) are not counted; a cluster with no labelled member maps to ``{}``.
    """
    labels = np.asarray(labels)
    if len(truth) != labels.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels but {len(truth)} truth values")
    counters: dict[int, Counter[str]] = {int(c): Counter() for c in np.unique(labels)}
    for lab, t in zip(labels.tolist(), truth, strict=True):
        if not is_missing_label(t):
            counters[int(lab)][str(t)] += 1
    return {
        c: dict(sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))) for c, cnt in sorted(counters.items())
    }
