"""The stream features of one batch, without Dagster (moved from ``defs/streams/assets.py``): every stream
file read and as-of joined onto the batch's records, one alignment report row per stream, and every unusable
file or row as a quarantine row (line number 0, modality ``stream``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from mm_platform.lib.features.streams import (
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


@dataclass
class BatchStreams:
    """What :func:`align_batch_streams` found: the ``stream_features`` and ``alignment_report`` rows, the
    quarantine rows, and the stream files read."""

    features: pl.DataFrame
    reports: list[dict]
    rejections: list[dict]
    paths: list[Path]


def align_batch_streams(recs: pl.DataFrame, batch_dir: Path, batch_id: str, strategy: str,
                        tolerance_for: Callable[[str], timedelta],
                        log: Callable[[str], None] = lambda _: None) -> BatchStreams:
    """As-of join every stream file of ``batch_dir`` onto ``recs`` (record_id, timestamp, entity_id of the
    batch's upserts) with ``strategy`` and each stream's tolerance."""
    paths, problems = discover_streams(batch_dir)
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
        tolerance = tolerance_for(stream.name)
        aligned = align_stream(recs, stream, tolerance=tolerance, strategy=strategy)
        reports.append(alignment_report_row(batch_id, stream, aligned, tolerance=tolerance,
                                            strategy=strategy))
        value_cols = [f"{stream.name}__{c}" for c in stream.value_columns]
        flag = f"_matched_{stream.name}"
        features = features.join(
            aligned.select("record_id", pl.col("matched").alias(flag), pl.col("lag_s").alias(f"{stream.name}__lag_s"),
                           *value_cols),
            on="record_id", how="left",
        )
        matched_cols.append(flag)
        json_parts += [pl.col(c).alias(f"{stream.name}.{c.split('__', 1)[1]}") for c in value_cols]
        log(f"stream {stream.name}: {reports[-1]['matched']} of {reports[-1]['records_with_timestamp']} "
                         f"timestamped records matched within {tolerance}")
    n_matched = (pl.sum_horizontal([pl.col(c).fill_null(False).cast(pl.Int32) for c in matched_cols])
                 if matched_cols else pl.lit(0))
    values = features.select(json_parts).to_dicts() if json_parts else [{}] * features.height
    features = features.with_columns(
        n_matched.cast(pl.Int32).alias("streams_matched"),
        pl.Series("stream_features_json", [_features_json(row) for row in values], dtype=pl.String),
    ).drop(matched_cols).join(recs.select("record_id", "entity_id", "timestamp"), on="record_id", how="left")
    return BatchStreams(features, reports, rejections, paths)
