"""Tests for time-series stream reading and as-of alignment in mm_platform.lib.features.streams."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from mm_platform.lib.features.streams import (
    ALIGNMENT_REPORT_SCHEMA,
    STREAM_DIR,
    StreamError,
    StreamTable,
    align_stream,
    alignment_report_row,
    discover_streams,
    parse_tolerance,
    read_stream,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def _records(rows: list[tuple[str, datetime | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "record_id": [r[0] for r in rows],
            "timestamp": [r[1] for r in rows],
            "entity_id": [r[2] for r in rows],
        },
        schema={"record_id": pl.String, "timestamp": pl.Datetime("us", "UTC"), "entity_id": pl.String},
    )


def _stream(tmp_path: Path, times: list[float], values: list[float], entities: list[str] | None = None,
            name: str = "s") -> StreamTable:
    data: dict[str, list] = {"timestamp": [_t(s) for s in times], "v": values}
    if entities is not None:
        data["entity_id"] = entities
    path = tmp_path / f"{name}.parquet"
    pl.DataFrame(data).write_parquet(path)
    return read_stream(path)


# -- reading -------------------------------------------------------------------------------------------------------


def test_read_csv_iso_offsets_naive_epoch_and_cleaning(tmp_path: Path) -> None:
    p = _write(tmp_path / "temp.csv", (
        "timestamp,entity_id,temp,humidity,status\n"
        "2024-01-01T01:00:00+01:00,a,1.5,10,ok\n"   # = T0 (offset converted)
        "2024-01-01T00:00:05,a,abc,11,ok\n"         # naive = UTC; bad cell
        "1704067210,a,3,,ok\n"                      # epoch seconds = T0 + 10; blank cell is just null
        "1.70406722e9,b,4,12,ok\n"                  # float epoch = T0 + 20
        "2024-01-01T00:00:00Z,b, 5 ,inf,ok\n"       # inf is a bad cell
        "not a time,a,6,1,ok\n"                     # bad row
        ",b,7,1,ok\n"                               # bad row (null timestamp)
        "2024-01-01T00:00:30Z,,8,1,ok\n"            # bad row (no entity)
    ))
    st = read_stream(p)
    assert st.name == "temp" and st.n_rows == 8 and st.has_entity
    assert st.value_columns == ["temp", "humidity"]
    assert any("status" in m for m in st.problems)  # text column dropped
    assert st.frame.schema == pl.Schema(
        {"timestamp": pl.Datetime("us", "UTC"), "entity_id": pl.String, "temp": pl.Float64, "humidity": pl.Float64}
    )
    assert st.frame.rows() == [
        (_t(0), "a", 1.5, 10.0), (_t(5), "a", None, 11.0), (_t(10), "a", 3.0, None),
        (_t(0), "b", 5.0, None), (_t(20), "b", 4.0, 12.0),
    ]
    assert [r for r, _ in st.bad_rows] == [6, 7, 8] and st.n_bad_rows == 3
    assert "entity_id" in st.bad_rows[2][1]
    assert st.bad_cells == 2


def test_read_parquet_datetime_and_epoch_columns(tmp_path: Path) -> None:
    tz2 = timezone(timedelta(hours=2))
    aware = pl.DataFrame({"timestamp": [datetime(2024, 1, 1, 2, 0, 0, tzinfo=tz2)], "x": [1]})
    aware = aware.with_columns(pl.col("timestamp").dt.convert_time_zone("Europe/Berlin"))
    aware.write_parquet(tmp_path / "aware.parquet")
    st = read_stream(tmp_path / "aware.parquet")
    assert st.frame["timestamp"].to_list() == [T0] and not st.has_entity
    assert st.frame.schema["x"] == pl.Float64

    pl.DataFrame({"timestamp": [datetime(2024, 1, 1, 0, 0, 1)], "x": [2.0]}).with_columns(
        pl.col("timestamp").dt.cast_time_unit("ns")
    ).write_parquet(tmp_path / "naive.parquet")
    assert read_stream(tmp_path / "naive.parquet").frame["timestamp"].to_list() == [_t(1)]

    pl.DataFrame({"timestamp": [1704067200, 1704067201, None], "entity_id": [1, 2, 3], "x": [1.0, float("nan"), 3]}
                 ).write_parquet(tmp_path / "EPOCH.PARQUET")
    st = read_stream(tmp_path / "EPOCH.PARQUET")
    assert st.name == "EPOCH"
    assert st.frame.rows() == [(_t(0), "1", 1.0), (_t(1), "2", None)]
    assert st.n_bad_rows == 1 and st.bad_cells == 1

    pl.DataFrame({"timestamp": [1704067200.25], "x": [True]}).write_parquet(tmp_path / "f.parquet")
    st = read_stream(tmp_path / "f.parquet")
    assert st.frame.rows() == [(_t(0.25), 1.0)]


def test_duplicate_readings_keep_last(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.csv", (
        "timestamp,entity_id,v\n"
        "2024-01-01T00:00:00Z,a,1\n"
        "2024-01-01T00:00:00Z,b,2\n"
        "2024-01-01T00:00:00+00:00,a,3\n"
    ))
    st = read_stream(p)
    assert st.n_duplicates == 1
    assert st.frame.rows() == [(T0, "a", 3.0), (T0, "b", 2.0)]
    q = _write(tmp_path / "nd.csv", "timestamp,v\n2024-01-01T00:00:00Z,1\n2024-01-01T00:00:00Z,2\n")
    assert read_stream(q).frame["v"].to_list() == [2.0]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("garbage.parquet", b"this is not parquet at all", "unreadable_stream"),
        ("latin.csv", b"timestamp,v\n2024-01-01,\xe9\xff\n", "unreadable_stream"),
        ("ragged.csv", "timestamp,v\n2024-01-01,1,2,3\n", "unreadable_stream"),
        ("nots.csv", "time,v\n2024-01-01,1\n", "missing_timestamp_column"),
        ("novals.csv", "timestamp,entity_id\n2024-01-01,a\n", "no_value_columns"),
        ("textvals.csv", "timestamp,label\n2024-01-01,hello\n", "no_value_columns"),
        ("empty.csv", "", "empty_stream"),
        ("header.csv", "timestamp,v\n", "empty_stream"),
        ("allbad.csv", "timestamp,v\nnope,1\n,2\n", "empty_stream"),
        ("bad name.csv", "timestamp,v\n2024-01-01,1\n", "invalid_stream_name"),
        ("s.json", "{}", "unsupported_stream_format"),
    ],
)
def test_unusable_files_raise_stream_error(tmp_path: Path, name: str, content: str | bytes, reason: str) -> None:
    p = _write(tmp_path / name, content)
    with pytest.raises(StreamError) as ei:
        read_stream(p)
    assert ei.value.reason == reason, ei.value.detail
    assert isinstance(ei.value, ValueError)


def test_too_large_and_missing_file(tmp_path: Path) -> None:
    p = _write(tmp_path / "big.csv", "timestamp,v\n" + "".join(f"{1704067200 + i},{i}\n" for i in range(20)))
    with pytest.raises(StreamError) as ei:
        read_stream(p, max_rows=10)
    assert ei.value.reason == "stream_too_large"
    with pytest.raises(StreamError) as ei:
        read_stream(p, max_bytes=10)
    assert ei.value.reason == "stream_too_large"
    pq = tmp_path / "bigp.parquet"
    pl.DataFrame({"timestamp": list(range(20)), "v": list(range(20))}).write_parquet(pq)
    with pytest.raises(StreamError, match="stream_too_large"):
        read_stream(pq, max_rows=10)
    with pytest.raises(StreamError) as ei:
        read_stream(tmp_path / "missing.csv")
    assert ei.value.reason == "unreadable_stream"


# -- discovery -----------------------------------------------------------------------------------------------------


def test_discover_streams(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    assert discover_streams(batch) == ([], [])
    sdir = batch / STREAM_DIR
    _write(sdir / "temp.csv", "timestamp,v\n")
    _write(sdir / "Power-1.PARQUET", b"x")
    _write(sdir / "temp.parquet", b"x")  # same stream name as temp.csv
    _write(sdir / ".hidden.csv", "x")
    _write(sdir / "notes.txt", "x")
    _write(sdir / "bad.name.csv", "x")
    (sdir / "subdir.csv").mkdir()
    outside = _write(tmp_path / "outside.csv", "timestamp,v\n")
    os.symlink(outside, sdir / "escape.csv")
    os.symlink(sdir / "temp.csv", sdir / "inside.csv")
    os.symlink(sdir / "nowhere.csv", sdir / "dangling.csv")
    paths, problems = discover_streams(batch)
    assert [p.name for p in paths] == ["Power-1.PARQUET", "inside.csv", "temp.csv"]
    got = {p.path.name: p.reason for p in problems}
    assert got == {
        "bad.name.csv": "invalid_stream_name",
        "dangling.csv": "not_a_file",
        "escape.csv": "path_outside_batch",
        "notes.txt": "unsupported_stream_format",
        "subdir.csv": "not_a_file",
        "temp.parquet": "duplicate_stream_name",
    }
    other = tmp_path / "b2"
    _write(other / STREAM_DIR, "a file")
    assert [p.reason for p in discover_streams(other)[1]] == ["not_a_directory"]


# -- tolerance -----------------------------------------------------------------------------------------------------


def test_parse_tolerance() -> None:
    assert parse_tolerance("250ms") == timedelta(milliseconds=250)
    assert parse_tolerance("30s") == timedelta(seconds=30)
    assert parse_tolerance("5m") == timedelta(minutes=5)
    assert parse_tolerance("2h") == timedelta(hours=2)
    assert parse_tolerance("1d") == timedelta(days=1)
    assert parse_tolerance(" 1.5 ") == timedelta(seconds=1.5)
    assert parse_tolerance("0") == timedelta(0)
    for bad in ("", "-5s", "5x", "abc", "nan", "inf", "5 s s", "1e999d"):
        with pytest.raises(ValueError):
            parse_tolerance(bad)


# -- alignment -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "offset", "matched"),
    [
        ("backward", 10.0, True), ("backward", 10.000001, False), ("backward", -1.0, False),
        ("forward", -10.0, True), ("forward", -10.000001, False), ("forward", 1.0, False),
        ("nearest", 10.0, True), ("nearest", -10.0, True), ("nearest", 10.000001, False),
        ("nearest", -10.000001, False),
    ],
)
def test_tolerance_edges(tmp_path: Path, strategy: str, offset: float, matched: bool) -> None:
    st = _stream(tmp_path, [100.0], [7.0])  # one reading at T0+100s
    recs = _records([("r", _t(100.0 + offset), None)])
    out = align_stream(recs, st, tolerance=timedelta(seconds=10), strategy=strategy)
    assert out["matched"].to_list() == [matched]
    if matched:
        assert out["lag_s"].to_list() == [pytest.approx(offset)] and out["s__v"].to_list() == [7.0]
        assert out["unmatched_reason"].to_list() == [None]
    else:
        assert out["lag_s"].to_list() == [None] and out["s__v"].to_list() == [None]
        assert out["unmatched_reason"].to_list() == ["no_reading_within_tolerance"]


def test_nearest_tie_goes_to_earlier_and_exact_match(tmp_path: Path) -> None:
    st = _stream(tmp_path, [0.0, 10.0], [1.0, 2.0])
    recs = _records([("tie", _t(5.0), None), ("late", _t(6.0), None), ("exact", _t(10.0), None)])
    out = align_stream(recs, st, tolerance=timedelta(seconds=60), strategy="nearest")
    assert out["s__v"].to_list() == [1.0, 2.0, 2.0]
    assert out["lag_s"].to_list() == [5.0, -4.0, 0.0]
    back = align_stream(recs, st, tolerance=timedelta(seconds=60), strategy="backward")
    assert back["s__v"].to_list() == [1.0, 1.0, 2.0]
    fwd = align_stream(recs, st, tolerance=timedelta(seconds=60), strategy="forward")
    assert fwd["s__v"].to_list() == [2.0, 2.0, 2.0]


def test_per_entity_join_and_out_of_order(tmp_path: Path) -> None:
    # stream rows deliberately out of order; entity b's reading is closer in time but must never match a
    st = _stream(tmp_path, [30.0, 0.0, 29.0, 10.0], [3.0, 1.0, 99.0, 2.0], ["a", "a", "b", "a"])
    assert st.frame["v"].to_list() == [1.0, 2.0, 3.0, 99.0]  # sorted by entity then time
    recs = _records([
        ("r3", _t(31.0), "a"), ("r1", _t(1.0), "a"), ("rb", _t(29.5), "b"), ("r2", _t(29.5), "a"),
        ("nob", _t(10.0), "zzz"), ("noent", _t(10.0), None), ("nots", None, "a"),
    ])
    out = align_stream(recs, st, tolerance=timedelta(minutes=1), strategy="backward")
    assert out["record_id"].to_list() == ["r3", "r1", "rb", "r2", "nob", "noent", "nots"]
    assert out["s__v"].to_list() == [3.0, 1.0, 99.0, 2.0, None, None, None]
    assert out["lag_s"].to_list() == [1.0, 1.0, 0.5, 19.5, None, None, None]
    assert out["unmatched_reason"].to_list() == [
        None, None, None, None, "no_reading_within_tolerance", "no_entity", "no_timestamp",
    ]
    assert out.schema == pl.Schema({
        "record_id": pl.String, "matched": pl.Boolean, "lag_s": pl.Float64, "unmatched_reason": pl.String,
        "s__v": pl.Float64,
    })


def test_stream_without_entity_matches_by_time_only(tmp_path: Path) -> None:
    st = _stream(tmp_path, [0.0, 20.0], [1.0, 2.0])
    recs = _records([("x", _t(21.0), None), ("y", _t(5.0), "whatever")])
    out = align_stream(recs, st, tolerance=timedelta(seconds=5), strategy="nearest")
    assert out["matched"].to_list() == [True, True] and out["s__v"].to_list() == [2.0, 1.0]


def test_align_naive_record_timestamps_and_validation(tmp_path: Path) -> None:
    st = _stream(tmp_path, [0.0], [1.0])
    naive = pl.DataFrame({"record_id": ["a"], "timestamp": [datetime(2024, 1, 1, 0, 0, 1)]})
    out = align_stream(naive, st, tolerance=timedelta(seconds=1))
    assert out["matched"].to_list() == [True] and out["lag_s"].to_list() == [1.0]
    empty = align_stream(_records([]), st, tolerance=timedelta(seconds=1))
    assert empty.height == 0 and "s__v" in empty.columns
    with pytest.raises(ValueError, match="strategy"):
        align_stream(naive, st, tolerance=timedelta(1), strategy="sideways")
    with pytest.raises(ValueError, match="tolerance"):
        align_stream(naive, st, tolerance=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="timestamp"):
        align_stream(pl.DataFrame({"record_id": ["a"]}), st, tolerance=timedelta(1))


def test_alignment_report_row(tmp_path: Path) -> None:
    p = _write(tmp_path / "meter.csv", (
        "timestamp,entity_id,kw\n"
        "2024-01-01T00:00:00Z,a,1\n"
        "2024-01-01T00:00:00Z,a,1.5\n"      # duplicate
        "2024-01-01T00:01:00Z,b,x\n"        # bad cell
        "garbage,b,3\n"                     # bad row
    ))
    st = read_stream(p)
    recs = _records([
        ("m1", _t(2), "a"), ("m2", _t(4), "a"), ("m3", _t(62), "b"), ("m4", _t(10), "a"),
        ("u1", _t(100), "b"), ("e1", _t(1), None), ("t1", None, "a"),
    ])
    tol = parse_tolerance("10s")
    out = align_stream(recs, st, tolerance=tol, strategy="backward")
    row = alignment_report_row("batch-1", st, out, tolerance=tol, strategy="backward")
    assert set(row) == set(ALIGNMENT_REPORT_SCHEMA)
    assert row == {
        "batch_id": "batch-1", "stream": "meter", "path": str(p), "rows": 2, "entities": 2,
        "bad_rows": 1, "bad_cells": 1, "duplicates": 1, "records": 7, "records_with_timestamp": 6,
        "matched": 4, "unmatched": 2, "no_timestamp": 1, "no_entity": 1, "coverage": pytest.approx(4 / 6),
        "lag_median_s": pytest.approx(3.0), "lag_p95_s": pytest.approx(9.1), "lag_max_s": pytest.approx(10.0),
        "tolerance_s": 10.0, "strategy": "backward",
    }
    frame = pl.DataFrame([row], schema=ALIGNMENT_REPORT_SCHEMA)
    assert frame.height == 1
    none = align_stream(_records([("t", None, "a")]), st, tolerance=tol)
    r0 = alignment_report_row("b", st, none, tolerance=tol, strategy="backward")
    assert r0["coverage"] is None and r0["lag_median_s"] is None and r0["lag_max_s"] is None
    assert pl.DataFrame([r0], schema=ALIGNMENT_REPORT_SCHEMA).height == 1
