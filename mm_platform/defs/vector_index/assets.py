"""Vector index layer: keep Qdrant equal to the current state of every record, and its cluster ids current."""

from datetime import UTC, datetime

import dagster as dg
import numpy as np
import polars as pl

from mm_platform.defs.automation import GLOBAL_AUTOMATION
from mm_platform.defs.clusters.assets import cluster_assignments, clusters
from mm_platform.defs.fusion.assets import EMBEDDING_TABLES, fused_vectors, modality_dims
from mm_platform.defs.ingest.assets import (
    aligned_records,
    raw_audio,
    raw_images,
    raw_records,
    raw_text,
    rejected_records,
)
from mm_platform.defs.ingest.checks import manifest_line_numbers
from mm_platform.defs.metadata import preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import EncodersResource, LandingResource, QdrantResource, WarehouseResource
from mm_platform.lib.lake import Lake
from mm_platform.lib.qdrant_payloads import sync_payloads
from mm_platform.lib.qdrant_store import PointData, point_id
from mm_platform.lib.vectors import embedding_matrix

QDRANT_POOL = "qdrant"
TEXT_PREVIEW_CHARS = 300


def _vectors_by_id(df: pl.DataFrame) -> dict[str, np.ndarray]:
    M = embedding_matrix(df)
    return {r: M[i] for i, r in enumerate(df["record_id"].to_list())}


def build_points(lake: Lake, batch_id: str, record_ids: set[str], cluster_of: dict[str, int]) -> list[PointData]:
    """Qdrant points for ``record_ids`` from batch ``batch_id``'s lake partitions."""
    if not record_ids:
        return []
    aligned = lake.read_partition("aligned_records", batch_id).filter(pl.col("record_id").is_in(list(record_ids)))
    fused = lake.read_partition("fused_vectors", batch_id)
    per_mod = {m: lake.read_partition(t, batch_id) for m, t in EMBEDDING_TABLES.items()}
    vecs = {m: _vectors_by_id(df) for m, df in per_mod.items()}
    models = {m: (f"{df['model'][0]}@{df['model_version'][0]}" if df.height else None) for m, df in per_mod.items()}
    fused_vecs = _vectors_by_id(fused)
    fusion_spec = fused["fusion"][0] if fused.height else None
    texts = dict(lake.read_partition("raw_text", batch_id).select("record_id", "text").iter_rows())
    images = dict(lake.read_partition("raw_images", batch_id).select("record_id", "uri").iter_rows())
    audio = dict(lake.read_partition("raw_audio", batch_id).select("record_id", "uri").iter_rows())
    points: list[PointData] = []
    for row in aligned.iter_rows(named=True):
        rid = row["record_id"]
        if rid not in fused_vecs:
            continue
        present = [m for m in vecs if rid in vecs[m]]
        text = texts.get(rid)
        points.append(PointData(rid, {**{m: vecs[m][rid] for m in present}, "fused": fused_vecs[rid]}, {
            "batch_id": batch_id,
            "label": row["label"],
            "cluster_id": cluster_of.get(rid),
            "timestamp": row["timestamp"].isoformat() if row["timestamp"] else None,
            "modalities": present,
            "models": {m: models[m] for m in present},
            "fusion": fusion_spec,
            "text": text[:TEXT_PREVIEW_CHARS] if text else None,
            "image_uri": images.get(rid),
            "audio_uri": audio.get(rid),
            "entity_id": row["entity_id"],
        }))
    return points


def vector_dims(lake: Lake, encoders: EncodersResource, batch_id: str) -> dict[str, int]:
    """Every named vector's size, for all modalities even when this batch lacks one, so a later batch that
    brings a new modality never forces the collection to be recreated."""
    frames = {m: lake.read_partition(t, batch_id) for m, t in EMBEDDING_TABLES.items()}
    dims = modality_dims(lake, encoders, frames)
    fused = lake.read_partition("fused_vectors", batch_id)
    if fused.height:
        dims["fused"] = int(fused["dim"][0])
    return dims


@dg.asset(
    partitions_def=batches_partitions,
    deps=[aligned_records, fused_vectors, raw_text, raw_images, raw_audio, raw_records, rejected_records,
          cluster_assignments],
    group_name="vector_index",
    kinds={"qdrant", "parquet"},
    tags={"layer": "vector_index"},
    pool=QDRANT_POOL,
)
def vector_points(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, qdrant: QdrantResource,
    landing: LandingResource, encoders: EncodersResource,
) -> dg.MaterializeResult:
    """The batch's records in Qdrant (point id = uuid5 of record_id): named vectors per modality plus
    ``fused``, payload with record_id, batch_id, label, cluster_id, models, a text preview and the image
    location. Only record versions that are current are written, so re-running an older batch never brings
    back superseded data; a current ``delete`` removes the point; a record dropped from a rewritten
    manifest falls back to its version in another batch, or is removed. The table is the ledger of what
    was written; ``batches`` records each completed batch with its manifest hash and model profile."""
    batch_id = context.partition_key
    lake = warehouse.lake
    versions = lake.record_versions().filter(pl.col("is_current"))
    here = versions.filter(pl.col("batch_id") == batch_id)
    upsert_ids = set(here.filter(pl.col("op") == "upsert")["record_id"].to_list())
    delete_ids = set(here.filter(pl.col("op") == "delete")["record_id"].to_list())
    cluster_of = dict(lake.current_clusters().select("record_id", "cluster_id").iter_rows())
    points = build_points(lake, batch_id, upsert_ids, cluster_of)

    # records this batch wrote before but no longer owns (rewritten manifest, or superseded meanwhile)
    previous = set(lake.read_partition("vector_points", batch_id)["record_id"].to_list())
    gone = previous - {p.record_id for p in points} - delete_ids
    owner = dict(versions.filter(pl.col("record_id").is_in(list(gone)) & (pl.col("op") == "upsert"))
                 .select("record_id", "batch_id").iter_rows())
    fallback: list[PointData] = []
    for other in sorted(set(owner.values()) - {batch_id}):
        fallback += build_points(lake, other, {r for r, b in owner.items() if b == other}, cluster_of)
    removed = sorted((gone - set(owner)) | delete_ids)

    dims = vector_dims(lake, encoders, batch_id)
    with qdrant.store() as store:
        recreated = store.ensure_collection(dims) if dims else False
        written = store.upsert(points + fallback)
        store.delete_records(removed)
        found = store.retrieve([p.record_id for p in points])
        total = store.count()
    if len(found) != len(points):
        raise dg.Failure(f"Qdrant holds {len(found)} of the {len(points)} points just written for batch {batch_id}")
    now = datetime.now(UTC)
    manifest_sha = lake.read_partition("raw_records", batch_id)["manifest_sha256"]
    manifest_sha = manifest_sha[0] if len(manifest_sha) else None
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
        "aligned_records": [lake.read_partition("aligned_records", batch_id).height],
        "rejected_lines": [rejected.filter(pl.col("line_number") > 0)["line_number"].n_unique()],
        "points": [len(points)], "deletes": [len(delete_ids)], "completed_at": [now],
        "profile_key": [encoders.profile_key()],
        "profile_request": [encoders.request_key()],
    }))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(points),
            "points_upserted": written,
            "points_deleted": len(removed),
            "superseded_records_skipped": len(set(lake.read_partition("aligned_records", batch_id)["record_id"])
                                              - upsert_ids),
            "fallback_points": len(fallback),
            "collection": qdrant.collection,
            "collection_points_total": total,
            "collection_recreated": recreated,
            "vector_dims": dims,
            "location": qdrant.url or "embedded",
            "preview": preview(ledger, ["record_id", "point_id", "vectors"]),
        }
    )


@dg.asset(
    deps=[clusters, cluster_assignments, vector_points],
    group_name="vector_index",
    kinds={"qdrant"},
    tags={"layer": "vector_index"},
    pool=QDRANT_POOL,
    automation_condition=GLOBAL_AUTOMATION,
)
def qdrant_cluster_payloads(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, qdrant: QdrantResource
) -> dg.MaterializeResult:
    """Every Qdrant point's ``cluster_id`` payload, set from the current clusters (full re-cluster or eager
    assignment) so that searches can filter and group by cluster. Only points whose stored ``cluster_id``
    differs (moved records, points written before their record was clustered) are updated
    (:mod:`mm_platform.lib.qdrant_payloads`)."""
    cl = warehouse.lake.current_clusters()
    payloads = {r: {"cluster_id": int(c)} for r, c in cl.select("record_id", "cluster_id").iter_rows()}
    with qdrant.store() as store:
        sync = sync_payloads(store, payloads)
    return dg.MaterializeResult(
        metadata={"points_updated": sync.sent, "points_unchanged": sync.unchanged,
                  "clustered_records": len(payloads), "not_in_qdrant": sync.not_in_qdrant}
    )
