"""Tests for mm_platform.lib.storage.qdrant against a real embedded Qdrant, run once per embedded backend:
qdrant-edge (the default) and qdrant-client local mode (``QdrantClient(path=...)``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mm_platform.lib.storage.qdrant import (
    POINT_NAMESPACE,
    PointData,
    QdrantBusy,
    QdrantStore,
    SearchHit,
    point_id,
)

DIMS = {"text": 4, "image": 3}


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def make_points(n: int, batch_id: str = "b1", prefix: str = "r", seed: int = 0) -> list[PointData]:
    rng = np.random.default_rng(seed)
    return [
        PointData(
            record_id=f"{prefix}{i}",
            vectors={"text": rng.normal(size=4).astype(np.float32), "image": rng.normal(size=3)},
            payload={"batch_id": batch_id, "label": "cat" if i % 2 else "dog", "n": i},
        )
        for i in range(n)
    ]


@pytest.fixture(autouse=True, params=["edge", "local"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MM_QDRANT_BACKEND", request.param)
    return request.param


@pytest.fixture
def qpath(tmp_path: Path) -> Path:
    return tmp_path / "qdrant"


@pytest.fixture
def store(qpath: Path) -> Iterator[QdrantStore]:
    with QdrantStore("records", path=qpath, open_timeout_s=1) as s:
        yield s


# -- ids and construction --------------------------------------------------------------------------------


def test_point_id_is_deterministic_uuid5() -> None:
    pid = point_id("record-42")
    assert pid == point_id("record-42")
    assert pid == str(uuid.uuid5(POINT_NAMESPACE, "record-42"))
    parsed = uuid.UUID(pid)
    assert parsed.version == 5 and str(parsed) == pid
    assert point_id("record-43") != pid
    assert len({point_id(f"r{i}") for i in range(1000)}) == 1000
    assert point_id("") != point_id(" ")


def test_store_needs_a_path_or_url_and_must_be_open(qpath: Path) -> None:
    with pytest.raises(ValueError):
        QdrantStore("c")
    s = QdrantStore("c", path=qpath)
    assert s.location == f"embedded:{qpath}"
    with pytest.raises(RuntimeError, match="not open"):
        _ = s.client
    assert QdrantStore("c", url="http://qdrant:6333").location == "http://qdrant:6333"


def test_open_is_idempotent_and_close_releases(qpath: Path) -> None:
    s = QdrantStore("c", path=qpath, open_timeout_s=1)
    assert s.open() is s
    client = s.client
    assert s.open().client is client  # no second client
    s.close()
    s.close()  # twice is fine
    with pytest.raises(RuntimeError):
        _ = s.client


def test_reads_on_a_missing_collection_are_empty(store: QdrantStore) -> None:
    assert not store.exists()
    assert store.vector_dims() == {}
    assert store.count() == 0
    assert store.retrieve(["r1"]) == {}
    assert list(store.scroll_all()) == []


# -- ensure_collection -----------------------------------------------------------------------------------


def test_ensure_collection_creates_named_vectors(store: QdrantStore) -> None:
    assert store.ensure_collection(DIMS) is True
    assert store.exists()
    assert store.vector_dims() == DIMS
    # cosine: stored vectors come back normalised
    store.upsert([PointData("r1", {"text": np.array([3.0, 0, 0, 4.0]), "image": np.array([0, 2.0, 0])})])
    vec = store.retrieve(["r1"], with_vectors=True)["r1"].vector
    np.testing.assert_allclose(vec["text"], [0.6, 0, 0, 0.8], rtol=1e-5)
    np.testing.assert_allclose(vec["image"], [0, 1.0, 0], rtol=1e-5)


def test_ensure_collection_is_a_noop_when_equal_and_keeps_points(store: QdrantStore) -> None:
    store.ensure_collection(DIMS)
    store.upsert(make_points(3))
    assert store.ensure_collection(dict(DIMS)) is False
    assert store.ensure_collection({"text": 4}) is False  # a subset is satisfied too
    assert store.count() == 3
    assert store.vector_dims() == DIMS


def test_ensure_collection_keeps_unasked_existing_vectors(store: QdrantStore) -> None:
    store.ensure_collection({"text": 4})
    assert store.ensure_collection({"fused": 5}) is True  # new modality: recreated with both
    assert store.vector_dims() == {"text": 4, "fused": 5}
    assert store.ensure_collection({"fused": 5}) is False
    assert store.ensure_collection({"text": 4}) is False


def test_ensure_collection_recreates_on_dimension_change(store: QdrantStore) -> None:
    store.ensure_collection(DIMS)
    store.upsert(make_points(4))
    assert store.ensure_collection({"text": 8}) is True
    assert store.vector_dims() == {"text": 8, "image": 3}
    assert store.count() == 0  # recreated: old points are gone
    store.upsert([PointData("x", {"text": np.ones(8), "image": np.ones(3)})])
    assert store.count() == 1


# -- writes ----------------------------------------------------------------------------------------------


def test_upsert_is_idempotent(qpath: Path) -> None:
    with QdrantStore("records", path=qpath, upsert_chunk=3, open_timeout_s=1) as s:
        s.ensure_collection(DIMS)
        assert s.upsert(make_points(10)) == 10  # 4 chunks
        assert s.count() == 10
        assert s.upsert(make_points(10, seed=1)) == 10  # same ids, new vectors
        assert s.count() == 10
        assert s.upsert(iter(make_points(12, seed=2))) == 12  # a generator works; 2 new points
        assert s.count() == 12
        assert s.upsert([]) == 0
        ids = {str(p.id) for p in s.scroll_all()}
        assert ids == {point_id(f"r{i}") for i in range(12)}


def test_points_persist_across_reopen(qpath: Path) -> None:
    with QdrantStore("records", path=qpath, open_timeout_s=1) as s:
        s.ensure_collection(DIMS)
        s.upsert(make_points(5))
    with QdrantStore("records", path=qpath, open_timeout_s=1) as s:
        assert s.count() == 5
        assert s.vector_dims() == DIMS
        assert set(s.retrieve(["r0", "r4"])) == {"r0", "r4"}


def test_points_with_only_some_named_vectors(store: QdrantStore) -> None:
    store.ensure_collection(DIMS)
    store.upsert([
        PointData("only_text", {"text": unit([1, 0, 0, 0])}, {"batch_id": "b1"}),
        PointData("only_image", {"image": unit([0, 1, 0])}, {"batch_id": "b1"}),
        PointData("both", {"text": unit([0, 1, 0, 0]), "image": unit([1, 0, 0])}, {"batch_id": "b1"}),
    ])
    assert store.count() == 3
    got = store.retrieve(["only_text", "only_image", "both"], with_vectors=True)
    assert set(got["only_text"].vector) == {"text"}
    assert set(got["only_image"].vector) == {"image"}
    assert set(got["both"].vector) == {"text", "image"}
    image_hits = store.search(unit([1, 0, 0]), using="image", k=10)
    assert {h.record_id for h in image_hits} == {"only_image", "both"}
    text_hits = store.search(unit([1, 0, 0, 0]), using="text", k=10)
    assert {h.record_id for h in text_hits} == {"only_text", "both"}


def test_payload_is_stored_with_record_id(store: QdrantStore) -> None:
    store.ensure_collection(DIMS)
    store.upsert([PointData("r1", {"text": np.ones(4)}, {"batch_id": "b9", "label": "cat", "tags": ["a", "b"]})])
    pt = store.retrieve(["r1"])["r1"]
    assert str(pt.id) == point_id("r1")
    assert pt.payload == {"batch_id": "b9", "label": "cat", "tags": ["a", "b"], "record_id": "r1"}
    # record_id always wins over a conflicting payload key
    store.upsert([PointData("r2", {"text": np.ones(4)}, {"record_id": "spoof"})])
    assert store.retrieve(["r2"])["r2"].payload["record_id"] == "r2"


def test_set_payloads_updates_only_existing_points(store: QdrantStore) -> None:
    store.ensure_collection(DIMS)
    store.upsert(make_points(4))
    n = store.set_payloads({
        "r0": {"cluster_id": 1},
        "r1": {"cluster_id": 1},
        "r2": {"cluster_id": 2, "cluster_name": "birds"},
        "ghost": {"cluster_id": 1},
        "ghost2": {"cluster_id": 7},
    })
    assert n == 3
    assert store.count() == 4  # no point created for unknown records
    got = store.retrieve(["r0", "r1", "r2", "r3", "ghost"])
    assert set(got) == {"r0", "r1", "r2", "r3"}
    assert got["r0"].payload["cluster_id"] == 1 and got["r1"].payload["cluster_id"] == 1
    assert got["r2"].payload["cluster_id"] == 2 and got["r2"].payload["cluster_name"] == "birds"
    assert "cluster_id" not in got["r3"].payload
    # the other payload keys are kept (set, not overwrite)
    assert got["r0"].payload["batch_id"] == "b1" and got["r0"].payload["record_id"] == "r0"
    assert store.set_payloads({}) == 0
    assert store.set_payloads({"ghost": {"cluster_id": 3}}) == 0
    # re-setting moves a point to another cluster
    assert store.set_payloads({"r0": {"cluster_id": 5}}) == 1
    assert store.retrieve(["r0"])["r0"].payload["cluster_id"] == 5


def test_set_payloads_accepts_list_values(store: QdrantStore) -> None:
    store.ensure_collection(DIMS)
    store.upsert(make_points(2))
    assert store.set_payloads({"r0": {"top_terms": ["cat", "fur"]}, "r1": {"top_terms": ["cat", "fur"]}}) == 2
    assert store.retrieve(["r0"])["r0"].payload["top_terms"] == ["cat", "fur"]


def test_delete_records(store: QdrantStore) -> None:
    store.ensure_collection(DIMS)
    store.upsert(make_points(5))
    store.delete_records(["r1", "r3", "never-there"])
    assert store.count() == 3
    assert set(store.retrieve([f"r{i}" for i in range(5)])) == {"r0", "r2", "r4"}
    store.delete_records([])  # no-op
    assert store.count() == 3


# -- reads -----------------------------------------------------------------------------------------------


def test_search_with_using_and_where_ranks_the_exact_vector_first(store: QdrantStore) -> None:
    store.ensure_collection(DIMS)
    pts = make_points(20, batch_id="b1", seed=3) + make_points(20, batch_id="b2", prefix="s", seed=4)
    store.upsert(pts)
    target = pts[7]  # r7, batch b1, label cat
    hits = store.search(target.vectors["text"], using="text", k=5, where={"batch_id": "b1"})
    assert isinstance(hits[0], SearchHit)
    assert hits[0].record_id == "r7"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].vector == "text"
    assert hits[0].payload["batch_id"] == "b1" and hits[0].payload["record_id"] == "r7"
    assert len(hits) == 5
    assert all(h.payload["batch_id"] == "b1" for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.score < 1.0 - 1e-4 for h in hits[1:])

    # a filter that excludes the exact match
    hits_b2 = store.search(target.vectors["text"], using="text", k=50, where={"batch_id": "b2"})
    assert len(hits_b2) == 20 and all(h.record_id.startswith("s") for h in hits_b2)
    # several conditions are ANDed
    both = store.search(target.vectors["text"], using="text", k=50, where={"batch_id": "b1", "label": "cat"})
    assert {h.record_id for h in both} == {f"r{i}" for i in range(20) if i % 2}
    # the image space ranks by the image vector
    img = store.search(pts[30].vectors["image"], using="image", k=1)
    assert img[0].record_id == pts[30].record_id and img[0].vector == "image"
    assert img[0].score == pytest.approx(1.0, abs=1e-4)
    # no filter: everything is a candidate
    assert len(store.search(target.vectors["text"], using="text", k=100)) == 40


def test_scroll_all_yields_every_point_once(store: QdrantStore) -> None:
    store.ensure_collection({"text": 4})
    rng = np.random.default_rng(0)
    n = 600  # more than one scroll page of 512
    store.upsert(PointData(f"r{i}", {"text": rng.normal(size=4)}, {"i": i}) for i in range(n))
    pts = list(store.scroll_all())
    assert len(pts) == n
    assert sorted(p.payload["i"] for p in pts) == list(range(n))
    assert len({str(p.id) for p in pts}) == n
    assert pts[0].vector is None
    with_vec = next(iter(store.scroll_all(with_vectors=True)))
    assert len(with_vec.vector["text"]) == 4


def test_retrieve(store: QdrantStore) -> None:
    store.ensure_collection(DIMS)
    pts = make_points(3)
    store.upsert(pts)
    got = store.retrieve(["r2", "r0", "missing"])
    assert set(got) == {"r0", "r2"}
    assert got["r2"].payload["n"] == 2
    assert str(got["r2"].id) == point_id("r2")
    assert got["r0"].vector is None
    vec = store.retrieve(["r1"], with_vectors=True)["r1"].vector["text"]
    want = pts[1].vectors["text"]
    np.testing.assert_allclose(np.asarray(vec), want / np.linalg.norm(want), rtol=1e-5)  # cosine: normalised
    assert store.retrieve([]) == {}


# -- embedded storage locking ----------------------------------------------------------------------------


def test_second_open_of_the_same_path_raises_qdrant_busy_then_works(qpath: Path) -> None:
    first = QdrantStore("records", path=qpath, open_timeout_s=1).open()
    try:
        first.ensure_collection(DIMS)
        first.upsert(make_points(2))
        second = QdrantStore("records", path=qpath, open_timeout_s=1)
        t0 = time.monotonic()
        with pytest.raises(QdrantBusy, match="in use by another process"):
            second.open()
        elapsed = time.monotonic() - t0
        assert 1.0 <= elapsed < 4.0, elapsed
        with pytest.raises(RuntimeError):
            _ = second.client  # not half-open
    finally:
        first.close()
    with second:
        assert second.count() == 2
        assert set(second.retrieve(["r0", "r1"])) == {"r0", "r1"}


def test_open_waits_for_the_holder_to_close(qpath: Path) -> None:
    """Opening retries while the storage is held and succeeds once the holder closes within the timeout."""
    import threading

    first = QdrantStore("records", path=qpath, open_timeout_s=1).open()
    first.ensure_collection({"text": 4})
    closer = threading.Timer(0.6, first.close)
    closer.start()
    try:
        t0 = time.monotonic()
        with QdrantStore("records", path=qpath, open_timeout_s=5) as second:
            assert time.monotonic() - t0 >= 0.5
            assert second.vector_dims() == {"text": 4}
    finally:
        closer.join()
        first.close()
