"""The ingest ledger: a failed global run is owed to the next ingest, and a success pays the debt."""

from __future__ import annotations

import polars as pl

from mm_platform.lib.storage import lake as lake_mod
from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.landing.ledger import (
    global_layer_stale,
    mark_global_failed,
    mark_global_fresh,
    nothing_to_do,
    recluster_owed,
    repair_lake,
)
from mm_platform.lib.settings import Paths


def _fused(lake: Lake, batch_id: str) -> None:
    lake.write_partition("fused_vectors", batch_id, pl.DataFrame({"record_id": ["r1"], "batch_id": [batch_id]}).with_columns(
        pl.lit(None).alias(c) for c in lake_mod.ALL_TABLES["fused_vectors"] if c not in ("record_id", "batch_id")))


def test_a_failed_recluster_is_owed_until_one_succeeds(tmp_path):
    paths = Paths.from_env({"MM_DATA_DIR": str(tmp_path / "data")})
    paths.landing_dir.mkdir(parents=True)
    lake = Lake(paths.lake_dir)
    _fused(lake, "b1")
    mark_global_fresh(lake, "recluster_job")
    assert not global_layer_stale(lake) and recluster_owed(lake) is None
    assert nothing_to_do(paths)

    mark_global_failed(lake, "recluster_job", "classifiers: need at least two classes")
    assert global_layer_stale(lake)
    assert "classifiers: need at least two classes" in recluster_owed(lake)
    assert not nothing_to_do(paths)

    # a refresh alone does not pay for a failed re-cluster
    mark_global_fresh(lake, "refresh_job")
    assert not global_layer_stale(lake) and recluster_owed(lake) is not None
    assert not nothing_to_do(paths)

    mark_global_fresh(lake, "recluster_job")
    assert recluster_owed(lake) is None and nothing_to_do(paths)


def test_a_failed_refresh_leaves_the_layer_stale_but_owes_no_recluster(tmp_path):
    lake = Lake(tmp_path / "lake")
    _fused(lake, "b1")
    mark_global_fresh(lake, "recluster_job")
    mark_global_failed(lake, "refresh_job", "cluster_summary: boom")
    assert global_layer_stale(lake) and recluster_owed(lake) is None


def test_a_damaged_recluster_table_owes_a_recluster(tmp_path):
    lake = Lake(tmp_path / "lake")
    _fused(lake, "b1")
    one_row = pl.DataFrame({c: [None] for c in lake_mod.empty_frame("classifier_metrics").columns})
    lake.write_global("classifier_metrics", one_row)  # an empty Delta table has no data file to damage
    mark_global_fresh(lake, "recluster_job")
    lake.global_path("classifier_metrics").write_bytes(b"not parquet")
    assert repair_lake(lake) == set()
    assert "classifier_metrics was damaged" in recluster_owed(lake)


def test_pending_batches_one_rule_by_manifest_and_model_settings(tmp_path):
    """A batch is pending until it is ingested with its current manifest under the model settings compared:
    the resolved profile key (ingest) or the settings as requested (status, without importing torch)."""
    from mm_platform.demo import make_demo_batch
    from mm_platform.lib.landing.ledger import encoder_request_key, ingested_hashes, pending_batches
    from mm_platform.lib.landing.manifest import list_complete_batches

    paths = Paths.from_env({"MM_DATA_DIR": str(tmp_path / "data")})
    make_demo_batch(paths.landing_dir / "b1", n_records=4, seed=1, n_broken=0, id_prefix="b1")
    make_demo_batch(paths.landing_dir / "b2", n_records=4, seed=2, n_broken=0, id_prefix="b2")
    lake = Lake(paths.lake_dir)
    lake.ensure_initialized()
    assert [b.batch_id for b in pending_batches(paths, lake)] == ["b1", "b2"]
    b1 = next(b for b in list_complete_batches(paths.landing_dir) if b.batch_id == "b1")
    request = encoder_request_key({"MM_MODEL_PROFILE": "offline"})
    row = {c: None for c in lake_mod.ALL_TABLES["batches"]}
    row.update(batch_id="b1", manifest_sha256=b1.manifest_sha256, profile_key="offline", profile_request=request)
    lake.write_partition("batches", "b1", pl.DataFrame([row], schema=lake.read_table("batches").schema))
    assert ingested_hashes(lake) == {"b1": b1.manifest_sha256}
    assert [b.batch_id for b in pending_batches(paths, lake)] == ["b2"]
    assert [b.batch_id for b in pending_batches(paths, lake, "offline", request=request)] == ["b2"]
    assert [b.batch_id for b in pending_batches(paths, lake, "clip:ViT-B-32")] == ["b1", "b2"]
    other = encoder_request_key({"MM_MODEL_PROFILE": "clip"})
    assert [b.batch_id for b in pending_batches(paths, lake, request=other)] == ["b1", "b2"]
