"""The batch job through Dagster with ``MM_COMPUTE=ray`` on a real two-node Ray cluster on localhost: the
same vectors, cache, provenance, quarantine and accounting as the in-process path; a file that breaks after
ingest validated it is quarantined by the Ray stage, and the run completes."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from mm_platform.defs.resources import ComputeResource
from mm_platform.demo import make_demo_batch
from mm_platform.lib.compute.warm_actors import list_actors, namespace_for, stop_actors
from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.settings import Paths
from mm_platform_tests.conftest import make_resources
from mm_platform_tests.defs.test_pipeline import BATCH_ASSETS, run_batch

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.e2e

NODE = {"num_cpus": 1, "object_store_memory": 100 << 20}
EMBEDDINGS = ("text_embeddings", "image_embeddings", "audio_embeddings", "tabular_embeddings")


@pytest.fixture()
def cluster():
    """A head node and a second node (separate raylets) on localhost."""
    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    c.add_node(**NODE)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def _other_paths(root: Path) -> Paths:
    env = {"MM_DATA_DIR": str(root)}
    p = Paths.from_env(env)
    p.landing_dir.mkdir(parents=True)
    return p


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort("record_id")


def test_batch_job_on_two_node_cluster_matches_local(paths, instance, tiny_clip, cluster, tmp_path) -> None:
    make_demo_batch(paths.landing_dir / "b1", n_records=12, seed=5, n_broken=4, id_prefix="b1")
    compute = ComputeResource(mode="ray", ray_address=cluster.address, data_dir=str(paths.data_dir))
    ray_result = run_batch("b1", instance, make_resources(paths, tiny_clip, compute=compute))
    assert ray_result.success
    assert sum(1 for n in ray.nodes() if n["Alive"]) == 2
    namespace = namespace_for(paths.data_dir)
    assert len(list_actors(namespace)) == 3  # text, image, audio encoders stay warm for the next run

    local_paths = _other_paths(tmp_path / "local_data")
    make_demo_batch(local_paths.landing_dir / "b1", n_records=12, seed=5, n_broken=4, id_prefix="b1")
    with dg.DagsterInstance.ephemeral() as local_instance:
        assert run_batch("b1", local_instance, make_resources(local_paths, tiny_clip)).success

    got, want = Lake(paths.lake_dir), Lake(local_paths.lake_dir)
    for table in EMBEDDINGS:
        a, b = _sorted(got.read_partition(table, "b1")), _sorted(want.read_partition(table, "b1"))
        assert a.height == b.height > 0, table
        cols = ["record_id", "batch_id", "model", "model_version", "space", "dim", "content_sha256", "cache_hit"]
        assert a.select(cols).equals(b.select(cols)), table
        va, vb = np.asarray(a["embedding"].to_list()), np.asarray(b["embedding"].to_list())
        cos = (va * vb).sum(1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1))
        assert cos.min() >= 0.9999, table
    drop = ["rejected_at", "detail"]  # detail names the data dir's files
    rej_ray = got.read_partition("rejected_records", "b1").drop(drop).sort("line_number", "modality")
    rej_local = want.read_partition("rejected_records", "b1").drop(drop).sort("line_number", "modality")
    assert rej_ray.height > 0 and rej_ray.equals(rej_local)
    checks = {e.check_name: e.passed for e in ray_result.get_asset_check_evaluations()}
    assert checks["every_line_accounted"] and checks["vectors_valid"]

    # a second batch: one image breaks after raw_images validated it; the Ray stage quarantines it
    make_demo_batch(paths.landing_dir / "b2", n_records=6, seed=6, n_broken=0, id_prefix="b2")
    resources = make_resources(paths, tiny_clip, compute=compute)
    instance.add_dynamic_partitions("batches", ["b2"])
    before = dg.AssetSelection.groups("raw", "streams", "aligned")
    assert dg.materialize(BATCH_ASSETS, partition_key="b2", instance=instance, resources=resources,
                          selection=before).success
    raw_images = got.read_partition("raw_images", "b2")
    victim = raw_images.row(0, named=True)
    Path(victim["uri"]).write_bytes(b"\xff\xd8\xff\xe0 broken after validation")
    rest = dg.AssetSelection.all() - before
    result = dg.materialize(BATCH_ASSETS, partition_key="b2", instance=instance, resources=resources,
                            selection=rest)
    assert result.success
    image = got.read_partition("image_embeddings", "b2")
    assert victim["record_id"] not in image["record_id"].to_list()
    assert image.height == raw_images.height - 1
    rej = got.read_stage_rejections("b2").filter(pl.col("stage") == "image_embeddings")
    assert rej.select("record_id", "modality", "reason").rows() == [(victim["record_id"], "image", "corrupt_image")]
    assert victim["uri"] in rej["detail"][0]
    quarantined = got.read_partition("rejected_records", "b2").filter(pl.col("stage") == "image_embeddings")
    assert quarantined["record_id"].to_list() == [victim["record_id"]]  # in the quarantine table, this run
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["every_line_accounted"]
    assert all(e.passed for e in result.get_asset_check_evaluations() if e.check_name == "vectors_valid")
    assert victim["record_id"] in got.read_partition("fused_vectors", "b2")["record_id"].to_list()  # kept

    # cluster names embed their words through the warm text actor: the in-process encoder's vectors
    words = ["circle", "a red square", "ünïcödé"]
    with dg.build_resources({"encoders": resources["encoders"], "compute": compute}) as res:
        on_ray = res.compute.text_encode(res.encoders)(words)
        in_process = res.encoders.encoders.text().encode(words)
    cos = (on_ray * in_process).sum(1) / (np.linalg.norm(on_ray, axis=1) * np.linalg.norm(in_process, axis=1))
    assert on_ray.shape == in_process.shape and cos.min() >= 0.9999

    assert len(stop_actors(namespace)) == 3 and list_actors(namespace) == []
