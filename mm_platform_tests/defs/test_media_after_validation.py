"""A media file that breaks after ingest validated it (changed on disk before the embedding step) is
quarantined by the in-process embedding step with its reason, like the Ray stage does: the run succeeds,
the record keeps its other modalities, and every line is still accounted for."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl

from mm_platform.demo import make_demo_batch
from mm_platform.lib.storage.lake import Lake
from mm_platform_tests.conftest import make_resources
from mm_platform_tests.defs.test_pipeline import BATCH_ASSETS


def test_an_image_broken_after_validation_is_quarantined_in_local_mode(paths, instance, tiny_clip):
    make_demo_batch(paths.landing_dir / "b1", n_records=8, seed=6, n_broken=0, id_prefix="b1")
    resources = make_resources(paths, tiny_clip, cluster_k=2, stream_tolerance="10m")
    instance.add_dynamic_partitions("batches", ["b1"])
    before = dg.AssetSelection.groups("raw", "aligned")
    assert dg.materialize(BATCH_ASSETS, partition_key="b1", instance=instance, resources=resources,
                          selection=before).success
    lake = Lake(paths.lake_dir)
    raw_images = lake.read_partition("raw_images", "b1")
    victim = raw_images.row(0, named=True)
    Path(victim["uri"]).write_bytes(b"\xff\xd8\xff\xe0 broken after validation")

    result = dg.materialize(BATCH_ASSETS, partition_key="b1", instance=instance, resources=resources,
                            selection=dg.AssetSelection.all() - before)
    assert result.success
    image = lake.read_partition("image_embeddings", "b1")
    assert victim["record_id"] not in image["record_id"].to_list()
    assert image.height == raw_images.height - 1
    quarantined = lake.read_partition("rejected_records", "b1").filter(pl.col("stage") == "image_embeddings")
    assert quarantined.select("record_id", "modality", "reason").rows() == [
        (victim["record_id"], "image", "corrupt_image")]
    assert victim["uri"] in quarantined["detail"][0]
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["every_line_accounted"]
    assert all(e.passed for e in result.get_asset_check_evaluations() if e.check_name == "vectors_valid")
    assert victim["record_id"] in lake.read_partition("fused_vectors", "b1")["record_id"].to_list()  # kept
