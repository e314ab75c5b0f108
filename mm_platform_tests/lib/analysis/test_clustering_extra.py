"""Tests for DBSCAN, the outlier policy and fitting on a sample in mm_platform.lib.analysis.clustering."""

from __future__ import annotations

import numpy as np
import pytest

from mm_platform.lib.analysis.clustering import (
    ClusterResult,
    apply_outlier_policy,
    dbscan_cluster,
    external_scores,
    fit_on_sample,
    hdbscan_cluster,
    kmeans_auto,
)


def _planted(
    sizes: tuple[int, ...] = (300, 200, 120), noise: int = 60, d: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Tight groups around random directions on the unit sphere, plus uniformly scattered noise (truth -1)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    parts = [centres[i] + 0.08 * rng.normal(size=(m, d)) for i, m in enumerate(sizes)]
    parts.append(rng.normal(size=(noise, d)))
    X = np.concatenate(parts)
    y = np.concatenate([np.full(m, i) for i, m in enumerate(sizes)] + [np.full(noise, -1)])
    perm = rng.permutation(X.shape[0])
    return X[perm] * rng.uniform(0.5, 3.0, size=(X.shape[0], 1))[perm], y[perm]


def _truth(y: np.ndarray) -> list[str]:
    return [str(v) for v in y]


# -- DBSCAN ------------------------------------------------------------------------------------------------


def test_dbscan_auto_eps_finds_planted_clusters_and_noise() -> None:
    X, y = _planted()
    res = dbscan_cluster(X)
    assert isinstance(res, ClusterResult) and res.algorithm == "dbscan"
    assert res.k == 3 == res.params["chosen_k"]
    assert res.params["eps_method"] == "knee" and 0 < res.params["eps"] < 0.5
    assert external_scores(res.labels, _truth(y))["ari"] == pytest.approx(1.0)
    assert np.all(res.labels[y == -1] == -1) and np.all(res.labels[y >= 0] >= 0)
    assert res.n_outliers == 60 and res.params["noise_fraction"] == pytest.approx(60 / 680, abs=1e-4)
    assert list(np.bincount(res.labels[res.labels >= 0])) == [300, 200, 120]  # ids by decreasing size
    assert res.silhouette is not None and res.silhouette > 0.8
    assert res.centroids is not None and res.centroids.shape == (3, 16)


def test_dbscan_given_eps_reproducible_and_degenerate() -> None:
    X, y = _planted(seed=1)
    a = dbscan_cluster(X, eps=0.1, min_samples=4, seed=3)
    b = dbscan_cluster(X, eps=0.1, min_samples=4, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.params["eps_method"] == "given" and a.params["eps"] == 0.1
    assert external_scores(a.labels, _truth(y))["ari"] > 0.99
    np.testing.assert_array_equal(dbscan_cluster(X, seed=7).labels, dbscan_cluster(X, seed=7).labels)
    tiny = dbscan_cluster(X[:3], min_samples=5)
    assert tiny.k == 0 and tiny.n_outliers == 3 and tiny.params["degenerate"] == "too few rows"
    same = dbscan_cluster(np.ones((10, 4)))  # duplicate rows: eps floored, one cluster
    assert same.k == 1 and same.n_outliers == 0
    with pytest.raises(ValueError, match="min_samples"):
        dbscan_cluster(X, min_samples=0)
    with pytest.raises(ValueError, match="eps"):
        dbscan_cluster(X, eps=0.0)


# -- outlier policy ---------------------------------------------------------------------------------------


def test_outlier_policy_keep_and_nearest() -> None:
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [2.0, 0.3], [0.2, 5.0]])
    labels = np.array([0, 0, 1, 1, -1, -1])
    kept, flags = apply_outlier_policy(labels, X, "keep")
    np.testing.assert_array_equal(kept, labels)
    np.testing.assert_array_equal(flags, [False, False, False, False, True, True])
    near, flags2 = apply_outlier_policy(labels, X, "nearest")
    np.testing.assert_array_equal(near, [0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(flags2, flags)
    assert labels[4] == -1  # input untouched
    none, flags3 = apply_outlier_policy(np.full(3, -1), X[:3], "nearest")  # no cluster to join
    np.testing.assert_array_equal(none, [-1, -1, -1])
    assert flags3.all()
    with pytest.raises(ValueError, match="unknown outlier policy"):
        apply_outlier_policy(labels, X, "drop")
    with pytest.raises(ValueError, match="labels for"):
        apply_outlier_policy(labels[:3], X, "keep")


def test_outlier_policy_nearest_on_dbscan_result() -> None:
    X, y = _planted(seed=2)
    res = dbscan_cluster(X)
    labels, flags = apply_outlier_policy(res.labels, X, "nearest")
    assert (labels >= 0).all() and flags.sum() == res.n_outliers
    np.testing.assert_array_equal(labels[~flags], res.labels[~flags])


# -- fit_on_sample ------------------------------------------------------------------------------------------


def test_fit_on_sample_kmeans_matches_full_fit() -> None:
    X, y = _planted(sizes=(1500, 1000, 700), noise=0, seed=3)
    full = kmeans_auto(X, k=3, seed=0)
    sampled = fit_on_sample(X, lambda Z: kmeans_auto(Z, k=3, seed=0), sample_size=600, seed=0)
    assert sampled.algorithm == "kmeans" and sampled.k == 3
    assert sampled.params["fitted_on_sample"] is True and sampled.params["fit_sample_size"] == 600
    assert sampled.params["assignment"] == "nearest_centroid" and sampled.params["n"] == 3200
    assert external_scores(sampled.labels, _truth(full.labels))["ari"] > 0.99
    assert list(np.bincount(sampled.labels)) == sorted(np.bincount(sampled.labels), reverse=True)
    assert sampled.centroids is not None and sampled.centroids.shape == (3, 16)
    again = fit_on_sample(X, lambda Z: kmeans_auto(Z, k=3, seed=0), sample_size=600, seed=0)
    np.testing.assert_array_equal(again.labels, sampled.labels)


def test_fit_on_sample_density_keeps_noise_out() -> None:
    X, y = _planted(sizes=(1200, 800, 500), noise=300, seed=4)
    full = dbscan_cluster(X)
    sampled = fit_on_sample(X, lambda Z: dbscan_cluster(Z), sample_size=900, seed=1)
    assert sampled.params["assignment"] == "nearest_centroid_within_radius"
    assert sampled.k == full.k == 3
    assert external_scores(sampled.labels, _truth(full.labels))["ari"] > 0.95
    assert np.mean(sampled.labels[y == -1] == -1) > 0.95  # far rows stay noise
    assert sampled.params["noise_fraction"] == pytest.approx(np.mean(sampled.labels == -1), abs=1e-4)
    assert sampled.params["assigned_noise"] > 0
    U = X / np.linalg.norm(X, axis=1, keepdims=True)  # HDBSCAN runs Euclidean: give it unit rows
    hd = fit_on_sample(U, lambda Z: hdbscan_cluster(Z, min_cluster_size=20), sample_size=900, seed=1)
    assert hd.algorithm == "hdbscan" and external_scores(hd.labels, _truth(y))["ari"] > 0.9


def test_fit_on_sample_below_threshold_and_errors() -> None:
    X, _ = _planted(seed=5)
    direct = kmeans_auto(X, k=3)
    res = fit_on_sample(X, lambda Z: kmeans_auto(Z, k=3), sample_size=10_000)
    np.testing.assert_array_equal(res.labels, direct.labels)
    assert res.params["fitted_on_sample"] is False
    with pytest.raises(ValueError, match="sample_size"):
        fit_on_sample(X, lambda Z: kmeans_auto(Z, k=3), sample_size=1)

    def broken(Z: np.ndarray) -> ClusterResult:
        return ClusterResult(labels=np.zeros(3, dtype=np.int64), algorithm="kmeans", k=1)

    with pytest.raises(ValueError, match="labels for a sample"):
        fit_on_sample(X, broken, sample_size=100)
