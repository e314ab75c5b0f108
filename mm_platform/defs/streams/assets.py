"""Streams layer: time series shipped with a batch (``streams/<name>.csv|parquet``) aligned to its records.

Each record with a ``timestamp`` gets, per stream, the reading of its ``entity_id`` (or of the stream as a
whole when the stream has no ``entity_id`` column) nearest in time by the configured strategy, within the
configured tolerance (an as-of join). ``alignment_report`` says, per stream and batch, how many records
matched and with which lag; records that did not match are counted there, never dropped.
"""


import json
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from mm_platform.defs.metadata import preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import LandingResource, PipelineConfigResource, WarehouseResource
from mm_platform.lib.lake import ALL_TABLES
from mm_platform.lib.streams import (
    StreamError,
    StreamTable,
    align_stream,
    alignment_report_row,
    discover_streams,
    read_stream,
)

STRATEGIES = ("backward", "forward", "nearest")
#: Bad stream rows quarantined one by one up to this many per file; the rest in one summary row.
MAX_ROW_REJECTIONS = 200


def _rejection(batch_id: str, reason: str, detail: str) -> dict:
    return {"batch_id": batch_id, "line_number": 0, "record_id": None, "modality": "stream", "reason": reason,
            "detail": detail, "stage": "stream_features", "rejected_at": datetime.now(UTC)}


def _row_rejections(batch_id: str, stream: StreamTable) -> list[dict]:
    """One quarantine row per unusable stream row (the first :data:`MAX_ROW_REJECTIONS`, then a summary),
    and one per file-level problem (a value column with no numbers, ...)."""
    out = [_rejection(batch_id, "invalid_stream_row", f"stream {stream.name!r} row {row}: {detail}")
           for row, detail in stream.bad_rows[:MAX_ROW_REJECTIONS]]
    if stream.n_bad_rows > len(out):
        out.append(_rejection(batch_id, "invalid_stream_row",
                              f"stream {stream.name!r}: {stream.n_bad_rows - len(out)} more invalid rows"))
    out += [_rejection(batch_id, "stream_problem", f"stream {stream.name!r}: {p}") for p in stream.problems]
    return out


def _features_json(row: dict) -> str | None:
    """The matched stream values of one record as JSON (``{"<stream>.<column>": value}``), None if none."""
    present = {k: v for k, v in row.items() if v is not None}
    return json.dumps(present, sort_keys=True) if present else None


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
    paths, problems = discover_streams(landing.batch_dir(batch_id))
    rejections = [_rejection(batch_id, p.reason, f"{p.path}: {p.detail}") for p in problems]
    features = recs.select("record_id").with_columns(pl.lit(batch_id).alias("batch_id"))
    json_parts: list[pl.Expr] = []
    matched_cols: list[str] = []
    reports: list[dict] = []
    for path in paths:
        try:
            stream = read_stream(path)
        except StreamError as exc:
            rejections.append(_rejection(batch_id, exc.reason, f"{path.name}: {exc.detail}"))
            continue
        rejections += _row_rejections(batch_id, stream)
        tolerance = pipeline.tolerance_for(stream.name)
        aligned = align_stream(recs, stream, tolerance=tolerance, strategy=pipeline.stream_strategy)
        reports.append(alignment_report_row(batch_id, stream, aligned, tolerance=tolerance,
                                            strategy=pipeline.stream_strategy))
        value_cols = [f"{stream.name}__{c}" for c in stream.value_columns]
        flag = f"_matched_{stream.name}"
        features = features.join(
            aligned.select("record_id", pl.col("matched").alias(flag), pl.col("lag_s").alias(f"{stream.name}__lag_s"),
                           *value_cols),
            on="record_id", how="left",
        )
        matched_cols.append(flag)
        json_parts += [pl.col(c).alias(f"{stream.name}.{c.split('__', 1)[1]}") for c in value_cols]
        context.log.info(f"stream {stream.name}: {reports[-1]['matched']} of {reports[-1]['records_with_timestamp']} "
                         f"timestamped records matched within {tolerance}")
    n_matched = (pl.sum_horizontal([pl.col(c).fill_null(False).cast(pl.Int32) for c in matched_cols])
                 if matched_cols else pl.lit(0))
    values = features.select(json_parts).to_dicts() if json_parts else [{}] * features.height
    features = features.with_columns(
        n_matched.cast(pl.Int32).alias("streams_matched"),
        pl.Series("stream_features_json", [_features_json(row) for row in values], dtype=pl.String),
    ).drop(matched_cols).join(recs.select("record_id", "entity_id", "timestamp"), on="record_id", how="left")
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
