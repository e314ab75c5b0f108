"""As-of alignment of stream readings to records and the per-stream alignment report."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import polars as pl

from mm_platform.lib.features.streams.read import (  # noqa: F401
    _EPOCH,
    _MAX_S,
    _MIN_S,
    _TOL_RE,
    _TOL_UNITS,
    _US,
    _UTC_DT,
    ENTITY,
    STRATEGIES,
    TS,
    StreamTable,
    _short,
)
from mm_platform.lib.storage.tables import ALIGNMENT_REPORT_SCHEMA  # noqa: F401  (the table schema lives with the lake tables)


def parse_tolerance(s: str | float | int) -> timedelta:
    """``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` or a bare number of seconds (``"1.5"``).

    Raises:
        ValueError: negative, empty, non-finite or malformed input.
    """
    if isinstance(s, bool):
        raise ValueError(f"bad tolerance {s!r}")
    if isinstance(s, int | float):
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"tolerance must be a finite number of seconds >= 0, got {s!r}")
        return timedelta(seconds=s)
    if not isinstance(s, str):
        raise ValueError(f"tolerance must be a string like '30s', got {type(s).__name__}")
    t = s.strip()
    if t.startswith("-"):
        raise ValueError(f"tolerance must not be negative: {s!r}")
    m = _TOL_RE.fullmatch(t)
    if not m:
        raise ValueError(f"bad tolerance {s!r}: expected a number with unit ms, s, m, h or d (e.g. '30s')")
    try:
        return timedelta(seconds=float(m.group(1)) * _TOL_UNITS[m.group(2)])
    except OverflowError:
        raise ValueError(f"tolerance too large: {s!r}") from None


def _utc(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.Datetime):
        expr = col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col.dt.convert_time_zone("UTC")
        return expr.dt.cast_time_unit("us")
    if dtype == pl.Date or dtype == pl.Null:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    raise ValueError(f"records.timestamp must be a Datetime column, got {dtype}")


def _asof(cand: pl.DataFrame, right: pl.DataFrame, strategy: str, by: str | None) -> pl.DataFrame:
    left = cand.select("__mm_pos", TS, *([ENTITY] if by else [])).sort(TS)
    joined = left.join_asof(
        right, on=TS, by=by, strategy=strategy, check_sortedness=by is None,  # type: ignore[arg-type]
    )
    return joined.drop(TS, *([ENTITY] if by else []))


def align_stream(
    records: pl.DataFrame, stream: StreamTable, *, tolerance: timedelta, strategy: str = "backward"
) -> pl.DataFrame:
    """As-of join of ``stream`` onto ``records`` (one output row per input row, input order kept).

    ``records`` needs ``record_id`` and ``timestamp`` (Datetime; naive = UTC; null allowed) and, when the
    stream has entities, ``entity_id`` (null: cannot match; a missing column means all null).

    Output columns: ``record_id``, ``matched`` (bool), ``lag_s`` (Float64, record time minus reading
    time, signed; null when unmatched), ``unmatched_reason`` (null, ``no_timestamp``, ``no_entity`` or
    ``no_reading_within_tolerance``) and ``<stream>__<column>`` per value column (null when unmatched).

    Tolerance is inclusive (a reading exactly ``tolerance`` away matches) at microsecond resolution.
    ``nearest`` picks the closer of the backward and forward candidates; a tie goes to the earlier one.

    Raises:
        ValueError: bad strategy, negative tolerance, or missing/mistyped record columns.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(tolerance, timedelta) or tolerance < timedelta(0):
        raise ValueError(f"tolerance must be a timedelta >= 0, got {tolerance!r}")
    for c in ("record_id", TS):
        if c not in records.columns:
            raise ValueError(f"records has no {c!r} column (columns: {records.columns})")
    tol_us = tolerance // _US
    by = ENTITY if stream.has_entity else None
    ent_expr = pl.col(ENTITY).cast(pl.String) if ENTITY in records.columns else pl.lit(None, dtype=pl.String)
    recs = records.select(
        pl.col("record_id"),
        _utc(pl.col(TS), records.schema[TS]).alias(TS),
        ent_expr.alias(ENTITY),
    ).with_row_index("__mm_pos")
    out_cols = {c: f"{stream.name}__{c}" for c in stream.value_columns}
    right = (
        stream.frame.select(TS, *([ENTITY] if by else []), *stream.value_columns)
        .rename(out_cols)
        .with_columns(pl.col(TS).alias("__mm_rts"))
        .sort(TS, maintain_order=True)
    )
    usable = pl.col(TS).is_not_null()
    if by:
        usable = usable & pl.col(ENTITY).is_not_null()
    cand = recs.filter(usable)
    value_names = list(out_cols.values())
    if strategy == "nearest":
        b = _asof(cand, right, "backward", by)
        f = _asof(cand, right, "forward", by).rename({c: c + "__f" for c in ["__mm_rts", *value_names]})
        both = b.join(f, on="__mm_pos", how="left").join(cand.select("__mm_pos", TS), on="__mm_pos", how="left")
        back_d = (pl.col(TS) - pl.col("__mm_rts")).dt.total_microseconds()
        fwd_d = (pl.col("__mm_rts__f") - pl.col(TS)).dt.total_microseconds()
        take_b = pl.col("__mm_rts__f").is_null() | (pl.col("__mm_rts").is_not_null() & (back_d <= fwd_d))
        hits = both.select(
            "__mm_pos",
            *[pl.when(take_b).then(pl.col(c)).otherwise(pl.col(c + "__f")).alias(c) for c in ["__mm_rts", *value_names]],
        )
    else:
        hits = _asof(cand, right, strategy, by)
    res = recs.join(hits, on="__mm_pos", how="left").sort("__mm_pos")
    lag_us = (pl.col(TS) - pl.col("__mm_rts")).dt.total_microseconds()
    matched = (pl.col("__mm_rts").is_not_null() & (lag_us.abs() <= tol_us)).fill_null(False)
    res = res.with_columns(matched.alias("matched"), lag_us.alias("__mm_lag"))
    m = pl.col("matched")
    reason = (
        pl.when(pl.col(TS).is_null()).then(pl.lit("no_timestamp"))
        .when(pl.lit(by is not None) & pl.col(ENTITY).is_null()).then(pl.lit("no_entity"))
        .when(~m).then(pl.lit("no_reading_within_tolerance"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return res.select(
        pl.col("record_id"),
        m,
        pl.when(m).then(pl.col("__mm_lag").cast(pl.Float64) / 1e6).otherwise(None).cast(pl.Float64).alias("lag_s"),
        reason.cast(pl.String).alias("unmatched_reason"),
        *[pl.when(m).then(pl.col(c)).otherwise(None).cast(pl.Float64).alias(c) for c in value_names],
    )


def alignment_report_row(
    batch_id: str, stream: StreamTable, aligned: pl.DataFrame, *, tolerance: timedelta, strategy: str
) -> dict[str, object]:
    """One row (keys/types of :data:`ALIGNMENT_REPORT_SCHEMA`) summarising a stream's alignment.

    ``unmatched`` = records with a timestamp but no match (``no_entity`` + ``no_reading_within_tolerance``);
    ``coverage`` = matched / records_with_timestamp (None when 0); lag statistics are over ``|lag_s|``
    of matched records (None when none), the p95 with linear interpolation.
    """
    n = aligned.height
    reasons = aligned["unmatched_reason"]
    no_ts = int((reasons == "no_timestamp").sum())
    no_ent = int((reasons == "no_entity").sum())
    matched = int(aligned["matched"].sum())
    with_ts = n - no_ts
    lags = np.abs(aligned.filter(pl.col("matched"))["lag_s"].to_numpy().astype(np.float64))
    return {
        "batch_id": batch_id,
        "stream": stream.name,
        "path": str(stream.path),
        "rows": stream.frame.height,
        "entities": int(stream.frame[ENTITY].n_unique()) if stream.has_entity else 0,
        "bad_rows": stream.n_bad_rows,
        "bad_cells": stream.bad_cells,
        "duplicates": stream.n_duplicates,
        "records": n,
        "records_with_timestamp": with_ts,
        "matched": matched,
        "unmatched": with_ts - matched,
        "no_timestamp": no_ts,
        "no_entity": no_ent,
        "coverage": matched / with_ts if with_ts else None,
        "lag_median_s": float(np.median(lags)) if lags.size else None,
        "lag_p95_s": float(np.percentile(lags, 95)) if lags.size else None,
        "lag_max_s": float(lags.max()) if lags.size else None,
        "tolerance_s": tolerance.total_seconds(),
        "strategy": strategy,
    }
