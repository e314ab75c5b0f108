"""Tests for mm_platform.lib.analysis.clustering.stability: stable ids across re-clusterings and incremental assignment."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from mm_platform.lib.analysis.clustering.stability import (
    ClusterModel,
    IdMapping,
    apply_mapping,
    build_model,
    centroids_of,
    fit_projection,
    match_cluster_ids,
)
from mm_platform.lib.analysis.clustering import kmeans_auto, reduce_dimensions

D = 24
N_CENTRES = 5


@pytest.fixture(scope="module")
def centres() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.uniform(-10.0, 10.0, size=(N_CENTRES, D))


def _blobs(centres: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=n, centers=centres, cluster_std=1.0, random_state=seed)
    return X.astype(np.float32), y


def _ids(n: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# -- match_cluster_ids ---------------------------------------------------------------------------------


def test_permuted_labels_keep_every_stable_id() -> None:
    rng = np.random.default_rng(0)
    old_labels = rng.integers(0, 6, size=300)
    old_stable = old_labels + 10  # stable ids need not be 0..k-1
    ids = _ids(300)
    previous = dict(zip(ids, old_stable.tolist(), strict=True))
    perm = np.array([3, 5, 0, 1, 4, 2])
    new_labels = perm[old_labels]
    m = match_cluster_ids(previous, ids, new_labels)
    np.testing.assert_array_equal(apply_mapping(new_labels, m), old_stable)
    assert m.moved == 0 and m.moved_fraction == 0.0
    assert m.common == 300 and m.matched == 6
    assert m.new_ids == [] and m.retired_ids == []


def test_empty_previous_is_identity() -> None:
    labels = np.array([2, 0, 1, -1, 0, 2])
    m = match_cluster_ids({}, _ids(6), labels)
    assert m.new_to_stable == {-1: -1, 0: 0, 1: 1, 2: 2}
    assert m.new_ids == [0, 1, 2] and m.matched == 0 and m.common == 0 and m.moved_fraction == 0.0
    np.testing.assert_array_equal(apply_mapping(labels, m), labels)


def test_split_keeps_one_half_and_creates_fresh_id() -> None:
    ids = _ids(200)
    previous = {r: (3 if i < 100 else 7) for i, r in enumerate(ids)}
    new_labels = np.array([0] * 60 + [1] * 40 + [2] * 100)
    m = match_cluster_ids(previous, ids, new_labels)
    assert m.new_to_stable[0] == 3  # larger half keeps the old id
    assert m.new_to_stable[2] == 7
    assert m.new_to_stable[1] >= 8 and m.new_ids == [m.new_to_stable[1]]
    assert m.moved == 40 and m.common == 200 and m.matched == 2
    assert m.retired_ids == []


def test_merge_keeps_larger_overlap_and_retires_other() -> None:
    ids = _ids(200)
    previous = {r: (0 if i < 60 else 1 if i < 100 else 2) for i, r in enumerate(ids)}
    new_labels = np.array([0] * 100 + [1] * 100)
    m = match_cluster_ids(previous, ids, new_labels)
    assert m.new_to_stable == {0: 0, 1: 2}
    assert m.retired_ids == [1] and m.new_ids == []
    assert m.moved == 40 and m.moved_fraction == pytest.approx(0.2)


def test_zero_overlap_is_not_a_match_and_new_records_get_fresh_cluster() -> None:
    old_ids = _ids(100)
    previous = {r: (0 if i < 50 else 1) for i, r in enumerate(old_ids)}
    # new cluster 0 = old cluster 0 + old cluster 1's first 10, cluster 1 = only brand-new records
    ids = old_ids[:60] + _ids(30, "n")
    new_labels = np.array([0] * 60 + [1] * 30)
    m = match_cluster_ids(previous, ids, new_labels)
    assert m.new_to_stable == {0: 0, 1: 2}  # Hungarian may pair 1 with old id 1 (overlap 0): not a match
    assert m.matched == 1 and m.new_ids == [2] and m.retired_ids == [1]
    assert m.common == 60 and m.moved == 10


def test_outliers_map_to_minus_one_and_are_ignored_in_matching() -> None:
    ids = _ids(40)
    previous = {r: (-1 if i < 10 else 4) for i, r in enumerate(ids)}
    new_labels = np.array([-1] * 5 + [0] * 35)
    m = match_cluster_ids(previous, ids, new_labels)
    assert m.new_to_stable == {-1: -1, 0: 4}
    stable = apply_mapping(new_labels, m)
    assert (stable[:5] == -1).all() and (stable[5:] == 4).all()
    assert m.moved == 5  # records 5..9 left the outliers
    assert m.retired_ids == [] and m.new_ids == []


def test_matching_is_deterministic_on_ties() -> None:
    ids = _ids(40)
    previous = {r: (i // 10) for i, r in enumerate(ids)}  # old ids 0..3, 10 records each
    new_labels = np.array([(i // 20) for i in range(40)])  # each new cluster covers two old ones equally
    results = [match_cluster_ids(previous, ids, new_labels).new_to_stable for _ in range(3)]
    assert results[0] == results[1] == results[2]
    assert results[0][0] in (0, 1) and results[0][1] in (2, 3)


def test_match_validates_inputs() -> None:
    with pytest.raises(ValueError):
        match_cluster_ids({"a": 0}, ["a", "b"], np.array([0]))
    with pytest.raises(ValueError):
        match_cluster_ids({"a": 0}, ["a", "a"], np.array([0, 0]))
    with pytest.raises(ValueError):
        match_cluster_ids({"a": 0}, ["a"], np.array([-2]))
    with pytest.raises(ValueError):
        apply_mapping(np.array([0, 5]), IdMapping({0: 0}, 0, 0, 0, [], []))


def test_grown_dataset_keeps_ids(centres: np.ndarray) -> None:
    X_old, _ = _blobs(centres, 500, seed=1)
    X_add, _ = _blobs(centres, 100, seed=2)  # +20 % from the same centres
    first = kmeans_auto(X_old, k_max=7, seed=0)
    assert first.k == N_CENTRES
    old_ids = _ids(500)
    previous = dict(zip(old_ids, first.labels.tolist(), strict=True))  # first run: stable ids = labels

    X_all = np.vstack([X_old, X_add])
    all_ids = old_ids + _ids(100, "n")
    second = kmeans_auto(X_all, k_max=7, seed=5)
    m = match_cluster_ids(previous, all_ids, second.labels)
    stable = apply_mapping(second.labels, m)

    kept = np.mean(stable[:500] == first.labels)
    assert kept >= 0.95
    assert m.moved_fraction <= 0.05 and m.common == 500
    assert set(stable[500:].tolist()) <= set(first.labels.tolist())
    assert m.new_ids == [] and m.retired_ids == []


# -- ClusterModel --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(centres: np.ndarray):  # type: ignore[no-untyped-def]
    X, y = _blobs(centres, 600, seed=3)
    mean, comps, Z = fit_projection(X, dim=8, seed=0)
    res = kmeans_auto(Z, k=N_CENTRES, seed=0)
    stable = res.labels + 100  # pretend these are stable ids from a mapping
    ids, C = centroids_of(Z, stable)
    model = ClusterModel(
        run_id="run-1",
        algorithm=res.algorithm,
        cluster_ids=ids,
        centroids=C,
        pca_mean=mean,
        pca_components=comps,
        input_dim=D,
    )
    return X, y, Z, stable, model


def test_fit_projection_matches_reduce_dimensions(centres: np.ndarray) -> None:
    X, _ = _blobs(centres, 300, seed=4)
    for dim, sample in ((8, 20000), (5, 120)):
        mean, comps, Z = fit_projection(X, dim=dim, seed=3, sample_size=sample)
        Z_ref, info = reduce_dimensions(X, dim, seed=3, sample_size=sample)
        assert info["reduction"] == f"pca{dim}"
        assert mean is not None and comps is not None
        assert mean.shape == (D,) and comps.shape == (dim, D) and Z.dtype == np.float32
        assert np.allclose(Z, Z_ref, atol=1e-5)
    mean, comps, Z = fit_projection(X, dim=0)
    assert mean is None and comps is None
    assert np.allclose(Z, reduce_dimensions(X, 0)[0], atol=1e-6)
    assert np.allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-5)


def test_project_reproduces_fit_time_rows(fitted) -> None:  # type: ignore[no-untyped-def]
    X, _, Z, _, model = fitted
    assert np.allclose(model.project(X), Z, atol=1e-4)
    assert model.output_dim == 8 and model.k == N_CENTRES


def test_centroids_of_excludes_outliers() -> None:
    Z = np.array([[1.0, 0.0], [1.0, 0.2], [0.0, 3.0], [5.0, 5.0]])
    ids, C = centroids_of(Z, np.array([4, 4, 1, -1]))
    np.testing.assert_array_equal(ids, [1, 4])
    assert np.allclose(C[0], [0.0, 1.0])
    assert np.allclose(C[1], np.array([2.0, 0.2]) / np.linalg.norm([2.0, 0.2]), atol=1e-6)
    ids, C = centroids_of(Z, np.full(4, -1))
    assert ids.shape == (0,) and C.shape == (0, 2)


def test_assign_training_points_reproduces_kmeans(fitted) -> None:  # type: ignore[no-untyped-def]
    X, _, _, stable, model = fitted
    got, dist = model.assign(X)
    assert np.mean(got == stable) >= 0.99
    assert dist.shape == (X.shape[0],) and (dist >= 0).all() and (dist <= 2).all()


def test_new_points_near_a_centre_get_its_id(fitted, centres: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    _, y, _, stable, model = fitted
    id_of_centre = {c: int(np.bincount(stable[y == c]).argmax()) for c in range(N_CENTRES)}
    X_new, y_new = _blobs(centres, 100, seed=9)
    got, _ = model.assign(X_new)
    expected = np.array([id_of_centre[c] for c in y_new])
    assert np.mean(got == expected) >= 0.99
    one, _ = model.assign(centres[2])  # a single 1-D vector
    assert one.tolist() == [id_of_centre[2]]


def test_max_distance_marks_far_points(fitted) -> None:  # type: ignore[no-untyped-def]
    X, _, _, stable, model = fitted
    # a vector whose projection is orthogonal to every centroid: cosine distance 1 to all of them
    _, _, vt = np.linalg.svd(model.centroids.astype(np.float64))
    v = vt[-1]  # 8 dims, 5 centroids -> null space exists
    assert model.pca_mean is not None and model.pca_components is not None
    far = model.pca_mean + 10.0 * v @ model.pca_components
    strict = ClusterModel(
        run_id="run-1",
        algorithm="kmeans",
        cluster_ids=model.cluster_ids,
        centroids=model.centroids,
        pca_mean=model.pca_mean,
        pca_components=model.pca_components,
        input_dim=D,
        max_distance=0.5,
    )
    ids, dist = strict.assign(np.vstack([X[:20], far[None, :]]))
    assert dist[-1] == pytest.approx(1.0, abs=1e-3)
    assert ids[-1] == -1
    np.testing.assert_array_equal(ids[:20], stable[:20])
    loose_ids, _ = model.assign(far[None, :])
    assert loose_ids[0] != -1  # no threshold: always assigned


def test_build_model_distance_quantile(fitted) -> None:  # type: ignore[no-untyped-def]
    X, _, Z, stable, model = fitted
    built = build_model(
        "run-1", "kmeans", Z, stable, model.pca_mean, model.pca_components, D, distance_quantile=0.9
    )
    np.testing.assert_array_equal(built.cluster_ids, model.cluster_ids)
    assert built.max_distance is not None and 0.0 < built.max_distance < 0.5
    ids, _ = built.assign(X)
    assert 0.05 <= np.mean(ids == -1) <= 0.2


def test_wrong_input_dim_raises(fitted) -> None:  # type: ignore[no-untyped-def]
    _, _, _, _, model = fitted
    with pytest.raises(ValueError):
        model.assign(np.zeros((3, D + 1), dtype=np.float32))
    with pytest.raises(ValueError):
        model.project(np.zeros((3, D - 1), dtype=np.float32))


def test_model_validation() -> None:
    with pytest.raises(ValueError):
        ClusterModel("r", "kmeans", np.array([0, 0]), np.eye(2), None, None, input_dim=2)
    with pytest.raises(ValueError):
        ClusterModel("r", "spectral", np.array([0]), np.ones((1, 2)), None, None, input_dim=2)
    with pytest.raises(ValueError):
        ClusterModel("r", "kmeans", np.array([0]), np.ones((1, 3)), None, None, input_dim=2)
    empty = ClusterModel("r", "hdbscan", np.array([], dtype=np.int64), np.zeros((0, 2)), None, None, 2)
    ids, dist = empty.assign(np.ones((2, 2)))
    assert ids.tolist() == [-1, -1] and np.isnan(dist).all()


def test_unreduced_model(centres: np.ndarray) -> None:
    X, y = _blobs(centres, 200, seed=5)
    mean, comps, Z = fit_projection(X, dim=0)
    ids, C = centroids_of(Z, y)
    model = ClusterModel("r", "hdbscan", ids, C, mean, comps, input_dim=D)
    got, _ = model.assign(X)
    assert np.mean(got == y) >= 0.99


def test_save_load_round_trip_without_pickle(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    X, _, _, _, base = fitted
    model = dataclasses.replace(base, max_distance=0.3)  # the fixture is shared: do not mutate it
    path = tmp_path / "models" / "run-1.clusters"
    model.save(path)
    assert path.exists() and sorted(p.name for p in path.parent.iterdir()) == ["run-1.clusters"]

    with np.load(path, allow_pickle=False) as data:  # would raise on any object array
        assert set(data.files) == {"metadata", "cluster_ids", "centroids", "pca_mean", "pca_components"}
        assert all(data[name].dtype != object for name in data.files)
    with zipfile.ZipFile(path) as zf:
        assert all(name.endswith(".npy") for name in zf.namelist())

    loaded = ClusterModel.load(path)
    assert loaded.run_id == "run-1" and loaded.algorithm == model.algorithm
    assert loaded.input_dim == D and loaded.max_distance == 0.3
    for name in ("cluster_ids", "centroids", "pca_mean", "pca_components"):
        a, b = getattr(model, name), getattr(loaded, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    ids_a, d_a = model.assign(X)
    ids_b, d_b = loaded.assign(X)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(d_a, d_b)

    model.save(path)  # overwrite in place, still a single file
    assert len(list(path.parent.iterdir())) == 1


def test_save_load_unreduced_and_reject_foreign_files(tmp_path: Path) -> None:
    model = ClusterModel("r2", "hdbscan", np.array([3, 9]), np.eye(2, 4), None, None, input_dim=4)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = ClusterModel.load(path)
    assert loaded.pca_mean is None and loaded.pca_components is None and loaded.max_distance is None
    np.testing.assert_array_equal(loaded.cluster_ids, [3, 9])

    bad = tmp_path / "bad.npz"
    np.savez(bad, cluster_ids=np.array([0]), centroids=np.ones((1, 2)))
    with pytest.raises(ValueError):
        ClusterModel.load(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        ClusterModel.load(junk)
