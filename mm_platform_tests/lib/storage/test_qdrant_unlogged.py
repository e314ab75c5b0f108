"""qdrant-edge collections without a write-ahead log (``MM_QDRANT_WAL=off``, the default): the same points as a
logged collection, writes bracketed by a durable dirty marker, and a writer killed with SIGKILL in the middle of
an upsert leaves a store that the next open detects and restores from its source of truth. Real shards in
temp dirs; the source of truth here is a list of points (the lake's restore is tested in
``lib/vectors/test_points.py``)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mm_platform.lib.storage.qdrant import (
    DIRTY_SUFFIX,
    POINT_NAMESPACE,
    PointData,
    QdrantNeedsRestore,
    QdrantStore,
    point_id,
    point_uuid,
)

DIMS = {"text": 8, "fused": 16}


def source_points(n: int, seed: int = 0, batch: str = "b1") -> list[PointData]:
    """Payloads with keys equal across a chunk (batch_id, models), keys that vary (label, n, text), a key
    missing on some points, values equal in Python but not in JSON (1, True, 1.0) and nested values."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        payload = {"batch_id": batch, "models": {"text": "tiny@1"}, "modalities": ["text"],
                   "label": "cat" if i % 3 else "dog", "n": i, "text": f"record {i} ünïcode",
                   "flag": (1, True, 1.0)[i % 3], "cluster_id": None, "sparse": {"a": None, "b": [None]},
                   "empty": []}
        if i % 5 == 0:
            payload["extra"] = {"nested": [i, "x"]}
        out.append(PointData(f"r{i:05d}", {"text": rng.normal(size=8).astype(np.float32),
                                           "fused": rng.normal(size=16).astype(np.float32)}, payload))
    return out


def marker(qpath: Path, collection: str = "records") -> Path:
    return qpath / f"{collection}{DIRTY_SUFFIX}"


@pytest.fixture(autouse=True)
def edge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_QDRANT_BACKEND", "edge")
    monkeypatch.setenv("MM_QDRANT_WAL", "off")


def _all(store: QdrantStore) -> dict[str, object]:
    return {str(r.id): r for r in store.scroll_all(with_vectors=True)}


def test_point_uuid_is_uuid5() -> None:
    for rid in ["r1", "", "ünïcode/Ω", "x" * 500, "a b\tc"]:
        assert str(point_uuid(rid)) == point_id(rid) == str(uuid.uuid5(POINT_NAMESPACE, rid))


def test_unlogged_upsert_gives_the_same_points_as_the_logged_path(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    points = source_points(300)
    stored = {}
    for wal in ("on", "off"):
        monkeypatch.setenv("MM_QDRANT_WAL", wal)
        with QdrantStore("records", path=tmp_path / wal, open_timeout_s=1, upsert_chunk=64) as store:
            store.ensure_collection(DIMS)
            assert store.client.wal_enabled("records") is (wal == "on")
            assert store.upsert(points) == 300
            store.upsert(points[:10])  # a re-upsert replaces whole payloads, as before
        with QdrantStore("records", path=tmp_path / wal, open_timeout_s=1) as store:
            stored[wal] = _all(store)
            hits = store.search(points[7].vectors["fused"], "fused", k=3, where={"label": "cat"})
            assert hits[0].record_id == "r00007"
    on, off = stored["on"], stored["off"]
    assert set(on) == set(off) == {point_id(p.record_id) for p in points}
    for p in points:
        a, b = on[point_id(p.record_id)], off[point_id(p.record_id)]
        want = {**p.payload, "record_id": p.record_id}
        assert a.payload == b.payload == want
        # JSON types survive the split (1, True and 1.0 are equal in Python)
        assert type(b.payload["flag"]) is type(p.payload["flag"])
        for name in DIMS:
            np.testing.assert_allclose(np.asarray(a.vector[name]), np.asarray(b.vector[name]), rtol=1e-6)
    assert not marker(tmp_path / "off").exists() and not marker(tmp_path / "on").exists()


def test_marker_brackets_unlogged_writes_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def watched(points: list[PointData], qpath: Path) -> Iterator[PointData]:
        for p in points:
            seen.append(marker(qpath).exists())
            yield p

    for wal in ("off", "on"):
        monkeypatch.setenv("MM_QDRANT_WAL", wal)
        qpath = tmp_path / wal
        seen.clear()
        with QdrantStore("records", path=qpath, open_timeout_s=1) as store:
            store.ensure_collection(DIMS)
            assert not marker(qpath).exists()
            store.upsert(watched(source_points(5), qpath))
            assert not marker(qpath).exists()  # a clean write flushes and removes it
            store.delete_records(["r00001"])
            store.set_payloads({"r00002": {"cluster_id": 4}})
            assert store.count() == 4 and not marker(qpath).exists()
        assert seen == [wal == "off"] * 5  # durable before the first point; a logged collection never has one
        with QdrantStore("records", path=qpath, open_timeout_s=1) as store:
            assert store.count() == 4 and store.restored is None
            assert store.retrieve(["r00002"])["r00002"].payload["cluster_id"] == 4


def _interrupted_writer(qpath: str, halfway: str) -> None:
    """Child process: ensure the collection, then one big unlogged upsert that stops in the middle (after half
    of the points went to the engine unflushed) and waits there to be killed."""
    os.environ.update(MM_QDRANT_BACKEND="edge", MM_QDRANT_WAL="off")
    points = source_points(2000, seed=1, batch="junk")  # other vectors and payloads than the source

    def stall() -> Iterator[PointData]:
        for i, p in enumerate(points):
            if i == 1000:
                Path(halfway).write_text("1")
                time.sleep(600)
            yield p

    with QdrantStore("records", path=qpath, open_timeout_s=5, upsert_chunk=50) as store:
        store.ensure_collection(DIMS)
        store.upsert(source_points(400))
        store.upsert(stall())


@pytest.mark.parametrize("tear", [False, True])
def test_sigkill_during_unlogged_upsert_is_detected_and_restored(tmp_path: Path, tear: bool) -> None:
    qpath, halfway = tmp_path / "qdrant", tmp_path / "halfway"
    proc = mp.get_context("spawn").Process(target=_interrupted_writer, args=(str(qpath), str(halfway)))
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while not halfway.exists():
            assert proc.is_alive() and time.monotonic() < deadline, "the writer died before the kill"
            time.sleep(0.05)
        assert marker(qpath).exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL
    assert json.loads(marker(qpath).read_text())["vectors"] == DIMS
    if tear:  # files the engine may refuse to load: the shard is never loaded, only dropped
        for f in (qpath / "records").rglob("*"):
            if f.is_file() and f.stat().st_size:
                f.write_bytes(b"\0garbage")

    with pytest.raises(QdrantNeedsRestore, match="interrupted"):
        QdrantStore("records", path=qpath, open_timeout_s=1).open()
    assert marker(qpath).exists()  # still owed

    source = source_points(400)
    with QdrantStore("records", path=qpath, open_timeout_s=1, restore=lambda s: s.upsert(source)) as store:
        assert store.restored == 400
        assert not marker(qpath).exists()
        assert store.vector_dims() == DIMS
        got = _all(store)
        assert sorted(got) == sorted(point_id(p.record_id) for p in source)  # each once, no junk
        for p in source:
            assert got[point_id(p.record_id)].payload == {**p.payload, "record_id": p.record_id}
        hits = store.search(source[42].vectors["text"], "text", k=1)
        assert hits[0].record_id == "r00042" and hits[0].payload["batch_id"] == "b1"
    with QdrantStore("records", path=qpath, open_timeout_s=1) as store:  # clean from now on
        assert store.count() == 400 and store.restored is None


def bad_point() -> PointData:
    return PointData("bad", {"text": np.ones(3, dtype=np.float32), "fused": np.ones(16, dtype=np.float32)})


def test_error_between_engine_calls_flushes_and_clears_the_marker(tmp_path: Path) -> None:
    """An exception from the caller's points (or SIGTERM's KeyboardInterrupt, raised only once ``update``
    returned) leaves a consistent shard: what was written is flushed, no restore is owed."""
    qpath = tmp_path / "qdrant"
    source = source_points(100)

    def broken() -> Iterator[PointData]:
        yield from source[:60]
        raise KeyboardInterrupt

    with QdrantStore("records", path=qpath, open_timeout_s=1, upsert_chunk=16) as store:
        store.ensure_collection(DIMS)
        with pytest.raises(KeyboardInterrupt):
            store.upsert(broken())
        assert not marker(qpath).exists()
    with QdrantStore("records", path=qpath, open_timeout_s=1) as store:
        assert store.restored is None and store.count() == 48  # the 3 whole chunks that reached the engine


def test_failed_restore_keeps_the_marker_and_retries(tmp_path: Path) -> None:
    qpath = tmp_path / "qdrant"
    source = source_points(50)

    with QdrantStore("records", path=qpath, open_timeout_s=1, upsert_chunk=16) as store:
        store.ensure_collection(DIMS)
        with pytest.raises(Exception, match="dimension"):
            store.upsert([*source[:20], bad_point()])  # the engine fails mid-write: its state is not trusted
    assert marker(qpath).exists()

    def failing_restore(store: QdrantStore) -> int:
        store.upsert(source[:10])
        raise OSError("lake unreachable")

    with pytest.raises(OSError):
        QdrantStore("records", path=qpath, open_timeout_s=1, restore=failing_restore).open()
    assert marker(qpath).exists()  # a half-done restore is not taken for a clean store
    with QdrantStore("records", path=qpath, open_timeout_s=1, restore=lambda s: s.upsert(source)) as store:
        assert store.restored == 50 and store.count() == 50
    assert not marker(qpath).exists()
