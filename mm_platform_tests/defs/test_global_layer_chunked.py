"""The clusters / cluster_summary / qdrant_cluster_payloads assets on the batch-by-batch path
(lib/analysis/global_layer.py): a corpus above the sample size is compared on a sample and clustered batch by batch,
and a refresh that changes no cluster sends no Qdrant payload."""

import polars as pl

from mm_platform.demo import make_demo_batch
from mm_platform.lib.analysis import global_layer
from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.storage.qdrant import QdrantStore
from mm_platform_tests.conftest import make_resources
from mm_platform_tests.defs.test_pipeline import run_batch, run_global


def test_global_layer_batch_by_batch_and_payloads_sent_only_when_changed(paths, instance, tiny_clip, monkeypatch):
    resources = make_resources(paths, tiny_clip, cluster_k=3, stream_tolerance="10m")
    for b, seed in (("b1", 3), ("b2", 4)):
        make_demo_batch(paths.landing_dir / b, n_records=20, seed=seed, n_broken=0, id_prefix=b)
        assert run_batch(b, instance, resources).success
    monkeypatch.setattr(global_layer, "GLOBAL_SAMPLE", 15)  # 40 records: the sampled, batch-by-batch path
    result = run_global(instance, resources)
    assert result.success
    lake = Lake(paths.lake_dir)
    clusters = lake.current_clusters()
    fused = lake.read_current("fused_vectors")
    assert set(clusters["record_id"]) == set(fused["record_id"]) and clusters.height == 40
    assert clusters["cluster_id"].n_unique() == 3
    assert dict(clusters.select("record_id", "batch_id").iter_rows()) == dict(fused.select("record_id", "batch_id").iter_rows())
    metrics = lake.read_table("cluster_metrics")
    n_of = dict(metrics.select("space", "n_records").iter_rows())
    assert n_of["fused"] == 40 and 0 < n_of["text"] < 40  # the comparison ran on the sample
    summary = lake.read_table("cluster_summary")
    assert summary["size"].sum() == 40
    for row in summary.iter_rows(named=True):
        members = set(clusters.filter(pl.col("cluster_id") == row["cluster_id"])["record_id"])
        assert row["representative_record_ids"] and set(row["representative_record_ids"]) <= members
    first = result.asset_materializations_for_node("qdrant_cluster_payloads")[0].metadata
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        stored = {p.payload["record_id"]: p.payload["cluster_id"] for p in store.scroll_all()}
    assert stored == dict(clusters.select("record_id", "cluster_id").iter_rows())
    assert first["points_updated"].value + first["points_unchanged"].value == 40
    # the same data re-clustered: same clusters, so no payload is sent again
    again = run_global(instance, resources)
    assert again.success
    md = again.asset_materializations_for_node("qdrant_cluster_payloads")[0].metadata
    assert md["points_updated"].value == 0 and md["points_unchanged"].value == 40
