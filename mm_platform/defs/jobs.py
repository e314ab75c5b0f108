"""Jobs and schedules over the asset graph."""

from __future__ import annotations

import dagster as dg

from mm_platform.defs.ingest.sensors import BATCH_JOB_NAME
from mm_platform.defs.partitions import batches_partitions

#: Everything computed per landing batch, in one run: raw → aligned → embeddings → fused → Qdrant points.
BATCH_LAYERS = ("raw", "aligned", "embeddings", "fused")
batch_selection = dg.AssetSelection.groups(*BATCH_LAYERS) | dg.AssetSelection.assets("vector_points")
batch_ingest_job = dg.define_asset_job(
    name=BATCH_JOB_NAME,
    selection=batch_selection,
    partitions_def=batches_partitions,
    description="Ingest one landing batch end to end (one partition of `batches`).",
    tags={"mm/job": "batch"},
    op_retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
)

#: Everything computed over all batches: clusters, summaries, the Qdrant cluster payloads, SQL models.
global_selection = (
    dg.AssetSelection.groups("clusters", "sql_models") | dg.AssetSelection.assets("qdrant_cluster_payloads")
)
refresh_global_job = dg.define_asset_job(
    name="refresh_global_job",
    selection=global_selection,
    description="Re-cluster all records, rebuild summaries, Qdrant cluster payloads and SQL marts.",
    tags={"mm/job": "global"},
)

nightly_recluster_schedule = dg.ScheduleDefinition(
    name="nightly_recluster",
    job=refresh_global_job,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Full re-cluster and mart rebuild every night at 03:00.",
)
