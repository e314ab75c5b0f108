"""The stored map projection: fitted once per re-cluster, new records placed against it, old ones untouched."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA

from mm_platform.lib.analysis.map_projection import (
    FORMAT,
    fit_map_projection,
    load_projection,
    save_projection,
    state_dir,
    update_map,
)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=600, centers=4, n_features=24, cluster_std=0.8, random_state=3)
    return X.astype(np.float32), y


def _unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_pca_equals_sklearn_up_to_sign_and_is_deterministic(blobs):
    X, _ = blobs
    proj, coords = fit_map_projection(X, "pca")
    ref = PCA(n_components=2, svd_solver="full").fit_transform(_unit(X.astype(np.float64)))
    for j in range(2):
        sign = np.sign(np.dot(coords[:, j], ref[:, j]))
        np.testing.assert_allclose(coords[:, j] * sign, ref[:, j], atol=1e-4)
    np.testing.assert_array_equal(coords, fit_map_projection(X, "pca")[1])
    np.testing.assert_allclose(proj.transform(X[:50]), coords[:50], atol=1e-6)


def test_pca_on_a_sample_places_the_rest(blobs):
    X, y = blobs
    proj, coords = fit_map_projection(X, "pca", fit_sample=200, seed=1)
    assert proj.fitted_rows == 200 and coords.shape == (600, 2)
    # clusters stay apart on a projection fitted from a third of the rows
    centres = np.stack([coords[y == c].mean(axis=0) for c in range(4)])
    nearest = ((coords[:, None] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert np.mean(nearest == y) > 0.9


def test_tsne_keeps_sample_coords_and_places_new_rows_near_their_cluster(blobs):
    X, y = blobs
    proj, coords = fit_map_projection(X[:400], "tsne", tsne_sample=150, seed=0)
    assert proj.method == "tsne" and proj.sample_unit.shape == (150, 24)
    new = proj.transform(X[400:])
    centres = np.stack([coords[y[:400] == c].mean(axis=0) for c in range(4)])
    nearest = ((new[:, None] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert np.mean(nearest == y[400:]) > 0.9


def test_save_load_round_trip_and_bad_state(tmp_path, blobs):
    X, _ = blobs
    assert load_projection(tmp_path) is None
    for method in ("pca", "tsne"):
        proj, _ = fit_map_projection(X[:100], method, tsne_sample=60, run_id="r1", space="early:x")
        save_projection(tmp_path, proj)
        back = load_projection(tmp_path)
        assert back is not None and back.fit_id == proj.fit_id and back.matches(method, 24, "r1", "early:x")
        np.testing.assert_array_equal(back.transform(X[100:130]), proj.transform(X[100:130]))
    assert len(list(state_dir(tmp_path).glob("projection-*.npz"))) == 2  # older fits are pruned
    current = load_projection(tmp_path)
    path = state_dir(tmp_path) / f"projection-{current.fit_id}.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(path, **{**arrays, "meta": np.array(str(arrays["meta"]).replace(FORMAT, "mm-map-projection/999"))})
    assert load_projection(tmp_path) is None  # a format this version does not know: refit
    for f in state_dir(tmp_path).glob("projection-*.npz"):
        f.write_bytes(b"not a zip")
    assert load_projection(tmp_path) is None  # damaged: refit, never crash


def test_wrong_dimension_and_bad_inputs_are_refused(blobs):
    X, _ = blobs
    proj, _ = fit_map_projection(X, "pca")
    with pytest.raises(ValueError, match="24 dims"):
        proj.transform(np.ones((3, 5)))
    with pytest.raises(ValueError, match="unknown projection method"):
        fit_map_projection(X, "umap")
    with pytest.raises(ValueError, match="NaN"):
        proj.transform(np.full((2, 24), np.nan))


class Corpus:
    """Batches of vectors, read the way the asset reads them; counts what was read."""

    def __init__(self, X: np.ndarray, batches: dict[str, range], space: str = "early:t=1"):
        self.X, self.batches, self.space, self.reads = X, dict(batches), space, []

    def current(self) -> pl.DataFrame:
        rows = [(f"r{i:04d}", b) for b, rng in self.batches.items() for i in rng]
        return pl.DataFrame(rows, schema=["record_id", "batch_id"], orient="row")

    def read_batch(self, b: str):
        self.reads.append(b)
        rng = self.batches[b]
        return [f"r{i:04d}" for i in rng], [b] * len(rng), self.X[list(rng)], self.space


def _update(corpus: Corpus, previous: pl.DataFrame, proj, run_id: str | None, method: str = "pca"):
    return update_map(previous, corpus.current(), method=method, run_id=run_id, seed=0, projection=proj,
                      read_batch=corpus.read_batch)


def test_batch_refresh_places_only_new_records_and_keeps_old_coordinates(blobs):
    X, _ = blobs
    corpus = Corpus(X, {"b0": range(0, 300), "b1": range(300, 400)})
    first = _update(corpus, pl.DataFrame(), None, "run1")
    assert first.refit and first.reason == "no stored projection" and first.frame.height == 400
    assert corpus.reads == ["b0", "b1", "b0", "b1"]  # a refit reads batch by batch: sample, then place
    # the refit is the same map as a fit on every row at once (the sample holds every row here)
    _, whole = fit_map_projection(X[:400], "pca")
    np.testing.assert_allclose(first.frame.sort("record_id").select("x", "y").to_numpy(), whole, atol=1e-5)
    # a new batch arrives: only its vectors are read, old rows keep their exact coordinates
    corpus.batches["b2"] = range(400, 450)
    corpus.reads.clear()
    second = _update(corpus, first.frame, first.projection, "run1")
    assert not second.refit and (second.placed, second.kept) == (50, 400)
    assert corpus.reads == ["b2"]
    old = second.frame.join(first.frame, on=["record_id", "batch_id"], suffix="_before")
    assert old.height == 400 and (old["x"] == old["x_before"]).all() and (old["y"] == old["y_before"]).all()
    new = second.frame.filter(pl.col("batch_id") == "b2").sort("record_id")
    np.testing.assert_allclose(new.select("x", "y").to_numpy(), first.projection.transform(X[400:450]), atol=1e-6)
    # a refresh with nothing new reads no vectors
    corpus.reads.clear()
    assert _update(corpus, second.frame, first.projection, "run1").placed == 0 and corpus.reads == []


def test_new_versions_are_replaced_and_deleted_records_dropped(blobs):
    X, _ = blobs
    corpus = Corpus(X, {"b0": range(0, 200), "b1": range(200, 300)})
    first = _update(corpus, pl.DataFrame(), None, "run1")
    # b1's records re-sent in b2 (new versions); records 0..9 deleted
    corpus.batches = {"b0": range(10, 200), "b2": range(200, 300)}
    corpus.reads.clear()
    second = _update(corpus, first.frame, first.projection, "run1")
    assert corpus.reads == ["b2"] and second.placed == 100 and second.kept == 190
    assert second.frame.height == 290 and set(second.frame["batch_id"]) == {"b0", "b2"}
    assert second.frame["record_id"].is_unique().all()


def test_refit_on_a_sample_drawn_batch_by_batch(blobs):
    X, y = blobs
    corpus = Corpus(X, {f"b{i}": range(i * 100, (i + 1) * 100) for i in range(6)})
    for method in ("pca", "tsne"):
        up = update_map(pl.DataFrame(), corpus.current(), method=method, run_id="r", seed=0, projection=None,
                        read_batch=corpus.read_batch, fit_sample=150, tsne_sample=120)
        assert up.refit and up.projection.method == method and up.frame.height == 600
        assert up.projection.fitted_rows <= 200  # a sample, not every row
        coords = up.frame.sort("record_id").select("x", "y").to_numpy()
        centres = np.stack([coords[y == c].mean(axis=0) for c in range(4)])
        nearest = ((coords[:, None] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        assert np.mean(nearest == y) > 0.9
    # current records in batches of different dimensions (a model changed, old batches not re-run): clear error
    def mixed(b):
        return ["r0000", "r0001"], [b, b], np.ones((2, 3 if b == "b0" else 4)), "s"

    cur2 = pl.DataFrame({"record_id": ["r0000", "r0001", "r0000", "r0001"], "batch_id": ["b0", "b0", "b1", "b1"]})
    with pytest.raises(ValueError, match="dims"):
        update_map(pl.DataFrame(), cur2, method="pca", run_id=None, seed=0, projection=None, read_batch=mixed)


def test_refit_only_after_a_recluster_or_a_changed_setting(blobs):
    X, _ = blobs
    corpus = Corpus(X, {"b0": range(0, 300)})
    first = _update(corpus, pl.DataFrame(), None, "run1")
    again = _update(corpus, first.frame, first.projection, "run1")
    assert not again.refit
    recluster = _update(corpus, first.frame, first.projection, "run2")
    assert recluster.refit and "new cluster run run2" in recluster.reason
    assert set(recluster.frame["run_id"]) == {"run2"} and recluster.projection.run_id == "run2"
    tsne = _update(corpus, first.frame, first.projection, "run1", method="tsne")
    assert tsne.refit and "method changed" in tsne.reason
    # a batch in another space (e.g. the fusion weights changed) cannot be placed: refit
    corpus.batches["b1"] = range(300, 320)
    corpus.space = "early:t=2"
    moved = _update(corpus, first.frame, first.projection, "run1")
    assert moved.refit and "another space" in moved.reason and set(moved.frame["space"]) == {"early:t=2"}
    # stored rows from another fit (a crash between the projection and the table): refit
    corpus.space = "early:t=1"
    del corpus.batches["b1"]
    stale = first.frame.with_columns(pl.lit("run0").alias("run_id"))
    assert _update(corpus, stale, first.projection, "run1").refit
