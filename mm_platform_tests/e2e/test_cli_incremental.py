"""Incremental, exactly-once ingestion through the real CLI (offline profile): eager cluster assignment,
the embedding cache, updates and deletes reaching DuckDB, Qdrant and the clusters, re-runs of older
batches, rewritten manifests, and cluster ids that stay stable across a full re-cluster."""

import json
import shutil

import duckdb
import pytest

from mm_platform.demo import make_demo_batch
from mm_platform.lib.storage.qdrant import QdrantStore
from mm_platform_tests.e2e.conftest import cli_json, run_cli

pytestmark = pytest.mark.e2e


def write_manifest(batch_dir, lines):
    batch_dir.mkdir(parents=True, exist_ok=True)
    (batch_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def sql(paths, query, params=None):
    con = duckdb.connect(str(paths.duckdb_path), read_only=True)
    try:
        return con.execute(query, params or []).fetchall()
    finally:
        con.close()


def points(paths):
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        return {p.payload["record_id"]: p.payload for p in store.scroll_all()}


def test_incremental_updates_deletes_and_stable_clusters(cli_paths):
    paths = cli_paths
    land = paths.landing_dir
    make_demo_batch(land / "a", n_records=120, seed=2, n_broken=0, id_prefix="a")
    out = run_cli("ingest").stdout
    assert "full re-cluster" in out  # the first ingest clusters everything
    n_a = sql(paths, "SELECT count(*) FROM current_records")[0][0]
    first_clusters = dict(sql(paths, "SELECT record_id, cluster_id FROM current_clusters"))
    assert len(first_clusters) == n_a

    # a new batch is placed into the existing clusters at once, without a re-cluster
    make_demo_batch(land / "b", n_records=30, seed=3, n_broken=0, id_prefix="b")
    out = run_cli("ingest").stdout
    assert "full re-cluster" not in out
    sources = dict(sql(paths, "SELECT source, count(*) FROM current_clusters GROUP BY 1"))
    assert sources == {"recluster": n_a, "incremental": 30}

    # updates, deletes and unchanged re-sends in a third batch
    a_lines = [json.loads(x) for x in (land / "a" / "records.jsonl").read_text().splitlines()]
    with_both = [r for r in a_lines if "text" in r and "image" in r]
    upd, dele, same = with_both[0], with_both[1], with_both[2]
    (land / "c" / "images").mkdir(parents=True)
    for r in (upd, same):
        shutil.copy(land / "a" / r["image"], land / "c" / r["image"])
    write_manifest(land / "c", [
        {**upd, "text": "Completely rewritten review: this teapot pours beautifully."},
        {"record_id": dele["record_id"], "op": "delete"},
        same,
    ])
    run_cli("ingest")
    rows = dict(sql(paths, "SELECT record_id, batch_id FROM aligned_records WHERE record_id IN (?, ?, ?)",
                    [upd["record_id"], dele["record_id"], same["record_id"]]))
    assert rows == {upd["record_id"]: "c", same["record_id"]: "c"}
    assert sql(paths, "SELECT count(*) FROM aligned_records_history WHERE record_id = ?", [upd["record_id"]])[0][0] == 2
    assert sql(paths, "SELECT batch_id, in_effect, deleted_version_batch_id FROM record_deletions") == [("c", True, "a")]
    # the embedding cache: unchanged contents were not embedded again, the rewritten text was
    hits = dict(sql(paths, "SELECT record_id, cache_hit FROM text_embeddings WHERE batch_id = 'c'"))
    assert hits == {upd["record_id"]: False, same["record_id"]: True}
    assert sql(paths, "SELECT bool_and(cache_hit) FROM image_embeddings WHERE batch_id = 'c'")[0][0] is True
    # Qdrant and the clusters follow
    pts = points(paths)
    assert dele["record_id"] not in pts
    assert pts[upd["record_id"]]["batch_id"] == "c" and pts[upd["record_id"]]["text"].startswith("Completely")
    current = dict(sql(paths, "SELECT record_id, cluster_id FROM current_clusters"))
    assert dele["record_id"] not in current and len(current) == n_a + 30 - 1
    assert len(pts) == len(current)

    # re-running the OLDER batch changes nothing: superseded and deleted versions stay superseded
    run_cli("ingest", "--batch", "a", "--force")
    pts_again = points(paths)
    assert dele["record_id"] not in pts_again
    assert pts_again[upd["record_id"]]["batch_id"] == "c"
    assert {r: p["batch_id"] for r, p in pts_again.items()} == {r: p["batch_id"] for r, p in pts.items()}

    # a rewritten manifest that drops the update: the record falls back to its version in batch a
    write_manifest(land / "c", [{"record_id": dele["record_id"], "op": "delete"}, same])
    run_cli("ingest")
    assert points(paths)[upd["record_id"]]["batch_id"] == "a"
    assert dict(sql(paths, "SELECT record_id, batch_id FROM aligned_records WHERE record_id = ?",
                    [upd["record_id"]])) == {upd["record_id"]: "a"}

    # a full re-cluster on the grown dataset keeps most records in their cluster id
    run_cli("recluster")
    moved, common = sql(paths, "SELECT moved, common FROM cluster_metrics WHERE space = 'fused'")[0]
    assert common >= n_a - 1 and moved / common < 0.2, (moved, common)
    after = dict(sql(paths, "SELECT record_id, cluster_id FROM current_clusters"))
    kept = sum(after.get(r) == c for r, c in first_clusters.items() if r in after)
    assert kept / len(first_clusters) > 0.8
    # Qdrant payloads carry the current cluster ids
    assert {r: p["cluster_id"] for r, p in points(paths).items()} == after
    status = cli_json("status")
    assert status["pending_batches"] == [] and status["current_records"] == len(after)
