"""The embedding_map asset on a real lake: a batch refresh places only the new records against the stored
projection (old coordinates unchanged); only the re-cluster refits it."""

import dagster as dg
import polars as pl

from mm_platform.demo import make_demo_batch
from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.analysis.map_projection import load_projection
from mm_platform_tests.conftest import make_resources
from mm_platform_tests.defs.test_pipeline import BATCH_ASSETS, GLOBAL_ASSETS, run_batch, run_global


def _refresh_map(instance, resources):
    result = dg.materialize([*BATCH_ASSETS, *GLOBAL_ASSETS], instance=instance, resources=resources,
                            selection=dg.AssetSelection.assets("embedding_map"))
    assert result.success
    return result.asset_materializations_for_node("embedding_map")[0].metadata


def test_batch_refresh_extends_the_map_and_recluster_refits_it(paths, instance, tiny_clip):
    resources = make_resources(paths, tiny_clip, cluster_k=3, stream_tolerance="10m")
    make_demo_batch(paths.landing_dir / "b1", n_records=30, seed=3, n_broken=0, id_prefix="b1")
    assert run_batch("b1", instance, resources).success
    assert run_global(instance, resources).success
    lake = Lake(paths.lake_dir)
    before = lake.read_table("embedding_map")
    proj = load_projection(lake.root)
    assert proj is not None and before.height == lake.read_current("fused_vectors").height
    assert set(before["run_id"]) == {proj.run_id}

    make_demo_batch(paths.landing_dir / "b2", n_records=12, seed=4, n_broken=0, id_prefix="b2")
    assert run_batch("b2", instance, resources).success
    md = _refresh_map(instance, resources)
    assert md["refit"].value is False
    after = lake.read_table("embedding_map")
    new_ids = set(lake.read_partition("fused_vectors", "b2")["record_id"])
    assert md["records_placed"].value == len(new_ids) and md["records_kept"].value == before.height
    assert set(after["record_id"]) == set(before["record_id"]) | new_ids
    old = after.join(before, on="record_id", suffix="_before")
    assert old.height == before.height
    assert (old["x"] == old["x_before"]).all() and (old["y"] == old["y_before"]).all()
    assert load_projection(lake.root).fit_id == proj.fit_id  # not refitted
    assert after.schema == before.schema  # what the explorer reads keeps its columns and types
    placed = after.filter(pl.col("record_id").is_in(list(new_ids)))
    assert placed["x"].is_finite().all() and (placed["cluster_id"] >= 0).all()

    # the re-cluster job refits the projection on every record
    assert run_global(instance, resources).success
    refit = load_projection(lake.root)
    assert refit.fit_id != proj.fit_id and refit.fitted_rows == after.height
    assert set(lake.read_table("embedding_map")["run_id"]) == {refit.run_id}


def test_the_map_space_is_the_fused_layout_not_its_weights():
    from mm_platform.lib.analysis.recluster import layout_of

    assert layout_of("early:text=1.25,image=1.6,audio=0,tabular=0.15 (early_evidence)") == \
        "early:text,image,audio,tabular" == layout_of("early:text=1,image=1,audio=1,tabular=1")
    assert layout_of("shared_mean@abc") == "shared_mean@abc"
