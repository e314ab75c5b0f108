"""Clusters layer: full re-clusters with stable ids, eager assignment of new batches, explanations.

- ``clusters`` re-clusters every current record from its fused vector (in a PCA space), maps the new
  clusters onto the previous ids by overlap so a cluster keeps its id across re-clusterings, scores every
  space against the labels, and saves the cluster model (projection + centroids). It runs on a cron
  automation condition (nightly), when it has never run, and on demand (``mm-platform recluster``).
- ``cluster_assignments`` places each new batch's records into the existing clusters at once.
- ``cluster_summary`` explains the current clusters.
"""

import json
import uuid
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import polars as pl

from mm_platform.defs.embeddings.assets import audio_embeddings, image_embeddings, tabular_embeddings, text_embeddings
from mm_platform.defs.fusion.assets import EMBEDDING_TABLES, fused_vectors
from mm_platform.defs.ingest.assets import aligned_records, raw_records, raw_text
from mm_platform.defs.metadata import preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import PipelineConfigResource, WarehouseResource
from mm_platform.lib.cluster_stability import ClusterModel, apply_mapping, build_model, fit_projection, match_cluster_ids
from mm_platform.lib.clustering import (
    ClusterResult,
    external_scores,
    hdbscan_cluster,
    kmeans_auto,
    label_summary,
    representatives,
    top_terms,
)
from mm_platform.lib.lake import Lake
from mm_platform.lib.ledger import fused_fingerprint

RECLUSTER_CRON = "0 3 * * *"
#: Global assets that summarise clusters follow any change at once.
GLOBAL_AUTOMATION = dg.AutomationCondition.eager()
#: The full re-cluster: nightly, and the first time data exists. (`on_missing()` would not do: the asset is
#: already missing at the automation sensor's first evaluation, which counts as handled, so it never fires.)
RECLUSTER_AUTOMATION = dg.AutomationCondition.on_cron(RECLUSTER_CRON) | (
    dg.AutomationCondition.eager() & dg.AutomationCondition.missing()
).with_label("first_clustering")
CLUSTER_MODEL_FILE = "_models/cluster_model.npz"
#: New records further than this quantile of the members' distances are outliers under HDBSCAN.
HDBSCAN_OUTLIER_QUANTILE = 0.99


def model_path(lake: Lake):
    return lake.root / CLUSTER_MODEL_FILE


def load_cluster_model(lake: Lake) -> ClusterModel | None:
    path = model_path(lake)
    return ClusterModel.load(path) if path.exists() else None


def current_vectors(lake: Lake, table: str) -> tuple[list[str], list[str], np.ndarray]:
    """(record_ids, batch_ids, matrix) of the current versions in a vector table, in a stable order."""
    df = lake.read_current(table).sort("record_id")
    if df.height == 0:
        return [], [], np.zeros((0, 0), dtype=np.float32)
    return df["record_id"].to_list(), df["batch_id"].to_list(), np.asarray(df["embedding"].to_list(), np.float32)


def run_clustering(X: np.ndarray, pipeline: PipelineConfigResource) -> tuple[ClusterResult, np.ndarray, tuple]:
    """Cluster ``X`` as configured in its PCA space; returns the result, the space, and (mean, components)."""
    if pipeline.cluster_algorithm not in ("kmeans", "hdbscan"):
        raise dg.Failure(f"unknown cluster algorithm {pipeline.cluster_algorithm!r} (kmeans | hdbscan)")
    mean, comps, Z = fit_projection(X, pipeline.cluster_reduce_dim, seed=pipeline.seed)
    if pipeline.cluster_algorithm == "hdbscan":
        res = hdbscan_cluster(Z, min_cluster_size=pipeline.hdbscan_min_cluster_size, seed=pipeline.seed)
    else:
        res = kmeans_auto(Z, k=pipeline.cluster_k or None, k_max=pipeline.cluster_k_max, seed=pipeline.seed)
    res.params["reduction"] = f"pca{comps.shape[0]}" if comps is not None else "none"
    return res, Z, (mean, comps)


def _metrics_row(run_id: str, space: str, res: ClusterResult, scores: dict, n: int, fp: str, **extra) -> dict:
    return {
        "run_id": run_id, "created_at": datetime.now(UTC), "algorithm": res.algorithm, "space": space,
        "k": res.k, "n_records": n, "n_outliers": res.n_outliers, "silhouette": res.silhouette,
        "nmi": scores.get("nmi"), "ari": scores.get("ari"), "n_labelled": scores.get("n_labelled", 0),
        "input_fingerprint": fp, "params_json": json.dumps(res.params, default=str, sort_keys=True),
        "moved": extra.get("moved"), "common": extra.get("common"), "new_clusters": extra.get("new_clusters"),
        "retired_clusters": extra.get("retired_clusters"),
    }


def assignment_frame(record_ids, batch_ids, labels, distances, algorithm: str, run_id: str) -> pl.DataFrame:
    labels = np.asarray(labels)
    return pl.DataFrame(
        {
            "record_id": list(record_ids), "batch_id": list(batch_ids),
            "cluster_id": labels.astype(np.int32), "algorithm": [algorithm] * len(labels),
            "distance_to_centroid": np.asarray(distances, dtype=np.float64), "is_outlier": labels == -1,
            "run_id": [run_id] * len(labels), "clustered_at": [datetime.now(UTC)] * len(labels),
        },
        schema_overrides={"record_id": pl.String, "batch_id": pl.String},
    )


@dg.asset(
    deps=[fused_vectors, text_embeddings, image_embeddings, audio_embeddings, tabular_embeddings, aligned_records,
          raw_records],
    group_name="clusters",
    kinds={"scikitlearn", "parquet"},
    tags={"layer": "clusters"},
    automation_condition=RECLUSTER_AUTOMATION,
)
def clusters(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource
) -> dg.MaterializeResult:
    """A full re-cluster of every current record's fused vector (PCA space; K-Means with k by silhouette, or
    HDBSCAN with outliers as -1). New clusters take the ids of the previous clusters they overlap most, so
    a cluster keeps its id and name as data grows; how many records moved is recorded. Each single modality
    is clustered the same way for comparison: silhouette and, where labels exist, NMI/ARI of every space go
    to ``cluster_metrics``. Saves the cluster model that places new batches at once."""
    lake = warehouse.lake
    run_id = uuid.uuid4().hex[:12]
    ids, batch_ids, X = current_vectors(lake, "fused_vectors")
    fp = fused_fingerprint(lake)
    if not ids:
        lake.write_global("recluster_assignments", pl.DataFrame(schema=lake.read_table("recluster_assignments").schema))
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, "k": 0})
    truth = dict(lake.read_current("aligned_records").select("record_id", "label").iter_rows())
    previous = dict(lake.current_clusters().select("record_id", "cluster_id").iter_rows())

    res, Z, (mean, comps) = run_clustering(X, pipeline)
    mapping = match_cluster_ids(previous, ids, res.labels)
    stable = apply_mapping(res.labels, mapping)
    model = build_model(
        run_id, res.algorithm, Z, stable, mean, comps, X.shape[1],
        distance_quantile=HDBSCAN_OUTLIER_QUANTILE if res.algorithm == "hdbscan" else None,
    )
    model.save(model_path(lake))
    centroid_of = dict(zip(model.cluster_ids.tolist(), model.centroids, strict=True))
    centroids = np.stack([centroid_of.get(int(c), np.zeros(Z.shape[1], np.float32)) for c in stable])
    dist = np.where(stable >= 0, 1.0 - np.sum(Z * centroids, axis=1), np.nan)

    scores = external_scores(stable, [truth.get(r) for r in ids])
    metrics = [_metrics_row(run_id, "fused", res, scores, len(ids), fp, moved=mapping.moved, common=mapping.common,
                            new_clusters=len(mapping.new_ids), retired_clusters=len(mapping.retired_ids))]
    per_space: dict[str, dict] = {"fused": {"k": res.k, "silhouette": res.silhouette, **scores}}
    for modality, table in EMBEDDING_TABLES.items():
        m_ids, _, m_X = current_vectors(lake, table)
        if len(m_ids) < 3:
            continue
        m_res, _, _ = run_clustering(m_X, pipeline)
        m_scores = external_scores(m_res.labels, [truth.get(r) for r in m_ids])
        metrics.append(_metrics_row(run_id, modality, m_res, m_scores, len(m_ids), fp))
        per_space[modality] = {"k": m_res.k, "silhouette": m_res.silhouette, **m_scores}

    df = assignment_frame(ids, batch_ids, stable, dist, res.algorithm, run_id)
    lake.write_global("recluster_assignments", df)
    lake.write_global("cluster_metrics", pl.DataFrame(metrics))
    sizes = df.group_by("cluster_id").len().sort("cluster_id")
    md: dict[str, object] = {
        "dagster/row_count": df.height,
        "algorithm": res.algorithm,
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
        "run_id": run_id,
        "per_space": dg.MetadataValue.json(per_space),
    }
    for space, vals in per_space.items():
        if vals.get("nmi") is not None:
            md[f"nmi_{space}"] = vals["nmi"]
            md[f"ari_{space}"] = vals["ari"]
    context.log.info(f"re-clustered {len(ids)} records into {res.k} clusters; {mapping.moved} of "
                     f"{mapping.common} previously clustered records changed cluster")
    return dg.MaterializeResult(metadata=md)


@dg.asset(
    partitions_def=batches_partitions,
    deps=[fused_vectors, raw_records],
    group_name="clusters",
    kinds={"numpy", "parquet"},
    tags={"layer": "clusters"},
)
def cluster_assignments(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The batch's records placed into the existing clusters at once (nearest centroid of the last full
    re-cluster, in its PCA space), so new data is clustered without waiting for the next re-cluster. Empty
    until a first full clustering exists."""
    batch_id = context.partition_key
    lake = warehouse.lake
    fused = lake.read_partition("fused_vectors", batch_id)
    model = load_cluster_model(lake)
    if model is None or fused.height == 0:
        lake.write_partition("cluster_assignments", batch_id, pl.DataFrame(schema=lake.read_table("cluster_assignments").schema))
        reason = "no cluster model yet: the first full clustering places these records" if model is None else "no vectors"
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, "note": reason})
    X = np.asarray(fused["embedding"].to_list(), dtype=np.float32)
    if X.shape[1] != model.input_dim:
        raise dg.Failure(
            f"fused vectors of batch {batch_id} have {X.shape[1]} dims, the cluster model expects "
            f"{model.input_dim} (model or fusion changed): run a full re-cluster (`mm-platform recluster`)"
        )
    labels, dist = model.assign(X)
    df = assignment_frame(fused["record_id"], fused["batch_id"], labels, dist, f"{model.algorithm}+assign", model.run_id)
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
    deps=[clusters, cluster_assignments, raw_text, aligned_records, fused_vectors],
    group_name="clusters",
    kinds={"scikitlearn", "parquet"},
    tags={"layer": "clusters"},
    automation_condition=GLOBAL_AUTOMATION,
)
def cluster_summary(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """What each current cluster is: size, modality coverage, the records closest to its centre, its top
    terms (class-based TF-IDF over its texts), a name from those terms, and its label counts."""
    lake = warehouse.lake
    cl = lake.current_clusters()
    if cl.height == 0:
        lake.write_global("cluster_summary", pl.DataFrame(schema=lake.read_table("cluster_summary").schema))
        return dg.MaterializeResult(metadata={"dagster/row_count": 0})
    fused_ids, _, X = current_vectors(lake, "fused_vectors")
    labels_by_id = dict(cl.select("record_id", "cluster_id").iter_rows())
    keep = [i for i, r in enumerate(fused_ids) if r in labels_by_id]
    ids = [fused_ids[i] for i in keep]
    reps = representatives(X[keep], np.array([labels_by_id[r] for r in ids]), ids, n=3)

    aligned = lake.read_current("aligned_records").drop("batch_id")
    texts = lake.read_current("raw_text").select("record_id", "text")
    members = cl.select("record_id", "cluster_id", "run_id", "algorithm").join(aligned, on="record_id", how="left")
    members = members.join(texts, on="record_id", how="left")
    texts_by_cluster = {
        int(c): [t for t in g["text"].to_list() if t] for (c,), g in members.group_by("cluster_id") if c != -1
    }
    terms = top_terms(texts_by_cluster, n=8)
    label_counts = label_summary(members["cluster_id"].to_numpy(), members["label"].to_list())
    model = load_cluster_model(lake)
    rows = []
    for (c,), g in members.group_by("cluster_id"):
        c = int(c)
        words = [t for t, _ in terms.get(c, [])]
        name = "outliers" if c == -1 else (" / ".join(words[:3]) if words else f"cluster {c}")
        rows.append({
            "cluster_id": c, "name": name, "size": g.height,
            "representative_record_ids": reps.get(c, []), "top_terms": words,
            "label_counts_json": json.dumps(label_counts.get(c, {}), sort_keys=True),
            **{f"{m}_coverage": float(g[f"has_{m}"].fill_null(False).mean()) for m in EMBEDDING_TABLES},
            "algorithm": g["algorithm"][0].removesuffix("+assign"),
            "run_id": model.run_id if model else g["run_id"][0],
        })
    df = pl.DataFrame(rows).sort("cluster_id")
    lake.write_global("cluster_summary", df)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "clusters": dg.MetadataValue.md("\n".join(
                f"- **{r['cluster_id']}** ({r['size']}): {r['name']} — e.g. {', '.join(r['representative_record_ids'])}"
                for r in df.iter_rows(named=True))),
            "preview": preview(df, ["cluster_id", "name", "size", "top_terms", "text_coverage", "image_coverage",
                                    "audio_coverage", "tabular_coverage"]),
        }
    )
