"""Tests for mm_platform.lib.storage.qdrant_payloads against a real embedded Qdrant (edge and local mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mm_platform.lib.storage.qdrant_payloads import PayloadSync, payload_changes, stored_payloads, sync_payloads
from mm_platform.lib.storage.qdrant import PointData, QdrantStore


@pytest.fixture(autouse=True, params=["edge", "local"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MM_QDRANT_BACKEND", request.param)
    return request.param


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QdrantStore]:
    with QdrantStore("records", path=tmp_path / "qdrant", open_timeout_s=1) as s:
        yield s


def points(n: int, cluster: dict[int, int] | None = None) -> list[PointData]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        payload = {"batch_id": "b1", "text": f"text {i}"}
        if cluster is not None and i in cluster:
            payload["cluster_id"] = cluster[i]
        out.append(PointData(f"r{i}", {"fused": rng.normal(size=4).astype(np.float32)}, payload))
    return out


def test_payload_changes_keeps_only_differing_records_that_have_a_point() -> None:
    wanted = {"a": {"cluster_id": 1}, "b": {"cluster_id": 2}, "c": {"cluster_id": 3}, "ghost": {"cluster_id": 4}}
    stored = {"a": {"cluster_id": 1}, "b": {"cluster_id": 5}, "c": {"cluster_id": None}, "d": {"cluster_id": 0}}
    assert payload_changes(wanted, stored) == {"b": {"cluster_id": 2}, "c": {"cluster_id": 3}}
    assert payload_changes({}, stored) == {}


def test_stored_payloads_reads_only_the_asked_keys(store: QdrantStore) -> None:
    store.ensure_collection({"fused": 4})
    store.upsert(points(3, cluster={0: 7}))
    got = stored_payloads(store, ["cluster_id"])
    assert got == {"r0": {"cluster_id": 7}, "r1": {"cluster_id": None}, "r2": {"cluster_id": None}}


def test_sync_sends_only_new_and_moved_records(store: QdrantStore) -> None:
    assert sync_payloads(store, {"r0": {"cluster_id": 1}}) == PayloadSync(0, 0, 1, 0)  # no collection yet
    store.ensure_collection({"fused": 4})
    store.upsert(points(6, cluster={0: 1, 1: 1, 2: 2}))  # r3..r5 were written before being clustered
    wanted = {f"r{i}": {"cluster_id": c} for i, c in enumerate([1, 1, 2, 2, 3, 3])} | {"ghost": {"cluster_id": 1}}
    first = sync_payloads(store, wanted)
    assert first == PayloadSync(sent=3, unchanged=3, not_in_qdrant=1, points_scanned=6)
    assert {r: p.payload["cluster_id"] for r, p in store.retrieve([f"r{i}" for i in range(6)]).items()} == {
        f"r{i}": c for i, c in enumerate([1, 1, 2, 2, 3, 3])}
    # nothing changed: nothing is sent
    assert sync_payloads(store, wanted) == PayloadSync(sent=0, unchanged=6, not_in_qdrant=1, points_scanned=6)
    # a re-cluster moves two records: exactly those two are sent, the rest of the payload is kept
    moved = {**wanted, "r0": {"cluster_id": 9}, "r4": {"cluster_id": 1}}
    assert sync_payloads(store, moved).sent == 2
    got = store.retrieve(["r0", "r1", "r4"])
    assert got["r0"].payload["cluster_id"] == 9 and got["r4"].payload["cluster_id"] == 1
    assert got["r1"].payload["cluster_id"] == 1
    assert got["r0"].payload["text"] == "text 0" and got["r0"].payload["batch_id"] == "b1"
    # a payload changed behind our back (a lost update, say) is repaired by the next sync
    store.set_payloads({"r2": {"cluster_id": 42}})
    assert sync_payloads(store, moved).sent == 1
    assert store.retrieve(["r2"])["r2"].payload["cluster_id"] == 2


def test_edge_collections_are_int8_quantized_unless_disabled(tmp_path: Path, backend: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    if backend != "edge":
        pytest.skip("quantization is an edge-backend setting")
    for mode, expected in (("int8", {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}),
                           ("none", None)):
        monkeypatch.setenv("MM_QDRANT_QUANTIZATION", mode)
        with QdrantStore(f"c_{mode}", path=tmp_path / "q") as s:
            s.ensure_collection({"fused": 4})
            s.upsert(points(20))
            hits = s.search(points(20)[7].vectors["fused"], using="fused", k=3)
            assert hits[0].record_id == "r7" and hits[0].score == pytest.approx(1.0, abs=1e-4)  # rescored
        cfg = json.loads((tmp_path / "q" / f"c_{mode}" / "edge_config.json").read_text())
        assert cfg.get("quantization_config") == expected
    monkeypatch.setenv("MM_QDRANT_QUANTIZATION", "int4")
    with QdrantStore("c_bad", path=tmp_path / "q") as s, pytest.raises(ValueError, match="int8"):
        s.ensure_collection({"fused": 4})
