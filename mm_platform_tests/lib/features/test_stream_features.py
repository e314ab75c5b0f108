"""A batch's stream files joined onto its records without Dagster (``lib/features/stream_features.py``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from mm_platform.lib.storage.lake import ALL_TABLES
from mm_platform.lib.features.stream_features import MAX_ROW_REJECTIONS, align_batch_streams

T0 = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)


def test_streams_are_joined_reported_and_bad_files_quarantined(tmp_path: Path) -> None:
    streams = tmp_path / "b1" / "streams"
    streams.mkdir(parents=True)
    (streams / "temp.csv").write_text("timestamp,entity_id,celsius\n2024-01-01T07:59:00Z,e1,20.5\n"
                                      "2024-01-01T06:00:00Z,e2,11\nnot a time,e1,3\n")
    (streams / "empty.csv").write_text("")
    recs = pl.DataFrame({"record_id": ["a", "b", "c"], "timestamp": [T0, T0, None], "entity_id": ["e1", "e2", "e1"]},
                        schema_overrides={"timestamp": pl.Datetime("us", "UTC")})
    logged: list[str] = []
    out = align_batch_streams(recs, tmp_path / "b1", "b1", "backward", lambda name: timedelta(minutes=10),
                              logged.append)
    assert [p.name for p in out.paths] == ["empty.csv", "temp.csv"]  # found; the empty one is quarantined
    by_id = {r["record_id"]: r for r in out.features.iter_rows(named=True)}
    assert by_id["a"]["streams_matched"] == 1 and json.loads(by_id["a"]["stream_features_json"]) == {
        "temp.celsius": 20.5}
    assert by_id["b"]["streams_matched"] == 0 and by_id["b"]["stream_features_json"] is None  # 2 h: too old
    assert by_id["c"]["streams_matched"] == 0 and by_id["a"]["temp__lag_s"] == 60
    assert [(r["stream"], r["matched"]) for r in out.reports] == [("temp", 1)]
    reasons = sorted(r["reason"] for r in out.rejections)
    assert reasons == ["empty_stream", "invalid_stream_row"]
    assert pl.DataFrame(out.rejections, schema=ALL_TABLES["rejected_records"])["line_number"].to_list() == [0, 0]
    assert logged and "1 of 2 timestamped records matched" in logged[0]
    assert MAX_ROW_REJECTIONS == 200
