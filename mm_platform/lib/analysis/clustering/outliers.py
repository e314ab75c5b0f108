"""Folding outliers into the nearest cluster and extending a clustering fitted on a sample to all rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mm_platform.lib.analysis.clustering.base import (
    ClusterResult,
    _as_matrix,
    _cosine_silhouette,
    _means,
    _relabel_by_size,
    _sample_index,
    _unit_rows,
)
from mm_platform.lib.analysis.clustering.density import DENSITY_ALGORITHMS, OUTLIER_POLICIES


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


def _assign_within_radius(
    X: np.ndarray, idx: np.ndarray, rest: np.ndarray, fit_labels: np.ndarray, id_arr: np.ndarray, labels: np.ndarray
) -> int:
    """Set ``labels[rest]`` to the cluster (of ``id_arr``) of the most cosine-similar unit centroid of the sampled
    rows ``idx``, or -1 beyond that cluster's radius; returns how many rows were left as noise."""
    ids = [int(c) for c in id_arr]
    U = _unit_rows(X)
    U_fit = U[idx]
    C = _unit_centroids(U_fit, fit_labels, ids)
    radius = np.array(
        [float(np.max(1.0 - U_fit[fit_labels == c] @ C[j])) for j, c in enumerate(ids)]
    )
    assigned_noise = 0
    for start in range(0, rest.size, 65536):
        block = rest[start : start + 65536]
        sims = U[block] @ C.T
        best = np.argmax(sims, axis=1)
        dist = 1.0 - sims[np.arange(block.size), best]
        ok = dist <= radius[best] + 1e-9
        labels[block] = np.where(ok, id_arr[best], -1)
        assigned_noise += int(np.sum(~ok))
    return assigned_noise


def _assign_nearest(X: np.ndarray, rest: np.ndarray, fitted: np.ndarray, id_arr: np.ndarray, labels: np.ndarray) -> None:
    """Set ``labels[rest]`` to the id (of ``id_arr``) of the nearest fitted centroid, Euclidean as ``KMeans.predict``."""
    sel = fitted[id_arr]
    c_sq = (sel**2).sum(axis=1)
    for start in range(0, rest.size, 65536):
        block = rest[start : start + 65536]
        d = c_sq[None, :] - 2.0 * X[block] @ sel.T
        labels[block] = id_arr[np.argmin(d, axis=1)]


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
            assigned_noise = _assign_within_radius(X, idx, rest, fit_labels, id_arr, labels)
        else:
            assignment = "nearest_centroid"
            fitted = np.asarray(res.centroids) if res.centroids is not None else None
            if fitted is None or fitted.ndim != 2 or fitted.shape != (max(ids) + 1, X.shape[1]):
                fitted = _means(X[idx], fit_labels, max(ids) + 1)
            centers = fitted
            _assign_nearest(X, rest, fitted, id_arr, labels)
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
