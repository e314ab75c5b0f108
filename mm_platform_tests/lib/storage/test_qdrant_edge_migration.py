"""A storage dir written by qdrant-client local mode is migrated once into the qdrant-edge backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mm_platform.lib.storage.qdrant import EDGE_MARKER, PointData, QdrantBusy, QdrantStore, is_local_mode_layout


def _points(n: int) -> list[PointData]:
    rng = np.random.default_rng(1)
    return [
        PointData(f"r{i}", {"text": rng.normal(size=4), **({"image": rng.normal(size=3)} if i % 3 else {})},
                  {"batch_id": "b1" if i % 2 else "b2", "label": "cat" if i % 2 else "dog", "n": i})
        for i in range(n)
    ]


def _local_store(qpath: Path, n: int = 700) -> list[PointData]:
    pts = _points(n)
    with QdrantStore("records", path=qpath, backend="local") as s:
        s.ensure_collection({"text": 4, "image": 3})
        s.upsert(pts)
        s.set_payloads({"r1": {"cluster_id": 4}})
    with QdrantStore("other", path=qpath, backend="local") as s:
        s.ensure_collection({"fused": 2})
        s.upsert([PointData("x", {"fused": np.array([1.0, 2.0])}, {"k": "v"})])
    return pts


def test_local_mode_store_is_migrated_once_with_everything(tmp_path: Path) -> None:
    qpath = tmp_path / "qdrant"
    pts = _local_store(qpath)
    assert is_local_mode_layout(qpath)
    with QdrantStore("records", path=qpath, backend="local") as old:
        old_hits = old.search(pts[5].vectors["text"], using="text", k=10, where={"batch_id": "b1"})
        old_vec = old.retrieve(["r4"], with_vectors=True)["r4"].vector

    with QdrantStore("records", path=qpath, backend="edge") as s:
        assert s.count() == len(pts)
        assert s.vector_dims() == {"text": 4, "image": 3}
        got = s.retrieve(["r1", "r4"], with_vectors=True)
        assert got["r1"].payload == {"batch_id": "b1", "label": "cat", "n": 1, "record_id": "r1", "cluster_id": 4}
        assert set(got["r4"].vector) == {"text", "image"}
        np.testing.assert_allclose(got["r4"].vector["text"], old_vec["text"], rtol=1e-5)
        assert set(s.retrieve(["r3"], with_vectors=True)["r3"].vector) == {"text"}  # only the vectors it had
        new_hits = s.search(pts[5].vectors["text"], using="text", k=10, where={"batch_id": "b1"})
        assert [h.record_id for h in new_hits] == [h.record_id for h in old_hits]
        assert all(h.payload["batch_id"] == "b1" for h in new_hits)
    with QdrantStore("other", path=qpath) as s:  # default backend is edge
        assert s.count() == 1 and s.retrieve(["x"])["x"].payload == {"k": "v", "record_id": "x"}

    backups = sorted(tmp_path.glob("qdrant.local-backup-*"))
    assert len(backups) == 1 and (backups[0] / "meta.json").is_file()
    assert (qpath / EDGE_MARKER).is_file() and not is_local_mode_layout(qpath)
    assert not list(tmp_path.glob("*.edge-migrating"))
    # a second open does not migrate again, and writes persist across reopen
    with QdrantStore("records", path=qpath) as s:
        s.delete_records(["r0"])
    with QdrantStore("records", path=qpath) as s:
        assert s.count() == len(pts) - 1
    assert len(list(tmp_path.glob("qdrant.local-backup-*"))) == 1


def test_a_dead_half_migration_is_redone(tmp_path: Path) -> None:
    qpath = tmp_path / "qdrant"
    pts = _local_store(qpath, n=20)
    junk = tmp_path / "qdrant.edge-migrating"
    junk.mkdir()
    (junk / "garbage").write_text("x")
    with QdrantStore("records", path=qpath) as s:
        assert s.count() == len(pts)
    assert not junk.exists()


def test_edge_store_held_by_another_process_raises_qdrant_busy(tmp_path: Path) -> None:
    qpath = tmp_path / "qdrant"
    code = (
        "import sys, time; from mm_platform.lib.storage.qdrant import QdrantStore\n"
        f"s = QdrantStore('records', path={str(qpath)!r}, backend='edge').open()\n"
        "s.ensure_collection({'text': 4}); print('held', flush=True); sys.stdin.readline(); s.close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(QdrantBusy, match="in use by another process"):
            QdrantStore("records", path=qpath, backend="edge", open_timeout_s=1).open()
    finally:
        proc.communicate("\n", timeout=60)
    with QdrantStore("records", path=qpath, backend="edge", open_timeout_s=1) as s:
        assert s.vector_dims() == {"text": 4}


def test_big_collections_get_an_hnsw_index_small_ones_stay_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with QdrantStore("records", path=tmp_path / "q") as s:
        s.ensure_collection({"fused": 256})
        vecs = rng.normal(size=(12_000, 256)).astype(np.float32)
        s.upsert(PointData(f"r{i}", {"fused": v}, {"batch_id": f"b{i % 10}"}) for i, v in enumerate(vecs))
        s.upsert([PointData("small", {"fused": np.ones(256)})])
    with QdrantStore("records", path=tmp_path / "q") as s:
        info = s.client.shard("records").info()
        assert info.points_count == 12_001
        assert info.indexed_vectors_count > 0  # optimised on close: HNSW over the big segments
        hit = s.search(np.ones(256), using="fused", k=1)[0]
        assert hit.record_id == "small" and hit.score == pytest.approx(1.0, abs=1e-5)
        # filtered search over the HNSW-indexed segments still finds the exact neighbours in the filter
        unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        recall = []
        for qi in range(5):
            q = vecs[qi * 7] + rng.normal(scale=0.5, size=256).astype(np.float32)
            scores = unit @ (q / np.linalg.norm(q))
            in_b3 = np.arange(12_000) % 10 == 3
            truth = {f"r{i}" for i in np.argsort(-np.where(in_b3, scores, -np.inf))[:10]}
            hits = s.search(q, using="fused", k=10, where={"batch_id": "b3"})
            assert all(h.payload["batch_id"] == "b3" for h in hits)
            recall.append(len(truth & {h.record_id for h in hits}) / 10)
        assert np.mean(recall) >= 0.9, recall
