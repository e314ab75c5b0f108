"""Jobs and schedules over the asset graph."""

import dagster as dg

from mm_platform.defs.automation import RECLUSTER_CRON
from mm_platform.defs.raw.sensors import BATCH_JOB_NAME
from mm_platform.defs.partitions import batches_partitions
from mm_platform.lib.analysis.recluster import RECLUSTER_TABLES

#: Everything computed per landing batch, in one run: raw → streams → aligned → embeddings → fusion → eager
#: cluster assignment → Qdrant points (and the ``batches`` row).
BATCH_LAYERS = ("raw", "streams", "aligned", "quarantine", "embeddings", "fusion")
batch_selection = dg.AssetSelection.groups(*BATCH_LAYERS) | dg.AssetSelection.assets(
    "cluster_assignments", "vector_points", "batches"
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
        "shared_space_model", *RECLUSTER_TABLES, "classifier_metrics", "predictions"
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


#: run states that count as "in flight" for the global-layer sensor
IN_FLIGHT = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
GLOBAL_JOBS = (refresh_job.name, recluster_job.name)


def global_layer_request(instance: dg.DagsterInstance) -> dg.RunRequest | dg.SkipReason:
    """One global run after the batch runs settle: never while a batch run is in flight, at most one per
    batch run (the run key is the newest successful batch run's id, so a later tick never repeats it).

    The first time (the re-cluster's ``recluster_assignments`` never materialized) it is the full
    ``recluster_job``; afterwards the ``refresh_job`` (summaries, map, shared-space projections, Qdrant
    payloads, SQL marts) over the cluster assignments the batch runs made. Batch runs of `mm-platform ingest` are left alone: the CLI runs the
    global jobs itself."""
    batch_in_flight = instance.get_runs(dg.RunsFilter(job_name=BATCH_JOB_NAME, statuses=list(IN_FLIGHT)))
    if batch_in_flight:
        return dg.SkipReason(f"{len(batch_in_flight)} batch run(s) in flight "
                             f"({', '.join(r.run_id[:8] for r in batch_in_flight)}); the global layer follows "
                             "once they have all ended")
    last = instance.get_runs(dg.RunsFilter(job_name=BATCH_JOB_NAME, statuses=[dg.DagsterRunStatus.SUCCESS]),
                             limit=1)
    if not last:
        return dg.SkipReason("no batch has been ingested yet")
    if last[0].tags.get("mm/source") == "cli":
        return dg.SkipReason("the newest batch run came from `mm-platform ingest`, which runs the global jobs itself")
    for job in GLOBAL_JOBS:
        running = instance.get_runs(dg.RunsFilter(job_name=job, statuses=list(IN_FLIGHT)))
        if running:
            return dg.SkipReason(f"{job} run {running[0].run_id[:8]} in flight; the next tick decides")
    first = instance.get_latest_materialization_event(dg.AssetKey("recluster_assignments")) is None
    job = recluster_job if first else refresh_job
    batch = last[0].tags.get("dagster/partition", "")
    return dg.RunRequest(run_key=f"global-after-{last[0].run_id}", job_name=job.name,
                         tags={"mm/after_batch": batch, "mm/after_run": last[0].run_id})


@dg.sensor(
    name="global_layer_sensor",
    jobs=[refresh_job, recluster_job],
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After the batch runs settle (none in flight), one global run: the first full re-cluster, "
                "then a refresh per batch run at most. Never starts while a batch run is in flight.",
)
def global_layer_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    return global_layer_request(context.instance)
