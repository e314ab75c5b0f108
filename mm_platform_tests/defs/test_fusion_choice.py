"""The fusion chosen by evidence, end to end on Dagster: a re-cluster scores the candidates, stores the chosen
weights with their evidence, and the next batch is fused with them (same layout, weights on every row)."""

import json

import dagster as dg
import numpy as np
import polars as pl

from mm_platform.demo import make_demo_batch
from mm_platform.lib.analysis.fusion_choice import WEIGHTS_FILE, load_choice
from mm_platform.lib.storage.lake import Lake
from mm_platform_tests.conftest import make_resources
from mm_platform_tests.defs.test_pipeline import BATCH_ASSETS, GLOBAL_ASSETS, run_batch


def recluster(instance, resources):
    return dg.materialize([*BATCH_ASSETS, *GLOBAL_ASSETS], instance=instance, resources=resources,
                          selection=dg.AssetSelection.assets("recluster_assignments").required_multi_asset_neighbors())


def test_recluster_chooses_weights_that_the_next_batch_is_fused_with(paths, instance, tiny_clip):
    make_demo_batch(paths.landing_dir / "b1", n_records=36, seed=3, n_broken=0, id_prefix="b1")
    resources = make_resources(paths, tiny_clip, cluster_k=4, stream_tolerance="10m")
    assert run_batch("b1", instance, resources).success
    lake = Lake(paths.lake_dir)
    b1 = lake.read_partition("fused_vectors", "b1")
    assert set(b1["weights_source"]) == {"MM_FUSION_WEIGHTS"}  # nothing chosen yet: configured weights
    assert all(set(json.loads(w)) == set(m) for w, m in zip(b1["weights_json"], b1["modalities"], strict=True))

    result = recluster(instance, resources)
    assert result.success
    md = result.asset_materializations_for_node("clusters")[0].metadata
    choice = load_choice(lake.root)
    assert choice is not None and (lake.root / WEIGHTS_FILE).exists()
    record = md["fusion_choice"].value
    assert record["applied"] and record["best"] == choice.candidate and record["weights"] == choice.weights
    # the demo is labelled: with MM_FUSION_SELECT=auto the choice is by NMI on the labels, and says so
    assert choice.reason.startswith("labels") and set(record["label_nmi"]) >= {"early_uniform", "early_evidence"}
    assert set(record["evidence"]["weights"]) == {"text", "image", "audio", "tabular"}
    assert 0 <= md["weighting_share_of_recluster"].value < 1
    metrics = lake.read_table("cluster_metrics")
    fused = metrics.filter(pl.col("space") == "fused").row(0, named=True)
    assert json.loads(fused["weights_json"]) == choice.weights
    assert json.loads(fused["selection_json"])["best"] == choice.candidate
    assert fused["fusion_strategy"].endswith(f"({choice.candidate})")
    scored = metrics.filter(pl.col("selection_score").is_not_null())
    assert {"fused:early", "fused:early_evidence", "text", "image"} <= set(scored["space"])
    # the best candidate by the labels is at least as good on them as every other candidate
    assert record["label_nmi"][choice.candidate] == max(record["label_nmi"].values())

    make_demo_batch(paths.landing_dir / "b2", n_records=12, seed=5, n_broken=0, id_prefix="b2")
    assert run_batch("b2", instance, resources).success
    b2 = lake.read_partition("fused_vectors", "b2")
    assert set(b2["weights_source"]) == {choice.source}
    assert b2["dim"][0] == b1["dim"][0]  # the layout never depends on the weights
    for w, mods in zip(b2["weights_json"], b2["modalities"], strict=True):
        row = json.loads(w)
        assert set(row) == set(mods)
        positive = {m for m, v in choice.weights.items() if v > 0}
        if set(mods) & positive:  # otherwise fused uniformly over what the record has
            assert row == {m: choice.weights[m] for m in mods}
    assert np.allclose(np.linalg.norm(np.asarray(b2["embedding"].to_list()), axis=1), 1.0, atol=1e-4)
    assert lake.read_partition("cluster_assignments", "b2").height == b2.height


def test_fixed_selection_keeps_configured_weights_and_still_records_the_evidence(paths, instance, tiny_clip):
    make_demo_batch(paths.landing_dir / "b1", n_records=30, seed=4, n_broken=0, id_prefix="b1")
    resources = make_resources(paths, tiny_clip, cluster_k=3, fusion_select="fixed", fusion_weights="audio=0")
    assert run_batch("b1", instance, resources).success
    result = recluster(instance, resources)
    assert result.success
    lake = Lake(paths.lake_dir)
    assert load_choice(lake.root) is None
    md = result.asset_materializations_for_node("clusters")[0].metadata
    assert md["fusion_choice"].value["applied"] is False and md["evidence_weights"].value["weights"]
    b1 = lake.read_partition("fused_vectors", "b1")
    assert b1["fusion"][0] == "early:text=1,image=1,tabular=1"  # fixed: weight-0 audio dropped, as before
