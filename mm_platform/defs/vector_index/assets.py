"""Vector index layer: upsert every aligned record into Qdrant, then keep its cluster id current."""


from datetime import UTC, datetime

import dagster as dg
import numpy as np
import polars as pl

from mm_platform.defs.clusters.assets import GLOBAL_AUTOMATION, clusters
from mm_platform.defs.fusion.assets import EMBEDDING_TABLES, fused_vectors
from mm_platform.defs.ingest.assets import (
    aligned_records,
    raw_images,
    raw_records,
    raw_text,
    rejected_records,
)
from mm_platform.defs.ingest.checks import manifest_line_numbers
from mm_platform.defs.metadata import preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import LandingResource, QdrantResource, WarehouseResource
from mm_platform.lib.qdrant_store import PointData, point_id

QDRANT_POOL = "qdrant"
TEXT_PREVIEW_CHARS = 300


def _vectors_by_id(df: pl.DataFrame) -> dict[str, np.ndarray]:
    return {r: np.asarray(v, dtype=np.float32) for r, v in zip(df["record_id"].to_list(), df["embedding"].to_list(), strict=True)}


@dg.asset(
    partitions_def=batches_partitions,
    deps=[aligned_records, fused_vectors, raw_text, raw_images, raw_records, rejected_records],
    group_name="vector_index",
    kinds={"qdrant", "parquet"},
    tags={"layer": "vector_index"},
    pool=QDRANT_POOL,
)
def vector_points(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, qdrant: QdrantResource,
    landing: LandingResource,
) -> dg.MaterializeResult:
    """The batch's records as Qdrant points (id = uuid5 of record_id): named vectors per modality plus
    ``fused``, payload with record_id, batch_id, label, cluster_id, models, a text preview and the image
    location. Re-running replaces the same points; records dropped from a rewritten manifest are removed.
    The table is the ledger of what was written; the ``batches`` table records each completed batch with the
    manifest hash it came from."""
    batch_id = context.partition_key
    lake = warehouse.lake
    aligned = lake.read_partition("aligned_records", batch_id)
    fused = lake.read_partition("fused_vectors", batch_id)
    per_mod = {m: lake.read_partition(t, batch_id) for m, t in EMBEDDING_TABLES.items()}
    vecs = {m: _vectors_by_id(df) for m, df in per_mod.items()}
    models = {m: (f"{df['model'][0]}@{df['model_version'][0]}" if df.height else None) for m, df in per_mod.items()}
    fused_vecs = _vectors_by_id(fused)
    fusion_spec = fused["fusion"][0] if fused.height else None
    texts = dict(lake.read_partition("raw_text", batch_id).select("record_id", "text").iter_rows())
    images = dict(lake.read_partition("raw_images", batch_id).select("record_id", "uri").iter_rows())
    clusters_now = lake.read_table("clusters")
    cluster_of = dict(zip(clusters_now["record_id"].to_list(), clusters_now["cluster_id"].to_list(), strict=False))
    manifest_sha = lake.read_partition("raw_records", batch_id)["manifest_sha256"]
    manifest_sha = manifest_sha[0] if len(manifest_sha) else None

    points: list[PointData] = []
    for row in aligned.iter_rows(named=True):
        rid = row["record_id"]
        if rid not in fused_vecs:
            continue
        vectors = {m: vecs[m][rid] for m in vecs if rid in vecs[m]}
        vectors["fused"] = fused_vecs[rid]
        text = texts.get(rid)
        points.append(PointData(rid, vectors, {
            "batch_id": batch_id,
            "label": row["label"],
            "cluster_id": cluster_of.get(rid),
            "timestamp": row["timestamp"].isoformat() if row["timestamp"] else None,
            "modalities": [m for m in vecs if rid in vecs[m]],
            "models": {m: models[m] for m in vecs if rid in vecs[m]},
            "fusion": fusion_spec,
            "text": text[:TEXT_PREVIEW_CHARS] if text else None,
            "image_uri": images.get(rid),
        }))

    dims = {m: int(df["dim"][0]) for m, df in per_mod.items() if df.height}
    if fused.height:
        dims["fused"] = int(fused["dim"][0])
    previous = set(lake.read_partition("vector_points", batch_id)["record_id"].to_list())
    current = {p.record_id for p in points}
    with qdrant.store() as store:
        recreated = store.ensure_collection(dims) if dims else False
        written = store.upsert(points)
        stale = sorted(previous - current)
        store.delete_records(stale)
        found = store.retrieve([p.record_id for p in points])
        total = store.count()
    if len(found) != len(points):
        raise dg.Failure(f"Qdrant holds {len(found)} of the {len(points)} points just written for batch {batch_id}")
    now = datetime.now(UTC)
    ledger = pl.DataFrame(
        {
            "record_id": [p.record_id for p in points],
            "batch_id": [batch_id] * len(points),
            "point_id": [point_id(p.record_id) for p in points],
            "vectors": pl.Series([sorted(p.vectors) for p in points], dtype=pl.List(pl.String)),
            "collection": [qdrant.collection] * len(points),
            "manifest_sha256": [manifest_sha] * len(points),
            "upserted_at": [now] * len(points),
        }
    )
    lake.write_partition("vector_points", batch_id, ledger)
    rejected = lake.read_stage_rejections(batch_id)
    lake.write_partition("batches", batch_id, pl.DataFrame({
        "batch_id": [batch_id], "manifest_sha256": [manifest_sha],
        "manifest_lines": [len(manifest_line_numbers(landing.batch_dir(batch_id)))],
        "aligned_records": [aligned.height], "rejected_lines": [rejected["line_number"].n_unique()],
        "points": [len(points)], "completed_at": [now],
    }))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(points),
            "points_upserted": written,
            "stale_points_removed": len(stale),
            "collection": qdrant.collection,
            "collection_points_total": total,
            "collection_recreated": recreated,
            "vector_dims": dims,
            "location": qdrant.url or "embedded",
            "preview": preview(ledger, ["record_id", "point_id", "vectors"]),
        }
    )


@dg.asset(
    deps=[clusters, vector_points],
    group_name="vector_index",
    kinds={"qdrant"},
    tags={"layer": "vector_index"},
    pool=QDRANT_POOL,
    automation_condition=GLOBAL_AUTOMATION,
)
def qdrant_cluster_payloads(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, qdrant: QdrantResource
) -> dg.MaterializeResult:
    """Every Qdrant point's ``cluster_id`` payload, set from the latest clustering so that searches can
    filter and group by cluster."""
    cl = warehouse.lake.read_table("clusters")
    payloads = {r: {"cluster_id": int(c)} for r, c in zip(cl["record_id"].to_list(), cl["cluster_id"].to_list(), strict=True)}
    with qdrant.store() as store:
        updated = store.set_payloads(payloads) if store.exists() else 0
    return dg.MaterializeResult(
        metadata={"points_updated": updated, "clustered_records": len(payloads),
                  "not_in_qdrant": len(payloads) - updated}
    )
