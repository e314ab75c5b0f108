"""Streams layer: time series shipped with a batch (``streams/<name>.csv|parquet``) aligned to its records.

Each record with a ``timestamp`` gets, per stream, the reading of its ``entity_id`` (or of the stream as a
whole when the stream has no ``entity_id`` column) nearest in time by the configured strategy, within the
configured tolerance (an as-of join). ``alignment_report`` says, per stream and batch, how many records
matched and with which lag; records that did not match are counted there, never dropped. The join is
:mod:`mm_platform.lib.features.stream_features`.
"""


import dagster as dg
import polars as pl

from mm_platform.defs.metadata import preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import LandingResource, PipelineConfigResource, WarehouseResource
from mm_platform.lib.storage.lake import ALL_TABLES
from mm_platform.lib.features.stream_features import STRATEGIES, align_batch_streams


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "stream_features", deps=["raw_records"], group_name="streams", kinds={"polars", "parquet"},
            tags={"layer": "streams"},
            description="Per record of the batch: the stream readings aligned to it (as-of join per entity "
                        "within the tolerance), as ``<stream>__<column>`` and ``<stream>__lag_s`` columns and "
                        "as JSON; ``streams_matched`` counts the streams that had a reading for it.",
        ),
        dg.AssetSpec(
            "alignment_report", deps=["raw_records"], group_name="streams", kinds={"polars", "parquet"},
            tags={"layer": "streams"},
            description="Per stream and batch: readings, entities, records with and without timestamps, "
                        "matched and unmatched records, coverage and lag (median, p95, max), tolerance and "
                        "strategy.",
        ),
    ],
    partitions_def=batches_partitions,
    can_subset=False,
)
def stream_alignment(
    context: dg.AssetExecutionContext, landing: LandingResource, warehouse: WarehouseResource,
    pipeline: PipelineConfigResource,
):
    """Read the batch's stream files and as-of join them onto its records."""
    batch_id = context.partition_key
    lake = warehouse.lake
    if pipeline.stream_strategy not in STRATEGIES:
        raise dg.Failure(f"MM_STREAM_STRATEGY must be one of {', '.join(STRATEGIES)}, got "
                         f"{pipeline.stream_strategy!r}")
    recs = lake.read_partition("raw_records", batch_id).filter(pl.col("op") == "upsert").select(
        "record_id", "timestamp", "entity_id"
    )
    streams = align_batch_streams(recs, landing.batch_dir(batch_id), batch_id, pipeline.stream_strategy,
                                  pipeline.tolerance_for, context.log.info)
    features, reports, rejections, paths = streams.features, streams.reports, streams.rejections, streams.paths
    lake.write_partition("stream_features", batch_id, features)
    report = pl.DataFrame(reports, schema=ALL_TABLES["alignment_report"])
    lake.write_partition("alignment_report", batch_id, report)
    lake.write_stage_rejections(
        "stream_features", batch_id, pl.DataFrame(rejections, schema=ALL_TABLES["rejected_records"])
    )
    yield dg.MaterializeResult(
        asset_key="stream_features",
        metadata={
            "dagster/row_count": features.height,
            "streams": [p.name for p in paths],
            "records_with_a_match": int((features["streams_matched"] > 0).sum()) if features.height else 0,
            "stream_problems": len(rejections),
            "preview": preview(features, ["record_id", "entity_id", "streams_matched", "stream_features_json"]),
        },
    )
    yield dg.MaterializeResult(
        asset_key="alignment_report",
        metadata={
            "dagster/row_count": report.height,
            "coverage": {r["stream"]: r["coverage"] for r in reports},
            "unmatched": {r["stream"]: r["unmatched"] for r in reports},
            "preview": preview(report, ["stream", "records_with_timestamp", "matched", "unmatched", "coverage",
                                        "lag_median_s", "lag_p95_s", "tolerance_s"]),
        },
    )
