"""Vector index layer: keep Qdrant equal to the current state of every record, and its cluster ids current."""

from datetime import UTC, datetime

import dagster as dg

from mm_platform.defs.automation import GLOBAL_AUTOMATION
from mm_platform.defs.quarantine.checks import manifest_line_numbers
from mm_platform.defs.metadata import preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import EncodersResource, LandingResource, QdrantResource, WarehouseResource
from mm_platform.lib.storage.qdrant_payloads import sync_payloads
from mm_platform.lib.vectors.points import batch_frame, ledger_frame, plan_points, vector_dims

QDRANT_POOL = "qdrant"
VECTOR_POINTS_DEPS = [dg.AssetKey(k) for k in (
    "aligned_records", "fused_vectors", "raw_text", "raw_images", "raw_audio", "raw_records", "rejected_records",
    "cluster_assignments")]


@dg.multi_asset(
    name="vector_points",
    specs=[
        dg.AssetSpec("vector_points", deps=VECTOR_POINTS_DEPS, group_name="vector_index", kinds={"qdrant", "parquet"},
                     tags={"layer": "vector_index"}, partitions_def=batches_partitions,
                     description="The ledger of the points written to Qdrant for the batch (one row per point)."),
        dg.AssetSpec("batches", deps=VECTOR_POINTS_DEPS, group_name="vector_index", kinds={"parquet"},
                     tags={"layer": "vector_index"}, partitions_def=batches_partitions,
                     description="One row per completed batch: manifest hash, lines, aligned and rejected "
                                 "records, points, deletes and the model profile it was embedded with."),
    ],
    partitions_def=batches_partitions,
    pool=QDRANT_POOL,
)
def vector_points(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, qdrant: QdrantResource,
    landing: LandingResource, encoders: EncodersResource,
):
    """The batch's records in Qdrant (point id = uuid5 of record_id): named vectors per modality plus
    ``fused``, payload with record_id, batch_id, label, cluster_id, models, a text preview and the image
    location. Only record versions that are current are written, so re-running an older batch never brings
    back superseded data; a current ``delete`` removes the point; a record dropped from a rewritten
    manifest falls back to its version in another batch, or is removed. The table is the ledger of what
    was written; ``batches`` records each completed batch with its manifest hash and model profile."""
    batch_id = context.partition_key
    lake = warehouse.lake
    plan = plan_points(lake, batch_id)
    points, fallback, removed = plan.points, plan.fallback, plan.removed
    upsert_ids, delete_ids = plan.upsert_ids, plan.delete_ids

    dims = vector_dims(lake, lambda m: encoders.encoders.model_info(m).dim, batch_id)
    with qdrant.store(lake) as store:  # an interrupted unlogged write is restored from the lake on open
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
    ledger = ledger_frame(points, batch_id, qdrant.collection, manifest_sha, now)
    lake.write_partition("vector_points", batch_id, ledger)
    batch_row = batch_frame(lake, batch_id, manifest_sha, len(manifest_line_numbers(landing.batch_dir(batch_id))),
                            len(points), len(delete_ids), now, encoders.profile_key(), encoders.request_key())
    lake.write_partition("batches", batch_id, batch_row)
    yield dg.MaterializeResult(
        asset_key="vector_points",
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
            "points_restored": store.restored if store.restored is not None else 0,
            "vector_dims": dims,
            "location": qdrant.url or "embedded",
            "preview": preview(ledger, ["record_id", "point_id", "vectors"]),
        }
    )
    yield dg.MaterializeResult(asset_key="batches", metadata={
        "dagster/row_count": batch_row.height,
        "preview": preview(batch_row, ["batch_id", "manifest_lines", "aligned_records", "rejected_lines", "points"])})


@dg.asset(
    deps=["recluster_assignments", "cluster_assignments", "vector_points"],
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
    (:mod:`mm_platform.lib.storage.qdrant_payloads`)."""
    cl = warehouse.lake.current_clusters()
    payloads = {r: {"cluster_id": int(c)} for r, c in cl.select("record_id", "cluster_id").iter_rows()}
    with qdrant.store(warehouse.lake) as store:
        sync = sync_payloads(store, payloads)
    return dg.MaterializeResult(
        metadata={"points_updated": sync.sent, "points_unchanged": sync.unchanged,
                  "clustered_records": len(payloads), "not_in_qdrant": sync.not_in_qdrant}
    )
