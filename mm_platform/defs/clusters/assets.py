"""Clusters layer: full re-clusters with stable ids, eager assignment of new batches, explanations.

- ``clusters`` (a multi-asset: ``recluster_assignments``, ``cluster_metrics``, ``modality_assignments``)
  re-clusters every current record from its fused vector (in a PCA space), maps the new clusters onto the
  previous ids by overlap so a cluster keeps its id across re-clusterings, scores every space against the
  labels, and saves the cluster model (projection + centroids). It runs on a cron automation condition
  (nightly), when it has never run, and on demand (``mm-platform recluster``).
- ``cluster_assignments`` places each new batch's records into the existing clusters at once.
- ``cluster_summary`` explains the current clusters; ``embedding_map`` draws them.

The logic lives in :mod:`mm_platform.lib.analysis.recluster` and :mod:`mm_platform.lib.analysis.summaries`.
"""

import uuid

from types import SimpleNamespace

import dagster as dg
import numpy as np

from mm_platform.defs.automation import GLOBAL_AUTOMATION, RECLUSTER_AUTOMATION
from mm_platform.defs.metadata import md_escape, preview, table
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import ComputeResource, EncodersResource, PipelineConfigResource, WarehouseResource
from mm_platform.lib.analysis.embedding_map import png_markdown
from mm_platform.lib.analysis.fusion_choice import zeroed
from mm_platform.lib.landing.ledger import fused_fingerprint
from mm_platform.lib.analysis.recluster import (
    RECLUSTER_TABLES,
    ReclusterError,
    assignment_frame,
    clustering_input,
    load_cluster_model,
    recluster,
)
from mm_platform.lib.settings import serve_url
from mm_platform.lib.analysis.summaries import draw_map, summary_frame, update_embedding_map
from mm_platform.lib.storage.tables import empty_frame

EMBEDDINGS = [dg.AssetKey(f"{m}_embeddings") for m in ("text", "image", "audio", "tabular")]
RECLUSTER_DEPS = [dg.AssetKey("fused_vectors"), *EMBEDDINGS, dg.AssetKey("aligned_records"),
                  dg.AssetKey("raw_records"), dg.AssetKey("shared_space_model")]
RECLUSTER_DESCRIPTIONS = {
    "recluster_assignments": "Every current record's cluster from the last full re-cluster (stable ids).",
    "cluster_metrics": "One row per clustered space of the last re-cluster: silhouette, NMI/ARI against the "
                       "labels, agreement with the fused clustering, and the fusion choice.",
    "modality_assignments": "Each single modality's own clustering of the last re-cluster (per-modality "
                            "agreement in cluster_summary).",
}


@dg.multi_asset(
    name="clusters",
    specs=[dg.AssetSpec(table_name, deps=RECLUSTER_DEPS, group_name="clusters", kinds={"scikitlearn", "parquet"},
                        tags={"layer": "clusters"}, automation_condition=RECLUSTER_AUTOMATION,
                        description=RECLUSTER_DESCRIPTIONS[table_name])
           for table_name in RECLUSTER_TABLES],
)
def clusters(context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource):
    """A full re-cluster of every current record (PCA space; K-Means with k by silhouette, HDBSCAN or DBSCAN
    with outliers as -1, kept or moved to the nearest cluster by ``MM_OUTLIER_POLICY``), on the vectors of
    ``MM_FUSION_STRATEGY``: ``early`` (the fused vectors) or ``shared_mean`` (the mean of a record's
    shared-space projections). New clusters take the ids of the previous clusters they overlap most, so a
    cluster keeps its id and name as data grows; how many records moved is recorded. Every other fusion
    strategy, text+image alone, and each single modality are clustered the same way for comparison:
    silhouette, NMI/ARI against the labels and agreement (NMI) with the fused clustering go to
    ``cluster_metrics``. Saves the cluster model that places new batches at once.

    Unless ``MM_FUSION_SELECT=fixed`` (or ``MM_FUSION_STRATEGY=shared_mean``), the fusion itself is chosen here:
    evidence weights (kNN agreement between modalities, no labels) are computed on a sample, every fusion
    candidate (uniform, evidence weights, each single modality, text+image) is scored on the modalities' kNN
    graphs (or by NMI on the labels when at least 20 records are labelled and the mode is ``auto``), the best
    is clustered as the default and its weights are stored for the next batches' ``fused_vectors``, with the
    evidence and the reason in ``cluster_metrics`` (``weights_json``, ``selection_score``, ``selection_json``)
    and in the metadata (``fusion_choice``, ``modalities_weighted_zero``)."""
    lake = warehouse.lake
    try:
        out = recluster(lake, pipeline, uuid.uuid4().hex[:12], fused_fingerprint(lake))
    except ReclusterError as exc:
        raise dg.Failure(str(exc)) from exc
    if out is None:
        lake.write_global("recluster_assignments", empty_frame("recluster_assignments"))
        yield dg.MaterializeResult(asset_key="recluster_assignments", metadata={"dagster/row_count": 0, "k": 0})
        yield dg.MaterializeResult(asset_key="cluster_metrics", metadata={"note": "nothing to cluster"})
        yield dg.MaterializeResult(asset_key="modality_assignments", metadata={"note": "nothing to cluster"})
        return
    lake.write_global("modality_assignments", out.modality_assignments if out.modality_assignments is not None
                      else empty_frame("modality_assignments"))
    lake.write_global("recluster_assignments", out.assignments)
    lake.write_global("cluster_metrics", out.metrics)
    res, mapping, sel = out.res, out.mapping, out.sel
    sizes = out.assignments.group_by("cluster_id").len().sort("cluster_id")
    md: dict[str, object] = {
        "dagster/row_count": out.assignments.height,
        "algorithm": res.algorithm,
        "fusion_strategy": out.spec,
        "outlier_policy": pipeline.outlier_policy,
        "k": res.k,
        "outliers": res.n_outliers,
        "silhouette": res.silhouette,
        "reduction": res.params.get("reduction"),
        "cluster_sizes": {str(c): int(n) for c, n in sizes.iter_rows()},
        "k_scores": {str(k): round(v, 4) for k, v in res.k_scores.items()},
        "records_moved": mapping.moved,
        "records_compared": mapping.common,
        "moved_fraction": round(mapping.moved_fraction, 4),
        "new_cluster_ids": mapping.new_ids,
        "retired_cluster_ids": mapping.retired_ids,
        "run_id": out.run_id,
        # one row per space (the selected fusion, each other strategy, text+image, each modality)
        "metrics": table(out.metrics.sort("nmi", descending=True, nulls_last=True),
                         ["space", "algorithm", "k", "n_records", "n_outliers", "silhouette", "nmi", "ari",
                          "agreement_nmi"], n=50),
        "evidence_weights": dg.MetadataValue.json({**sel.evidence.as_dict(), "seconds": round(sel.evidence_s, 4)}),
        "fusion_choice": dg.MetadataValue.json(sel.record()),
        "fusion_weights": out.chosen_json or "",
        "weighting_seconds": round(sel.seconds, 4),
        "weighting_share_of_recluster": round(sel.seconds / out.seconds, 4) if out.seconds > 0 else 0.0,
    }
    zero = zeroed(sel.weights) if sel.by_evidence else sel.evidence.zeroed
    if zero:
        md["modalities_weighted_zero"] = ", ".join(zero)
    context.log.info(f"re-clustered {out.assignments.height} records into {res.k} clusters; {mapping.moved} of "
                     f"{mapping.common} previously clustered records changed cluster")
    yield dg.MaterializeResult(asset_key="recluster_assignments", metadata=md)
    yield dg.MaterializeResult(asset_key="cluster_metrics", metadata={
        "dagster/row_count": out.metrics.height, "run_id": out.run_id,
        "preview": preview(out.metrics, ["space", "algorithm", "k", "silhouette", "nmi", "agreement_nmi"])})
    modality = out.modality_assignments
    yield dg.MaterializeResult(asset_key="modality_assignments", metadata={
        "dagster/row_count": modality.height if modality is not None else 0, "run_id": out.run_id,
        **({"preview": preview(modality, ["record_id", "modality", "cluster_id"])} if modality is not None else {})})


@dg.asset(
    partitions_def=batches_partitions,
    deps=[dg.AssetKey("fused_vectors"), dg.AssetKey("raw_records"), *EMBEDDINGS],
    group_name="clusters",
    kinds={"numpy", "parquet"},
    tags={"layer": "clusters"},
)
def cluster_assignments(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource
) -> dg.MaterializeResult:
    """The batch's records placed into the existing clusters at once (nearest centroid of the last full
    re-cluster, in its PCA space, on the same fusion strategy), so new data is clustered without waiting for
    the next re-cluster. Empty until a first full clustering exists."""
    batch_id = context.partition_key
    lake = warehouse.lake
    model = load_cluster_model(lake)
    try:
        ids, batch_ids, X, _ = (clustering_input(lake, pipeline, batch_id) if model is not None
                                else ([], [], None, ""))
    except ReclusterError as exc:
        raise dg.Failure(str(exc)) from exc
    if model is None or not ids:
        lake.write_partition("cluster_assignments", batch_id, empty_frame("cluster_assignments"))
        reason = "no cluster model yet: the first full clustering places these records" if model is None else "no vectors"
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, "note": reason})
    if X.shape[1] != model.input_dim:
        raise dg.Failure(
            f"fused vectors of batch {batch_id} have {X.shape[1]} dims, the cluster model expects "
            f"{model.input_dim} (model or fusion changed): run a full re-cluster (`mm-platform recluster`)"
        )
    labels, dist = model.assign(X)
    df = assignment_frame(ids, batch_ids, labels, dist, f"{model.algorithm}+assign", model.run_id)
    lake.write_partition("cluster_assignments", batch_id, df)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "model_run_id": model.run_id,
            "outliers": int((labels == -1).sum()),
            "mean_distance": float(np.nanmean(dist)) if len(dist) else 0.0,
            "preview": preview(df, ["record_id", "cluster_id", "distance_to_centroid"]),
        }
    )


@dg.asset(
    deps=[*(dg.AssetKey(t) for t in RECLUSTER_TABLES), dg.AssetKey("cluster_assignments"), dg.AssetKey("raw_text"),
          dg.AssetKey("aligned_records"), dg.AssetKey("fused_vectors"), dg.AssetKey("shared_space_model")],
    group_name="clusters",
    kinds={"scikitlearn", "parquet"},
    tags={"layer": "clusters"},
    automation_condition=GLOBAL_AUTOMATION,
)
def cluster_summary(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource,
    encoders: EncodersResource, compute: ComputeResource,
) -> dg.MaterializeResult:
    """What each current cluster is: size, outliers, modality coverage, the records closest to its centre,
    its top terms (class-based TF-IDF over its texts), a name — the nearest of the configured label
    prompts (``MM_CLUSTER_LABEL_PROMPTS``) in the shared space, else its top terms — its label counts, and
    per-modality agreement: for each modality, the share of the cluster's members (that have it) which that
    modality alone clusters together."""
    lake = warehouse.lake
    try:
        # names embed words with the warm text actor in ray mode (the run process loads no model)
        text_encoder = lambda: SimpleNamespace(encode=compute.text_encode(encoders))  # noqa: E731
        df = summary_frame(lake, pipeline, text_encoder, context.log.warning)
    except ReclusterError as exc:
        raise dg.Failure(str(exc)) from exc
    if df is None:
        lake.write_global("cluster_summary", empty_frame("cluster_summary"))
        return dg.MaterializeResult(metadata={"dagster/row_count": 0})
    lake.write_global("cluster_summary", df)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "clusters": dg.MetadataValue.md("\n".join(
                f"- **{r['cluster_id']}** ({r['size']}): {md_escape(r['name'])} — e.g. "
                f"{', '.join(md_escape(i) for i in r['representative_record_ids'])}"
                for r in df.iter_rows(named=True))),
            "preview": preview(df, ["cluster_id", "name", "size", "top_terms", "text_coverage", "image_coverage",
                                    "audio_coverage", "tabular_coverage"]),
        }
    )


@dg.asset(
    deps=[*(dg.AssetKey(t) for t in RECLUSTER_TABLES), dg.AssetKey("cluster_summary"),
          dg.AssetKey("cluster_assignments"), dg.AssetKey("fused_vectors"), dg.AssetKey("aligned_records")],
    group_name="clusters",
    kinds={"scikitlearn", "parquet"},
    tags={"layer": "clusters"},
    automation_condition=GLOBAL_AUTOMATION,
)
def embedding_map(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource
) -> dg.MaterializeResult:
    """2-D coordinates of every current record in the space the clusters were computed on (PCA by default;
    ``MM_MAP_METHOD=tsne`` fits t-SNE on a seeded sample of 3,000 and places the rest at their nearest
    sampled neighbours), with its cluster and label, and a PNG scatter coloured by cluster in the
    metadata (also saved as ``lake/_reports/embedding_map.png``). The projection is fitted only after a
    re-cluster (stored under ``lake/_models/embedding_map/``); a refresh places just the new records against
    it and keeps every other record's coordinates."""
    lake = warehouse.lake
    try:
        update, df = update_embedding_map(lake, pipeline)
    except ReclusterError as exc:
        raise dg.Failure(str(exc)) from exc
    if df is None:
        lake.write_global("embedding_map", empty_frame("embedding_map"))
        return dg.MaterializeResult(metadata={"dagster/row_count": 0})
    lake.write_global("embedding_map", df)
    png = draw_map(lake, df, pipeline.seed)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "method": df["method"][0],
            "space": df["space"][0],
            "refit": update.refit,
            "refit_reason": update.reason,
            "records_placed": update.placed,
            "records_kept": update.kept,
            "png_path": str(png),
            "map": dg.MetadataValue.md(png_markdown(png, "embedding map coloured by cluster")),
            "explorer": dg.MetadataValue.url(f"{serve_url()}/map"),
        }
    )
