"""The ingest ledger: a failed global run is owed to the next ingest, and a success pays the debt."""

from __future__ import annotations

import polars as pl

from mm_platform.lib import lake as lake_mod
from mm_platform.lib.lake import Lake
from mm_platform.lib.ledger import (
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
