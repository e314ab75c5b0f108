"""The one entry point of the code location (``workspace.yaml`` points here).

Loads every domain's assets, checks, sensors, jobs and schedules, registers the resources once, and adds
the cross-cutting sensors: ``global_layer_sensor``, which brings the global layer (clusters, summaries,
Qdrant payloads, SQL marts) up to date once the batch runs settle, and the automation-condition sensor for
the nightly re-cluster.
"""

from __future__ import annotations


import dagster as dg

from mm_platform.defs.aligned import assets as aligned_assets
from mm_platform.defs.classifiers import assets as classifier_assets
from mm_platform.defs.clusters import assets as cluster_assets
from mm_platform.defs.clusters import checks as cluster_checks
from mm_platform.defs.embeddings import assets as embedding_assets
from mm_platform.defs.fusion import assets as fusion_assets
from mm_platform.defs.metadata import with_ui_attributes
from mm_platform.defs.quarantine import assets as quarantine_assets
from mm_platform.defs.raw import assets as raw_assets
from mm_platform.defs.raw.sensors import build_landing_sensor
from mm_platform.defs.shared_space import assets as shared_space_assets
from mm_platform.defs.jobs import (
    batch_ingest_job,
    global_layer_sensor,
    nightly_recluster_schedule,
    recluster_job,
    refresh_job,
)
from mm_platform.defs.resources import build_resources
from mm_platform.defs.sql_models.assets import build_sql_model_assets
from mm_platform.defs.storage import assets as storage_assets
from mm_platform.defs.streams import assets as stream_assets
from mm_platform.defs.vector_index import assets as vector_assets
from mm_platform.lib.settings import setting_int


def build_definitions() -> dg.Definitions:
    assets = with_ui_attributes([
        *dg.load_assets_from_modules(
            # one module per layer, in data-flow order; the group of every asset is its folder's name
            [raw_assets, stream_assets, aligned_assets, quarantine_assets, embedding_assets, fusion_assets,
             shared_space_assets, cluster_assets, classifier_assets, vector_assets, storage_assets]
        ),
        *build_sql_model_assets(),
    ])
    return dg.Definitions(
        assets=assets,
        asset_checks=dg.load_asset_checks_from_modules([cluster_checks]),
        jobs=[batch_ingest_job, recluster_job, refresh_job, storage_assets.lake_housekeeping_job],
        schedules=[nightly_recluster_schedule, storage_assets.weekly_lake_housekeeping_schedule],
        sensors=[
            build_landing_sensor(setting_int("MM_SENSOR_MAX_BATCHES")),
            global_layer_sensor,
            dg.AutomationConditionSensorDefinition(
                "global_automation_sensor",
                target=dg.AssetSelection.all(),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=30,
            ),
        ],
        resources=build_resources(),
        # one process per run: each step process would otherwise load the encoders again (seconds each),
        # and embedded Qdrant / DuckDB prefer one process; runs still go in parallel (run queue) and the
        # `qdrant` pool still serialises writers across runs
        executor=dg.in_process_executor,
    )


defs = build_definitions()
