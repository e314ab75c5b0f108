"""Jobs and schedules over the asset graph."""

import dagster as dg

from mm_platform.defs.automation import RECLUSTER_CRON
from mm_platform.defs.ingest.sensors import BATCH_JOB_NAME
from mm_platform.defs.partitions import batches_partitions

#: Everything computed per landing batch, in one run: raw → aligned → embeddings → fused → eager cluster
#: assignment → Qdrant points.
BATCH_LAYERS = ("raw", "aligned", "quarantine", "embeddings", "fused")
batch_selection = dg.AssetSelection.groups(*BATCH_LAYERS) | dg.AssetSelection.assets(
    "cluster_assignments", "vector_points"
)
batch_ingest_job = dg.define_asset_job(
    name=BATCH_JOB_NAME,
    selection=batch_selection,
    partitions_def=batches_partitions,
    description="Ingest one landing batch end to end (one partition of `batches`).",
    tags={"mm/job": "batch"},
    op_retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
)

#: What follows new batches and cluster changes: shared-space projections, summaries, the 2-D map, Qdrant
#: cluster payloads, SQL models.
refresh_selection = dg.AssetSelection.groups("sql_models") | dg.AssetSelection.assets(
    "shared_embeddings", "cluster_summary", "embedding_map", "qdrant_cluster_payloads"
)
refresh_job = dg.define_asset_job(
    name="refresh_job",
    selection=refresh_selection,
    description="Rebuild cluster summaries, Qdrant cluster payloads and SQL marts from the current clusters.",
    tags={"mm/job": "refresh"},
)
recluster_job = dg.define_asset_job(
    name="recluster_job",
    selection=refresh_selection | dg.AssetSelection.assets(
        "alignment_model", "clusters", "classifier_metrics", "predictions"
    ),
    description="Retrain the alignment heads, full re-cluster of every current record (cluster ids kept by "
                "overlap), retrain and score the classifiers, then the refresh.",
    tags={"mm/job": "recluster"},
)

#: The re-cluster also runs from its cron automation condition; this schedule is the same cadence for
#: deployments that run schedules but not declarative automation (stopped by default: turn one on, not both).
nightly_recluster_schedule = dg.ScheduleDefinition(
    name="nightly_recluster",
    job=recluster_job,
    cron_schedule=RECLUSTER_CRON,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Full re-cluster and mart rebuild every night (alternative to the automation condition).",
)
