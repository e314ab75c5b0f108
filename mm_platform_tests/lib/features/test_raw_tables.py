"""The raw and aligned rows of a batch (``lib/features/raw_tables.py``) built from a real manifest and real files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from PIL import Image

from mm_platform.lib.storage.lake import ALL_TABLES, Lake
from mm_platform.lib.landing.manifest import Rejection, parse_manifest
from mm_platform.lib.features.raw_tables import (
    aligned_frame,
    image_row,
    inspect_batch_media,
    modality_combinations,
    raw_records_frame,
    raw_text_frame,
    rejection_frame,
    tabular_rows,
    typed_tabular,
)

LANDED = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def _batch(tmp_path: Path) -> Path:
    batch = tmp_path / "landing" / "b1"
    batch.mkdir(parents=True)
    Image.new("RGB", (8, 6), (200, 10, 10)).save(batch / "red.png")
    rows = [
        {"record_id": "r1", "timestamp": "2024-03-01T08:00:00Z", "text": "  a red mug ", "image": "red.png",
         "label": "mug", "fields": {"price": 3.5, "colour": "red"}},
        {"record_id": "r2", "timestamp": "2024-03-01T08:01:00Z", "image": "missing.png", "fields": {"price": "x"}},
        {"record_id": "r3", "op": "delete"},
    ]
    (batch / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    return batch


def test_records_text_and_rejections_of_a_manifest(tmp_path: Path) -> None:
    parsed = parse_manifest(_batch(tmp_path), "b1")
    df = raw_records_frame(parsed, "b1", LANDED)
    assert df["record_id"].to_list() == ["r1", "r2", "r3"] and df["op"].to_list() == ["upsert", "upsert", "delete"]
    assert set(df["landed_at"]) == {LANDED} and set(df["manifest_sha256"]) == {parsed.manifest_sha256}
    assert json.loads(df["fields_json"][0]) == {"colour": "red", "price": 3.5}
    text = raw_text_frame(df)
    assert text["record_id"].to_list() == ["r1"] and text["n_chars"][0] == len(text["text"][0])
    rej = rejection_frame(list(parsed.rejections), "raw_records")
    assert rej.height == 1 and rej["line_number"][0] == 4 and set(rej["stage"]) == {"raw_records"}
    assert set(rej.columns) == set(ALL_TABLES["rejected_records"])


def test_media_rows_and_rejections_are_written_per_stage(tmp_path: Path) -> None:
    batch = _batch(tmp_path)
    lake = Lake(tmp_path / "lake")
    lake.write_partition("raw_records", "b1", raw_records_frame(parse_manifest(batch, "b1"), "b1", LANDED))
    df, rej = inspect_batch_media(lake, "b1", "raw_images", "image_path", lambda r: image_row(batch, r))
    assert df["record_id"].to_list() == ["r1"] and (df["width"][0], df["height"][0]) == (8, 6)
    assert rej["record_id"].to_list() == ["r2"] and rej["modality"][0] == "image"
    assert lake.read_partition("raw_images", "b1").height == 1
    assert lake.read_stage_rejections("b1")["record_id"].to_list() == ["r2"]


def test_tabular_rows_merge_fields_and_stream_values(tmp_path: Path) -> None:
    recs = pl.DataFrame({"record_id": ["a", "b", "c"], "line_number": [1, 2, 3],
                         "fields_json": ['{"x": 1}', None, None]})
    streams = pl.DataFrame({"record_id": ["a", "b"], "stream_features_json": ['{"t.v": 2.0}', '{"t.v": 3.0}']})
    ids, lines, rows, n_fields = tabular_rows(recs, streams)
    assert ids == ["a", "b"] and lines == [1, 2] and rows == [{"x": 1, "t.v": 2.0}, {"t.v": 3.0}]
    assert n_fields == [1, 0]


def test_typed_tabular_fits_once_and_quarantines_unusable_values(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    recs = pl.DataFrame({"record_id": [f"r{i}" for i in range(4)], "line_number": [1, 2, 3, 4],
                         "fields_json": [f'{{"price": {i}.5}}' for i in range(4)]})
    df, rejections, md = typed_tabular(lake, "b1", recs, pl.DataFrame())
    assert df.height == 4 and rejections == [] and md["encoder_fitted_now"] is True
    assert md["encoder_fields"] == {"price": "numeric"}
    later = recs.with_columns(pl.Series("fields_json", ['{"price": 9}', '{"price": "abc"}', None, None]))
    df2, rejections2, md2 = typed_tabular(lake, "b2", later, pl.DataFrame())
    assert md2["encoder_fitted_now"] is False and md2["encoder_version"] == md["encoder_version"]
    assert [(r.record_id, r.modality) for r in rejections2] == [("r1", "fields")]
    assert df2["record_id"].to_list() == ["r0", "r1"] and df2["n_invalid"].to_list() == [0, 1]
    empty, none, md_empty = typed_tabular(lake, "b3", recs.head(0), pl.DataFrame())
    assert empty.height == 0 and none == [] and md_empty == {}


def test_aligned_frame_keeps_records_with_a_valid_modality() -> None:
    recs = pl.DataFrame({"record_id": ["a", "b", "c"], "batch_id": "b1", "line_number": [3, 1, 2],
                         "timestamp": [LANDED] * 3, "label": ["x", None, "y"], "entity_id": [None] * 3},
                        schema_overrides={"entity_id": pl.String})
    text = pl.DataFrame({"record_id": ["a"], "text_sha256": ["t"]})
    images = pl.DataFrame({"record_id": ["b"], "sha256": ["i"]})
    none = pl.DataFrame({"record_id": [], "sha256": []}, schema={"record_id": pl.String, "sha256": pl.String})
    tabular = pl.DataFrame({"record_id": ["a"], "fields_sha256": ["f"]})
    streams = pl.DataFrame({"record_id": ["a"], "streams_matched": [1], "batch_id": ["b1"]})
    df = aligned_frame(recs, text, images, none, tabular, streams)
    assert df["record_id"].to_list() == ["b", "a"]  # by line number; c has no valid modality
    assert df["streams_matched"].to_list() == [0, 1]
    assert modality_combinations(df).to_list() == ["image", "text+tabular"]


def test_rejection_frame_of_nothing_has_the_quarantine_columns() -> None:
    df = rejection_frame([], "raw_audio")
    assert df.height == 0 and set(df.columns) == set(ALL_TABLES["rejected_records"])
    one = rejection_frame([Rejection("b1", 2, None, "audio", "missing_file", "gone.wav")], "raw_audio")
    assert one["record_id"].to_list() == [None] and one["stage"].to_list() == ["raw_audio"]
