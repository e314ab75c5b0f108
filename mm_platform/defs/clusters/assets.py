"""Clusters layer: cluster all fused vectors, score against labels, and explain each cluster."""


import hashlib
import json
import uuid
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import polars as pl

from mm_platform.defs.embeddings.assets import image_embeddings, text_embeddings
from mm_platform.defs.fusion.assets import fused_vectors
from mm_platform.defs.ingest.assets import aligned_records, raw_text
from mm_platform.defs.metadata import preview
from mm_platform.defs.resources import PipelineConfigResource, WarehouseResource
from mm_platform.lib.clustering import (
    ClusterResult,
    distances_to_centroid,
    external_scores,
    hdbscan_cluster,
    kmeans_auto,
    label_summary,
    reduce_dimensions,
    representatives,
    top_terms,
)
from mm_platform.lib.lake import Lake

GLOBAL_AUTOMATION = dg.AutomationCondition.eager()


def vectors_of(lake: Lake, table: str) -> tuple[list[str], np.ndarray]:
    df = lake.read_table(table).sort("batch_id", "record_id")
    if df.height == 0:
        return [], np.zeros((0, 0), dtype=np.float32)
    return df["record_id"].to_list(), np.asarray(df["embedding"].to_list(), dtype=np.float32)


def run_clustering(X: np.ndarray, pipeline: PipelineConfigResource) -> tuple[ClusterResult, np.ndarray]:
    """Cluster ``X`` as configured, in its PCA-reduced space; returns the result and the space it ran in."""
    if pipeline.cluster_algorithm not in ("kmeans", "hdbscan"):
        raise dg.Failure(f"unknown cluster algorithm {pipeline.cluster_algorithm!r} (kmeans | hdbscan)")
    Z, reduction = reduce_dimensions(X, pipeline.cluster_reduce_dim, seed=pipeline.seed)
    if pipeline.cluster_algorithm == "hdbscan":
        res = hdbscan_cluster(Z, min_cluster_size=pipeline.hdbscan_min_cluster_size, seed=pipeline.seed)
    else:
        res = kmeans_auto(Z, k=pipeline.cluster_k or None, k_max=pipeline.cluster_k_max, seed=pipeline.seed)
    res.params.update(reduction)
    return res, Z


def fingerprint(lake: Lake) -> str:
    """Identifies the clustering input: the fused partitions and their contents' mtimes."""
    parts = [f"{b}:{lake.partition_path('fused_vectors', b).stat().st_mtime_ns}" for b in lake.partitions("fused_vectors")]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _metrics_row(run_id: str, space: str, res: ClusterResult, scores: dict, n: int, fp: str) -> dict:
    return {
        "run_id": run_id, "created_at": datetime.now(UTC), "algorithm": res.algorithm, "space": space,
        "k": res.k, "n_records": n, "n_outliers": res.n_outliers, "silhouette": res.silhouette,
        "nmi": scores.get("nmi"), "ari": scores.get("ari"), "n_labelled": scores.get("n_labelled", 0),
        "input_fingerprint": fp, "params_json": json.dumps(res.params, default=str, sort_keys=True),
    }


@dg.asset(
    deps=[fused_vectors, text_embeddings, image_embeddings, aligned_records],
    group_name="clusters",
    kinds={"scikitlearn", "parquet"},
    tags={"layer": "clusters"},
    automation_condition=GLOBAL_AUTOMATION,
)
def clusters(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource
) -> dg.MaterializeResult:
    """The cluster of every record, from its fused vector reduced by PCA (K-Means with k chosen by silhouette,
    or HDBSCAN with outliers as -1). Each single modality is clustered the same way for comparison; silhouette and,
    where labels exist, NMI/ARI of every space go to ``cluster_metrics`` and this asset's metadata."""
    lake = warehouse.lake
    run_id = uuid.uuid4().hex[:12]
    ids, X = vectors_of(lake, "fused_vectors")
    fp = fingerprint(lake)
    now = datetime.now(UTC)
    if not ids:
        lake.write_global("clusters", pl.DataFrame(schema=lake.read_table("clusters").schema))
        lake.write_global("cluster_metrics", pl.DataFrame(schema=lake.read_table("cluster_metrics").schema))
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, "k": 0})
    truth_df = lake.read_table("aligned_records").unique("record_id", keep="last").select("record_id", "label", "batch_id")
    truth_map = dict(zip(truth_df["record_id"].to_list(), truth_df["label"].to_list(), strict=True))
    batch_map = dict(zip(truth_df["record_id"].to_list(), truth_df["batch_id"].to_list(), strict=True))

    res, Z = run_clustering(X, pipeline)
    scores = external_scores(res.labels, [truth_map.get(r) for r in ids])
    metrics = [_metrics_row(run_id, "fused", res, scores, len(ids), fp)]
    per_space: dict[str, dict] = {"fused": {"k": res.k, "silhouette": res.silhouette, **scores}}
    for modality, table in (("text", "text_embeddings"), ("image", "image_embeddings")):
        m_ids, m_X = vectors_of(lake, table)
        if len(m_ids) < 3:
            continue
        m_res, _ = run_clustering(m_X, pipeline)
        m_scores = external_scores(m_res.labels, [truth_map.get(r) for r in m_ids])
        metrics.append(_metrics_row(run_id, modality, m_res, m_scores, len(m_ids), fp))
        per_space[modality] = {"k": m_res.k, "silhouette": m_res.silhouette, **m_scores}

    dist = distances_to_centroid(Z, res.labels, res.centroids)
    df = pl.DataFrame(
        {
            "record_id": ids,
            "batch_id": [batch_map.get(r) for r in ids],
            "cluster_id": res.labels.astype(np.int32),
            "algorithm": [res.algorithm] * len(ids),
            "distance_to_centroid": dist.astype(np.float64),
            "is_outlier": res.labels == -1,
            "run_id": [run_id] * len(ids),
            "clustered_at": [now] * len(ids),
        },
        schema_overrides={"batch_id": pl.String},
    )
    lake.write_global("clusters", df)
    lake.write_global("cluster_metrics", pl.DataFrame(metrics))
    sizes = df.group_by("cluster_id").len().sort("cluster_id")
    md: dict[str, object] = {
        "dagster/row_count": df.height,
        "algorithm": res.algorithm,
        "k": res.k,
        "outliers": res.n_outliers,
        "silhouette": res.silhouette,
        "cluster_sizes": {str(c): int(n) for c, n in sizes.iter_rows()},
        "k_scores": {str(k): round(v, 4) for k, v in res.k_scores.items()},
        "run_id": run_id,
        "per_space": dg.MetadataValue.json(per_space),
    }
    for space, vals in per_space.items():
        if vals.get("nmi") is not None:
            md[f"nmi_{space}"] = vals["nmi"]
            md[f"ari_{space}"] = vals["ari"]
    return dg.MaterializeResult(metadata=md)


@dg.asset(
    deps=[clusters, raw_text, aligned_records, fused_vectors],
    group_name="clusters",
    kinds={"scikitlearn", "parquet"},
    tags={"layer": "clusters"},
    automation_condition=GLOBAL_AUTOMATION,
)
def cluster_summary(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """What each cluster is: size, modality coverage, the records closest to its centre, its top terms
    (class-based TF-IDF over its texts), a name from those terms, and its label counts."""
    lake = warehouse.lake
    cl = lake.read_table("clusters")
    fused_ids, X = vectors_of(lake, "fused_vectors")
    if cl.height == 0 or not fused_ids:
        lake.write_global("cluster_summary", pl.DataFrame(schema=lake.read_table("cluster_summary").schema))
        return dg.MaterializeResult(metadata={"dagster/row_count": 0})
    labels_by_id = dict(zip(cl["record_id"].to_list(), cl["cluster_id"].to_list(), strict=True))
    keep = [i for i, r in enumerate(fused_ids) if r in labels_by_id]
    ids = [fused_ids[i] for i in keep]
    X = X[keep]
    labels = np.array([labels_by_id[r] for r in ids])
    reps = representatives(X, labels, ids, n=3)

    aligned = lake.read_table("aligned_records").unique("record_id", keep="last")
    texts = lake.read_table("raw_text").unique("record_id", keep="last").select("record_id", "text")
    members = cl.select("record_id", "cluster_id").join(aligned, on="record_id", how="left").join(
        texts, on="record_id", how="left")
    texts_by_cluster = {
        int(c): [t for t in g["text"].to_list() if t]
        for (c,), g in members.group_by("cluster_id") if c != -1
    }
    terms = top_terms(texts_by_cluster, n=8)
    truth = members["label"].to_list()
    label_counts = label_summary(members["cluster_id"].to_numpy(), truth)
    rows = []
    for (c,), g in members.group_by("cluster_id"):
        c = int(c)
        words = [t for t, _ in terms.get(c, [])]
        name = "outliers" if c == -1 else (" / ".join(words[:3]) if words else f"cluster {c}")
        rows.append({
            "cluster_id": c, "name": name, "size": g.height,
            "representative_record_ids": reps.get(c, []), "top_terms": words,
            "label_counts_json": json.dumps(label_counts.get(c, {}), sort_keys=True),
            "text_coverage": float(g["has_text"].fill_null(False).mean()),
            "image_coverage": float(g["has_image"].fill_null(False).mean()),
            "algorithm": cl["algorithm"][0], "run_id": cl["run_id"][0],
        })
    df = pl.DataFrame(rows).sort("cluster_id")
    lake.write_global("cluster_summary", df)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "clusters": dg.MetadataValue.md("\n".join(
                f"- **{r['cluster_id']}** ({r['size']}): {r['name']} — e.g. {', '.join(r['representative_record_ids'])}"
                for r in df.iter_rows(named=True))),
            "preview": preview(df, ["cluster_id", "name", "size", "top_terms", "text_coverage", "image_coverage"]),
        }
    )
