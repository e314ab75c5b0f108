"""The asset graph materialized with Dagster on temp dirs: a tiny CLIP model (shared text–image space) and
a tiny CLAP (audio), the fitted tabular encoder, stream alignment, embedded Qdrant, the Parquet lake and
DuckDB views."""

import json

import dagster as dg
import duckdb
import polars as pl
import pytest

from mm_platform.defs.resources import PipelineConfigResource
from mm_platform.definitions import defs
from mm_platform.demo import make_demo_batch
from mm_platform.lib.encoders.registry import load_encoders
from mm_platform.lib.storage.lake import Lake, refresh_warehouse
from mm_platform.lib.analysis.summaries import MAP_FILE
from mm_platform.lib.storage.qdrant import QdrantStore, point_id
from mm_platform.lib.search import SearchError, search
from mm_platform_tests.conftest import make_resources


def _loaded_assets() -> tuple[list, list]:
    """The assets (and checks) of the loaded code location, split into the batch job's and the rest."""
    batch = defs.resolve_job_def("batch_ingest_job").asset_layer.executable_asset_keys
    every = [*defs.assets, *defs.asset_checks]
    in_batch = [a for a in every if set(a.keys) & batch or {c.asset_key for c in a.check_keys} & batch]
    return in_batch, [a for a in every if not any(a is b for b in in_batch)]


BATCH_ASSETS, GLOBAL_ASSETS = _loaded_assets()


def run_batch(batch_id, instance, resources):
    if batch_id not in instance.get_dynamic_partitions("batches"):
        instance.add_dynamic_partitions("batches", [batch_id])
    return dg.materialize(BATCH_ASSETS, partition_key=batch_id, instance=instance, resources=resources)


def run_global(instance, resources):
    return dg.materialize(
        [*BATCH_ASSETS, *GLOBAL_ASSETS], instance=instance, resources=resources,
        selection=dg.AssetSelection.assets(*defs.resolve_job_def("recluster_job").asset_layer.executable_asset_keys),
    )


@pytest.fixture()
def ingested(paths, instance, tiny_clip):
    batch = make_demo_batch(paths.landing_dir / "b1", n_records=36, seed=3, n_broken=10, id_prefix="b1")
    resources = make_resources(paths, tiny_clip, cluster_k=4, stream_tolerance="10m")
    result = run_batch("b1", instance, resources)
    assert result.success
    return batch, resources, result


def test_batch_run_quarantines_bad_lines_and_accounts_for_every_line(ingested, paths):
    batch, _, result = ingested
    lake = Lake(paths.lake_dir)
    rejected = lake.read_partition("rejected_records", "b1")
    aligned = lake.read_partition("aligned_records", "b1")
    # every deliberately broken line is quarantined with the expected reason
    by_line = {(r["line_number"], r["reason"]) for r in rejected.iter_rows(named=True)}
    for line, reason in {**batch.broken, **batch.partial}.items():
        assert (line, reason) in by_line, f"line {line}: expected {reason}, got {rejected.filter(pl.col('line_number') == line)}"
    # the accounting check ran inside the run and passed
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["every_line_accounted"].passed
    assert checks["vectors_valid"].passed
    assert aligned.height == batch.n_records_expected_aligned
    # vectors for every aligned record, text and image in CLIP's shared space
    fused = lake.read_partition("fused_vectors", "b1")
    assert set(fused["record_id"]) == set(aligned["record_id"])
    text = lake.read_partition("text_embeddings", "b1")
    image = lake.read_partition("image_embeddings", "b1")
    audio = lake.read_partition("audio_embeddings", "b1")
    tabular = lake.read_partition("tabular_embeddings", "b1")
    assert text["space"][0] == image["space"][0]
    assert audio["model"][0] == "clap" and audio["space"][0] == "clap:clap" and audio["dim"][0] == 16
    assert tabular["dim"][0] == 64 and tabular["model_version"][0] == lake.read_partition(
        "raw_tabular", "b1")["encoder_version"][0]
    assert fused["dim"][0] == text["dim"][0] + image["dim"][0] + audio["dim"][0] + 64
    for modality, table in (("audio", audio), ("tabular", tabular)):
        assert set(table["record_id"]) == set(aligned.filter(pl.col(f"has_{modality}"))["record_id"])
    assert aligned["has_audio"].sum() > 0.8 * aligned.height and aligned["has_tabular"].sum() > 0.8 * aligned.height
    # materialization metadata names the model
    mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    md = mats["text_embeddings"].materialization.metadata
    assert md["model"].value.startswith("open_clip/") and md["dagster/row_count"].value == text.height


def test_qdrant_points_and_idempotent_rerun(ingested, paths, instance):
    _, resources, _ = ingested
    lake = Lake(paths.lake_dir)
    aligned = lake.read_partition("aligned_records", "b1")
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        assert store.count() == aligned.height
        assert set(store.vector_dims()) == {"text", "image", "audio", "tabular", "fused"}
        first = {str(p.id): p.payload for p in store.scroll_all()}
    assert set(first) == {point_id(r) for r in aligned["record_id"]}
    volatile = ("ingested_at", "rejected_at", "upserted_at", "cache_hit")
    before = {t: lake.read_partition(t, "b1").drop(c for c in volatile if c in lake.read_partition(t, "b1").columns)
              for t in ("raw_records", "raw_audio", "raw_tabular", "stream_features", "alignment_report",
                        "aligned_records", "rejected_records", "text_embeddings", "audio_embeddings",
                        "tabular_embeddings", "fused_vectors")}
    assert run_batch("b1", instance, resources).success
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        assert store.count() == aligned.height
        again = {str(p.id): p.payload for p in store.scroll_all()}
    assert again == first
    for table, df in before.items():
        now = lake.read_partition(table, "b1").select(df.columns)
        assert now.equals(df), table
    # the re-run embedded nothing: every vector came from the cache (same content, same model)
    assert lake.read_partition("text_embeddings", "b1")["cache_hit"].all()
    assert lake.read_partition("image_embeddings", "b1")["cache_hit"].all()
    assert lake.read_partition("audio_embeddings", "b1")["cache_hit"].all()
    assert lake.read_partition("tabular_embeddings", "b1")["cache_hit"].all()


def test_rerun_of_a_cached_batch_loads_no_encoder(ingested, instance):
    """A run that encodes nothing (every content already in the embedding cache) never builds a model: the
    cache is keyed by the encoders' identities, read from their files."""
    from mm_platform.defs import resources as resources_module

    _, resources, _ = ingested
    resources_module._LOADED_ENCODERS.clear()  # as in a new run process
    assert run_batch("b1", instance, resources).success
    (encoders,) = resources_module._LOADED_ENCODERS.values()
    assert [m for m in ("text", "image", "audio") if encoders.loaded(m)] == []


def test_streams_aligned_and_reported(ingested, paths):
    _, _, result = ingested
    lake = Lake(paths.lake_dir)
    report = lake.read_partition("alignment_report", "b1")
    assert report["stream"].to_list() == ["telemetry"]
    row = report.row(0, named=True)
    assert row["matched"] + row["unmatched"] == row["records_with_timestamp"] > 0
    assert 0.5 < row["coverage"] < 1.0 and row["lag_max_s"] <= 600 and row["tolerance_s"] == 600
    aligned = lake.read_partition("aligned_records", "b1")
    features = lake.read_partition("stream_features", "b1")
    assert int(features["streams_matched"].sum()) == row["matched"] and features.height == row["records"]
    matched = aligned.filter(pl.col("streams_matched") == 1)
    assert 0 < matched.height <= row["matched"]
    assert matched["telemetry__temperature_c"].is_not_null().all()
    assert aligned.filter(pl.col("streams_matched") == 0)["telemetry__lag_s"].is_null().all()
    # matched readings are tabular features of the record
    typed = lake.read_partition("raw_tabular", "b1")
    assert "telemetry.temperature_c" in typed.columns and typed.schema["price"] == pl.Float64
    assert typed.schema["material"] == pl.String


def test_tabular_encoder_fitted_once_and_reused(ingested, paths, instance):
    _, resources, _ = ingested
    lake = Lake(paths.lake_dir)
    first = lake.read_partition("raw_tabular", "b1")["encoder_version"][0]
    make_demo_batch(paths.landing_dir / "b2", n_records=12, seed=4, n_broken=0, id_prefix="b2")
    assert run_batch("b2", instance, resources).success
    second = lake.read_partition("raw_tabular", "b2")
    assert set(second["encoder_version"]) == {first}
    assert set(lake.read_partition("tabular_embeddings", "b2")["model_version"]) == {first}


def test_rewritten_manifest_removes_dropped_points(ingested, paths, instance):
    _, resources, _ = ingested
    manifest = paths.landing_dir / "b1" / "records.jsonl"
    lines = [ln for ln in manifest.read_text().splitlines() if ln.strip()]
    kept = lines[:10]
    manifest.write_text("\n".join(kept) + "\n")
    assert run_batch("b1", instance, resources).success
    lake = Lake(paths.lake_dir)
    aligned = lake.read_partition("aligned_records", "b1")
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        ids = {p.payload["record_id"] for p in store.scroll_all()}
    assert ids == set(aligned["record_id"])
    assert aligned.height <= 10


def test_global_layer_clusters_summaries_payloads_and_sql(ingested, paths, instance):
    _, resources, _ = ingested
    result = run_global(instance, resources)
    assert result.success
    lake = Lake(paths.lake_dir)
    clusters = lake.current_clusters()
    fused = lake.read_current("fused_vectors")
    assert set(clusters["record_id"]) == set(fused["record_id"])
    assert clusters["cluster_id"].n_unique() == 4  # cluster_k=4 was asked for
    summary = lake.read_table("cluster_summary")
    assert summary["size"].sum() == clusters.height
    for row in summary.iter_rows(named=True):
        members = set(clusters.filter(pl.col("cluster_id") == row["cluster_id"])["record_id"])
        assert set(row["representative_record_ids"]) <= members and row["representative_record_ids"]
        assert row["top_terms"] and row["name"]
        assert 0 <= row["audio_coverage"] <= 1 and 0 <= row["tabular_coverage"] <= 1
        assert row["name_source"] == "top_terms" and row["n_outliers"] == 0
        assert set(json.loads(row["agreement_json"])) == {"text", "image", "audio", "tabular"}
        assert sum(json.loads(row["label_counts_json"]).values()) == row["size"]
    metrics = lake.read_table("cluster_metrics")
    assert set(metrics["space"]) == {"fused", "text", "image", "audio", "tabular", "fused:early",
                                     "fused:text+image", "fused:shared_mean", "fused:early_evidence"}
    ev = metrics.filter(pl.col("space") == "fused:early_evidence")
    assert ev.height == 1 and ev["k"][0] == 4
    agreement = dict(metrics.select("space", "agreement_nmi").iter_rows())
    assert agreement["fused"] == 1.0 and all(0 <= agreement[m] <= 1 for m in ("text", "image", "audio"))
    assert metrics.filter(pl.col("space") == "fused")["nmi"][0] is not None
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    loss_gap = checks.pop("validation_loss_close_to_training")  # a WARN check; its value depends on the data
    assert isinstance(loss_gap, bool)
    assert checks == {"clusters_cover_fused_vectors": True, "summary_sizes_match": True}
    # the per-space scores are one table in the UI, with a column schema, one row per space
    table_md = result.asset_materializations_for_node("clusters")[0].metadata["metrics"]
    assert [c.name for c in table_md.schema.columns][:3] == ["space", "algorithm", "k"]
    assert {r.data["space"] for r in table_md.records} == set(metrics["space"])
    map_md = result.asset_materializations_for_node("embedding_map")[0].metadata
    assert map_md["explorer"].value == "http://127.0.0.1:8765/map" and "data:image/png" in map_md["map"].value
    # cluster ids reached the Qdrant payloads
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        payload_clusters = {p.payload["record_id"]: p.payload["cluster_id"] for p in store.scroll_all()}
    assert payload_clusters == dict(clusters.select("record_id", "cluster_id").iter_rows())
    # SQL marts are in the warehouse file
    refresh_warehouse(lake, paths.duckdb_path)
    con = duckdb.connect(str(paths.duckdb_path), read_only=True)
    try:
        profiles = con.execute("SELECT sum(n_records), count(*) FROM cluster_profiles").fetchone()
        assert profiles == (clusters.height, 4)
        quality = con.execute("SELECT n_manifest_lines, n_aligned_records FROM batch_quality").fetchone()
        assert quality[1] == lake.read_partition("aligned_records", "b1").height
    finally:
        con.close()


def test_search_across_modalities_in_a_shared_space(ingested, paths, tiny_clip):
    _, resources, _ = ingested
    encoders = load_encoders(resources["encoders"].settings(), resources["device"].config())
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        for modality in ("text", "image", "fused"):
            hits = search(store, encoders, text="a ceramic mug for coffee", modality=modality, k=5)
            assert len(hits) == 5 and all(h.vector == modality for h in hits)
            assert hits == sorted(hits, key=lambda h: -h.score)
        some_image = next(p.payload["image_uri"] for p in store.scroll_all() if p.payload.get("image_uri"))
        hits = search(store, encoders, image=some_image, modality="image", k=3)
        assert hits[0].payload["image_uri"] == some_image and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert search(store, encoders, image=some_image, modality="text", k=3)
        with pytest.raises(SearchError):
            search(store, encoders, text="   ", k=3)


def test_search_by_audio_clip_and_by_fields(ingested, paths, tiny_clip):
    _, resources, _ = ingested
    from mm_platform.lib.storage.model_files import tabular_state_dir
    from mm_platform.lib.features.tabular import load_state

    encoders = load_encoders(resources["encoders"].settings(), resources["device"].config())
    lake = Lake(paths.lake_dir)
    state = load_state(tabular_state_dir(lake))
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        clip = next(p.payload for p in store.scroll_all() if p.payload.get("audio_uri"))
        hits = search(store, encoders, audio=clip["audio_uri"], k=3)
        assert hits[0].payload["record_id"] == clip["record_id"] and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert all(h.vector == "audio" for h in hits)
        assert len(search(store, encoders, audio=clip["audio_uri"], modality="fused", k=3)) == 3
        hits = search(store, encoders, fields={"price": 12.5, "material": "ceramic"}, tabular_state=state, k=4)
        assert len(hits) == 4 and all(h.vector == "tabular" for h in hits)
        with pytest.raises(SearchError, match="tabular"):
            search(store, encoders, fields={"price": 3}, tabular_state=state, modality="text", k=3)
        with pytest.raises(SearchError, match="expected a number"):
            search(store, encoders, fields={"price": "cheap"}, tabular_state=state, k=3)
        with pytest.raises(SearchError, match="fitted"):
            search(store, encoders, fields={"price": 3}, tabular_state=None, k=3)
        # a query embedded by another audio model than the collection's (CLAP here) is refused, not ranked
        from mm_platform.lib.encoders.registry import EncoderSettings

        offline = load_encoders(EncoderSettings(profile="offline"), resources["device"].config())
        with pytest.raises(SearchError, match="were made by clap"):
            search(store, offline, audio=clip["audio_uri"], k=3)


def test_alignment_shared_space_map_and_classifiers(ingested, paths, instance):
    _, resources, _ = ingested
    assert run_global(instance, resources).success
    lake = Lake(paths.lake_dir)
    from mm_platform.lib.vectors.corpus import load_alignment

    model = load_alignment(lake)
    assert model is not None and set(model.modalities) == {"text", "image", "audio", "tabular"}
    # CLIP's text and image share a space: it is the shared space, and audio + tabular heads are trained into it
    assert model.anchors == ("text", "image") and model.shared_dim == lake.read_table("text_embeddings")["dim"][0]
    shared = lake.read_table("shared_embeddings")
    assert set(shared["head_version"]) == {model.version}
    assert set(shared["modality"]) == {"text", "image", "audio", "tabular", "mean"}
    fused = lake.read_current("fused_vectors")
    assert set(shared.filter(pl.col("modality") == "mean")["record_id"]) == set(fused["record_id"])
    emap = lake.read_table("embedding_map")
    assert emap.height == fused.height and emap["x"].is_finite().all()
    assert (paths.lake_dir / MAP_FILE).stat().st_size > 1000
    metrics = lake.read_table("classifier_metrics")
    assert {"early", "late", "late_learned", "text", "image", "audio", "tabular"} == set(metrics["strategy"])
    assert metrics["macro_f1"].is_between(0, 1).all()
    # cluster names from label prompts, nearest in the shared space
    prompts = "mug,teapot,trail shoe,backpack,headphones,desk lamp"
    named = {**resources, "pipeline": PipelineConfigResource(cluster_k=4, stream_tolerance="10m",
                                                             cluster_label_prompts=prompts)}
    assert dg.materialize([*BATCH_ASSETS, *GLOBAL_ASSETS], instance=instance, resources=named,
                          selection=dg.AssetSelection.assets("cluster_summary")).success
    summary = lake.read_table("cluster_summary")
    assert set(summary["name_source"]) == {"label_prompt"} and set(summary["name"]) <= set(prompts.split(","))
    # retraining with the same seed gives the same heads; re-clustering gives the same clusters
    before = lake.current_clusters().select("record_id", "cluster_id").sort("record_id")
    assert run_global(instance, resources).success
    assert load_alignment(lake).version == model.version
    assert lake.current_clusters().select("record_id", "cluster_id").sort("record_id").equals(before)


def test_shared_mean_dbscan_with_nearest_outlier_policy(paths, instance, tiny_clip):
    make_demo_batch(paths.landing_dir / "b1", n_records=36, seed=3, n_broken=0, id_prefix="b1")
    resources = make_resources(paths, tiny_clip, fusion_strategy="shared_mean", cluster_algorithm="dbscan",
                               outlier_policy="nearest")
    assert run_batch("b1", instance, resources).success
    assert run_global(instance, resources).success
    lake = Lake(paths.lake_dir)
    cl = lake.current_clusters()
    assert cl.height == lake.read_current("fused_vectors").height
    assert (cl["cluster_id"] >= 0).all()  # outliers joined their nearest cluster ...
    fused_row = lake.read_table("cluster_metrics").filter(pl.col("space") == "fused").row(0, named=True)
    assert fused_row["fusion_strategy"].startswith("shared_mean@") and fused_row["algorithm"] == "dbscan"
    assert cl["is_outlier"].sum() == fused_row["n_outliers"]  # ... and stay flagged
    # a new batch is placed in the shared_mean clusters at once
    make_demo_batch(paths.landing_dir / "b2", n_records=12, seed=5, n_broken=0, id_prefix="b2")
    assert run_batch("b2", instance, resources).success
    assert lake.read_partition("cluster_assignments", "b2").height == lake.read_partition("fused_vectors", "b2").height


def test_search_through_the_shared_space(ingested, paths, instance, tiny_clip):
    _, resources, _ = ingested
    assert run_global(instance, resources).success
    from mm_platform.lib.search import SharedSpace

    lake = Lake(paths.lake_dir)
    shared = SharedSpace.from_lake(lake)
    encoders = load_encoders(resources["encoders"].settings(), resources["device"].config())
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        clip = next(p.payload for p in store.scroll_all() if p.payload.get("audio_uri"))
        for target in ("text", "image", "tabular", "shared"):
            hits = search(store, encoders, audio=clip["audio_uri"], modality=target, k=5, shared=shared)
            assert len(hits) == 5 and hits[0].vector == f"shared:{'mean' if target == 'shared' else target}"
            assert hits == sorted(hits, key=lambda h: -h.score) and hits[0].payload["record_id"]
        with pytest.raises(SearchError, match="shared space"):
            search(store, encoders, audio=clip["audio_uri"], modality="text", k=5, shared=None)
