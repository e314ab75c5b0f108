"""What a batch writes to Qdrant and to its ledger tables (``lib/vectors/points.py``, ``lib/vectors/batch_vectors.py``), on a
small real lake where a later batch supersedes one record and deletes another."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mm_platform.lib.vectors.batch_vectors import embedding_matrix, modality_dims
from mm_platform.lib.storage.lake import ALL_TABLES
from mm_platform.lib.storage.qdrant import DIRTY_SUFFIX, PointData, QdrantStore, point_id
from mm_platform.lib.vectors.points import (
    batch_frame,
    build_points,
    lake_restore,
    ledger_frame,
    plan_points,
    vector_dims,
)
from mm_platform.lib.arrays import matrix_series
from mm_platform_tests.lib.analysis.test_recluster import LANDED, _frame, _lake

NOW = datetime(2024, 3, 2, tzinfo=UTC)


def _second_batch(lake, fused_dim: int = 8) -> None:
    """b2, landed later: a new version of r00 and a delete of r01."""
    later = LANDED + timedelta(hours=1)
    lake.write_partition("raw_records", "b2", _frame("raw_records", {
        "record_id": ["r00", "r01"], "batch_id": ["b2", "b2"], "line_number": [1, 2], "op": ["upsert", "delete"],
        "landed_at": [later, later], "ingested_at": [later, later], "text": ["new text", None]}))
    lake.write_partition("aligned_records", "b2", _frame("aligned_records", {
        "record_id": ["r00"], "batch_id": ["b2"], "line_number": [1], "has_text": [True]}))
    vec = matrix_series(np.eye(1, 8, dtype=np.float32))
    lake.write_partition("text_embeddings", "b2", _frame("text_embeddings", {
        "record_id": ["r00"], "batch_id": ["b2"], "model": ["tiny"], "model_version": ["1"], "dim": [8],
        "embedding": vec}))
    lake.write_partition("fused_vectors", "b2", _frame("fused_vectors", {
        "record_id": ["r00"], "batch_id": ["b2"], "fusion": ["early:text=1"], "modalities": [["text"]],
        "dim": [fused_dim], "embedding": matrix_series(np.eye(1, fused_dim, dtype=np.float32))}))


def test_points_of_a_batch_follow_the_current_versions(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    first = plan_points(lake, "b1")
    assert len(first.points) == 24 and first.fallback == [] and first.removed == []
    point = first.points[0]
    assert set(point.vectors) == {"text", "image", "fused"} and point.payload["models"]["text"] == "tiny@1"
    assert point.payload["text"] and point.payload["batch_id"] == "b1"
    ledger = ledger_frame(first.points, "b1", "records", "sha", NOW)
    assert set(ledger.columns) == set(ALL_TABLES["vector_points"]) and ledger.height == 24
    lake.write_partition("vector_points", "b1", ledger)

    _second_batch(lake)
    again = plan_points(lake, "b1")  # b1 re-run: r00 now belongs to b2, r01 is deleted
    assert {p.record_id for p in again.points} == {f"r{i:02d}" for i in range(2, 24)}
    assert [(p.record_id, p.payload["batch_id"]) for p in again.fallback] == [("r00", "b2")]
    assert again.removed == ["r01"]
    second = plan_points(lake, "b2")
    assert [p.record_id for p in second.points] == ["r00"] and second.delete_ids == {"r01"}
    assert second.removed == ["r01"] and set(second.points[0].vectors) == {"text", "fused"}


def test_batch_row_and_vector_sizes(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    row = batch_frame(lake, "b1", "sha", 25, 24, 0, NOW, "profile", "request")
    assert set(row.columns) == set(ALL_TABLES["batches"])
    assert row.row(0, named=True) | {"completed_at": None} == {
        "batch_id": "b1", "manifest_sha256": "sha", "manifest_lines": 25, "aligned_records": 24,
        "rejected_lines": 0, "points": 24, "deletes": 0, "completed_at": None, "profile_key": "profile",
        "profile_request": "request"}
    asked: list[str] = []
    dims = vector_dims(lake, lambda m: asked.append(m) or 32, "b1")
    assert dims == {"text": 8, "image": 8, "audio": 32, "tabular": dims["tabular"], "fused": 16}
    assert asked == ["audio"]  # sizes come from the rows when there are any; tabular's is fixed


def test_modality_dims_and_empty_matrices() -> None:
    empty = pl.DataFrame({"embedding": [], "dim": []}, schema={"embedding": pl.List(pl.Float32), "dim": pl.Int32})
    assert embedding_matrix(empty, 5).shape == (0, 5)
    full = pl.DataFrame({"embedding": [[1.0, 0.0]], "dim": [2]}, schema={"embedding": pl.List(pl.Float32),
                                                                         "dim": pl.Int32})
    assert embedding_matrix(full, 5).shape == (1, 2)
    assert modality_dims({"text": full, "image": empty}, lambda m: 7) == {"text": 2, "image": 7}


def test_an_interrupted_unlogged_write_is_restored_from_the_lake(tmp_path: Path, monkeypatch) -> None:
    """The store's source of truth is the lake: after an unlogged write died, the next open drops the collection
    and upserts every current point again (r00 from b2, r01 deleted, the rest from b1), nothing else."""
    monkeypatch.setenv("MM_QDRANT_BACKEND", "edge")
    monkeypatch.setenv("MM_QDRANT_WAL", "off")
    lake = _lake(tmp_path)
    qpath = tmp_path / "qdrant"
    b1 = plan_points(lake, "b1")
    dims = vector_dims(lake, lambda m: 32, "b1")
    with QdrantStore("records", path=qpath) as store:
        store.ensure_collection(dims)
        store.upsert(b1.points)
    lake.write_partition("vector_points", "b1", ledger_frame(b1.points, "b1", "records", "sha", NOW))
    _second_batch(lake, fused_dim=dims["fused"])
    b2 = plan_points(lake, "b2")

    bad = PointData("bad", {"fused": np.ones(3, dtype=np.float32)})  # the engine fails in the middle of the write
    with QdrantStore("records", path=qpath) as store:
        with pytest.raises(Exception, match="dimension"):
            store.upsert([*b2.points, bad])
    assert (qpath / f"records{DIRTY_SUFFIX}").exists()
    lake.write_partition("vector_points", "b2", ledger_frame(b2.points, "b2", "records", "sha", NOW))

    with QdrantStore("records", path=qpath, restore=lake_restore(lake)) as store:
        assert store.restored == 23 and store.count() == 23 and store.vector_dims() == dims
        want = {p.record_id: p for p in build_points(lake, "b1", {f"r{i:02d}" for i in range(2, 24)}, {})
                + build_points(lake, "b2", {"r00"}, {})}
        got = store.retrieve(sorted(want) + ["r01"], with_vectors=True)
        assert set(got) == set(want)
        for rid, p in want.items():
            assert str(got[rid].id) == point_id(rid)
            assert got[rid].payload == {**p.payload, "record_id": rid}
            assert set(got[rid].vector) == set(p.vectors)
        hit = store.search(want["r05"].vectors["fused"], "fused", k=1)[0]
        assert hit.record_id == "r05" and hit.payload["batch_id"] == "b1"
    assert not (qpath / f"records{DIRTY_SUFFIX}").exists()
