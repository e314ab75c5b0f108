"""Tests for mm_platform.lib.landing.manifest: the landing-zone contract (batch discovery + records.jsonl parsing).

Everything is real: manifests are crafted byte-for-byte into ``tmp_path`` batch folders, images are
real PNG files written by PIL, and batch discovery runs on real folders with mtimes set by ``os.utime``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from mm_platform.lib.landing import manifest as mf
from mm_platform.lib.landing.manifest import (
    MANIFEST_NAME,
    MAX_FIELDS,
    MAX_LABEL_CHARS,
    MAX_RECORD_ID_CHARS,
    BatchInfo,
    ManifestRecord,
    ParsedManifest,
    Rejection,
    check_record_media,
    file_sha256,
    is_valid_batch_id,
    list_complete_batches,
    parse_manifest,
    parse_timestamp,
    validate_batch,
)

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def write_manifest(
    batch_dir: Path, lines: list[bytes | str | dict], *, trailing_newline: bool = True
) -> Path:
    """Write ``records.jsonl`` from raw byte lines, strings or dicts (dicts are json.dumps'ed)."""
    batch_dir.mkdir(parents=True, exist_ok=True)
    out: list[bytes] = []
    for ln in lines:
        if isinstance(ln, dict):
            out.append(json.dumps(ln).encode("utf-8"))
        elif isinstance(ln, str):
            out.append(ln.encode("utf-8"))
        else:
            out.append(ln)
    data = b"\n".join(out) + (b"\n" if trailing_newline else b"")
    path = batch_dir / MANIFEST_NAME
    path.write_bytes(data)
    return path


def parse_lines(tmp_path: Path, lines: list[bytes | str | dict], batch_id: str = "b1") -> ParsedManifest:
    bdir = tmp_path / batch_id
    write_manifest(bdir, lines)
    return parse_manifest(bdir)


def png_bytes(size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def only_rejection(pm: ParsedManifest) -> Rejection:
    assert len(pm.rejections) == 1, pm.rejections
    return pm.rejections[0]


def reasons(pm: ParsedManifest | mf.ValidatedBatch) -> list[tuple[int, str, str]]:
    return [(r.line_number, r.modality, r.reason) for r in pm.rejections]


def assert_accounted(pm: ParsedManifest | mf.ValidatedBatch, nonblank_lines: set[int]) -> None:
    """Every non-blank line yields a record or at least one rejection; nothing else appears."""
    covered = {r.line_number for r in pm.records} | {r.line_number for r in pm.rejections}
    assert covered == nonblank_lines
    assert pm.n_lines == len(nonblank_lines)


# --------------------------------------------------------------------------------------------------
# is_valid_batch_id / parse_timestamp / file_sha256
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bid", ["b1", "2024-03-01_batch.7", "A" * 128, "a.b-c_d", "..a", "x.."])
def test_is_valid_batch_id_accepts(bid: str) -> None:
    assert is_valid_batch_id(bid)


@pytest.mark.parametrize(
    "bid", ["", ".", "..", "A" * 129, "with space", "a/b", "a\\b", "é", "a\nb", "a:b", None, 12, b"b1"]
)
def test_is_valid_batch_id_rejects(bid: object) -> None:
    assert not is_valid_batch_id(bid)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-01T08:00:00Z", datetime(2024, 3, 1, 8, 0, tzinfo=UTC)),
        ("2024-03-01T08:00:00+02:00", datetime(2024, 3, 1, 6, 0, tzinfo=UTC)),
        ("2024-03-01T08:00:00-05:30", datetime(2024, 3, 1, 13, 30, tzinfo=UTC)),
        ("2024-03-01T08:00:00", datetime(2024, 3, 1, 8, 0, tzinfo=UTC)),  # naive = UTC
        ("2024-03-01 08:00:00.123456", datetime(2024, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)),
        ("  2024-03-01T08:00:00Z  ", datetime(2024, 3, 1, 8, 0, tzinfo=UTC)),  # outer whitespace ok
        ("2024-03-01", datetime(2024, 3, 1, 0, 0, tzinfo=UTC)),  # date-only
        ("2024-12-31T23:30:00-01:00", datetime(2025, 1, 1, 0, 30, tzinfo=UTC)),  # crosses a year
    ],
)
def test_parse_timestamp_valid(value: str, expected: datetime) -> None:
    got = parse_timestamp(value)
    assert got == expected
    assert got.tzinfo is not None and got.utcoffset() == timedelta(0)
    assert got.tzinfo == UTC


def test_parse_timestamp_preserves_instant_for_offsets() -> None:
    tz = timezone(timedelta(hours=9))
    src = datetime(2023, 7, 4, 12, 34, 56, tzinfo=tz)
    assert parse_timestamp(src.isoformat()) == src
    assert parse_timestamp(src.isoformat()).hour == 3


@pytest.mark.parametrize(
    ("value", "msg"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("yesterday", "not an ISO-8601"),
        ("2024-13-01", "not an ISO-8601"),
        ("2024-02-30T00:00:00", "not an ISO-8601"),
        ("0001-01-01T00:00:00+01:00", "out of range"),  # UTC conversion underflows year 1
        ("9999-12-31T23:59:59-01:00", "out of range"),  # UTC conversion overflows year 9999
        ("2024-03-01T08:00:00\ud800", "not an ISO-8601"),  # lone surrogate
        (1709280000, "ISO-8601 string"),
        (None, "ISO-8601 string"),
        (["2024-03-01"], "ISO-8601 string"),
    ],
)
def test_parse_timestamp_invalid(value: object, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        parse_timestamp(value)


def test_file_sha256(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # spans several 1 MiB read chunks
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(p)) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# parse_manifest: valid records
# --------------------------------------------------------------------------------------------------


def test_full_record_parsed(tmp_path: Path) -> None:
    pm = parse_lines(
        tmp_path,
        [
            {
                "record_id": "r1",
                "op": "upsert",
                "timestamp": "2024-03-01T10:00:00+02:00",
                "text": "  Cafe\u0301 latte  ",
                "image": "images/r1.png",
                "audio": "audio/r1.wav",
                "fields": {"price": 9.5, "n": 3, "name": "x", "missing": None},
                "label": "  mug ",
                "future_key": {"ignored": True},
            }
        ],
    )
    assert pm.batch_id == "b1"
    assert pm.n_lines == 1
    assert pm.rejections == []
    (rec,) = pm.records
    assert isinstance(rec, ManifestRecord)
    assert rec.batch_id == "b1" and rec.line_number == 1 and rec.record_id == "r1" and rec.op == "upsert"
    assert rec.timestamp == datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    assert rec.text == "Café latte"  # NFC + stripped
    assert rec.image == "images/r1.png" and rec.audio == "audio/r1.wav"
    assert rec.fields == {"price": 9.5, "n": 3, "name": "x", "missing": None}
    assert rec.label == "mug"
    assert rec.modalities == ("text", "image", "audio", "fields")


def test_op_defaults_to_upsert_and_null_op(tmp_path: Path) -> None:
    pm = parse_lines(
        tmp_path, [{"record_id": "a", "text": "hi"}, {"record_id": "b", "op": None, "text": "yo"}]
    )
    assert [r.op for r in pm.records] == ["upsert", "upsert"]
    assert pm.records[0].timestamp is None
    assert pm.records[0].modalities == ("text",)
    assert pm.records[0].label is None and pm.records[0].fields is None


def test_null_modalities_are_absent(tmp_path: Path) -> None:
    pm = parse_lines(
        tmp_path, [{"record_id": "a", "text": None, "image": "i.png", "audio": None, "fields": None}]
    )
    (rec,) = pm.records
    assert rec.modalities == ("image",)
    assert pm.rejections == []


def test_fields_only_record(tmp_path: Path) -> None:
    pm = parse_lines(tmp_path, [{"record_id": "a", "fields": {"x": -1, "y": 1e300, "z": ""}}])
    assert pm.records[0].modalities == ("fields",)
    assert pm.records[0].fields == {"x": -1, "y": 1e300, "z": ""}


def test_max_fields_exactly_allowed(tmp_path: Path) -> None:
    fields = {f"f{i}": i for i in range(MAX_FIELDS)}
    pm = parse_lines(tmp_path, [{"record_id": "a", "fields": fields}])
    assert pm.rejections == []
    assert len(pm.records[0].fields or {}) == MAX_FIELDS


def test_delete_needs_only_record_id(tmp_path: Path) -> None:
    pm = parse_lines(
        tmp_path,
        [
            {"record_id": "d1", "op": "delete"},
            {
                "record_id": "d2",
                "op": "delete",
                "timestamp": "2024-01-01T00:00:00Z",
                "text": "",
                "image": "/abs",
            },
            {"record_id": "d3", "op": "delete", "timestamp": "garbage"},
        ],
    )
    assert [r.record_id for r in pm.records] == ["d1", "d2", "d3"]
    for r in pm.records:
        assert r.op == "delete"
        assert r.modalities == ()
        assert (r.text, r.image, r.audio, r.fields, r.label) == (None, None, None, None, None)
    assert pm.records[1].timestamp == datetime(2024, 1, 1, tzinfo=UTC)
    # payload keys of deletes are ignored (empty text / absolute image not rejected); a bad timestamp is
    assert reasons(pm) == [(3, "timestamp", "invalid_timestamp")]
    assert pm.records[2].timestamp is None


def test_timestamps_in_records(tmp_path: Path) -> None:
    pm = parse_lines(
        tmp_path,
        [
            {"record_id": "z", "text": "t", "timestamp": "2024-03-01T08:00:00Z"},
            {"record_id": "o", "text": "t", "timestamp": "2024-03-01T10:00:00+02:00"},
            {"record_id": "n", "text": "t", "timestamp": "2024-03-01T08:00:00"},
            {"record_id": "d", "text": "t", "timestamp": "2024-03-01"},
        ],
    )
    assert pm.rejections == []
    ts = {r.record_id: r.timestamp for r in pm.records}
    assert ts["z"] == ts["o"] == ts["n"] == datetime(2024, 3, 1, 8, tzinfo=UTC)
    assert ts["d"] == datetime(2024, 3, 1, tzinfo=UTC)
    assert all(t is not None and t.tzinfo == UTC for t in ts.values())


def test_unicode_ids_and_text_roundtrip(tmp_path: Path) -> None:
    pm = parse_lines(tmp_path, ['{"record_id": "ключ-日本", "text": "\\u00e9t\\u00e9 \\ud83d\\ude00"}'])
    (rec,) = pm.records
    assert rec.record_id == "ключ-日本"
    assert rec.text == "été 😀"  # a valid surrogate *pair* escape is fine


def test_record_id_max_length_allowed(tmp_path: Path) -> None:
    rid = "x" * MAX_RECORD_ID_CHARS
    pm = parse_lines(tmp_path, [{"record_id": rid, "text": "t"}])
    assert pm.records[0].record_id == rid


def test_label_max_length_allowed(tmp_path: Path) -> None:
    pm = parse_lines(tmp_path, [{"record_id": "a", "text": "t", "label": " " + "l" * MAX_LABEL_CHARS + " "}])
    assert pm.rejections == []
    assert pm.records[0].label == "l" * MAX_LABEL_CHARS


# --------------------------------------------------------------------------------------------------
# parse_manifest: record-level rejections
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "detail_part"),
    [
        (b'{"record_id": "a", "text": "trunc', "invalid JSON"),
        (b'{"record_id": "a", "text": "x"', "invalid JSON"),
        (b'{"record_id": "a", "text": "x"} trailing', "invalid JSON"),
        (b"{'record_id': 'a'}", "invalid JSON"),
        (b'["record_id", "a"]', "expected a JSON object, got list"),
        (b"42", "expected a JSON object, got int"),
        (b"3.5", "expected a JSON object, got float"),
        (b'"just a string"', "expected a JSON object, got str"),
        (b"null", "expected a JSON object, got NoneType"),
        (b"true", "expected a JSON object, got bool"),
        (b'{"record_id": "a", "record_id": "b", "text": "x"}', "duplicate key"),
        (b'{"record_id": "a", "fields": {"x": NaN}}', "non-standard JSON constant NaN"),
        (b'{"record_id": "a", "fields": {"x": Infinity}}', "non-standard JSON constant Infinity"),
        (b'{"record_id": "a", "fields": {"x": -Infinity}}', "non-standard JSON constant -Infinity"),
        (b'{"record_id": "a", "fields": {"x": ' + b"9" * 5000 + b"}}", "invalid JSON"),  # int digit limit
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),  # RecursionError
        (b"not json at all", "invalid JSON"),
    ],
)
def test_malformed_json(tmp_path: Path, raw: bytes, detail_part: str) -> None:
    pm = parse_lines(tmp_path, [raw])
    assert pm.records == []
    r = only_rejection(pm)
    assert (r.line_number, r.record_id, r.modality, r.reason) == (1, None, "record", "malformed_json")
    assert detail_part in r.detail
    assert r.batch_id == "b1"


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        b'{"record_id": "a", "text": "\xff\xfe"}',
        b'{"record_id": "a", "text": "caf\xe9"}',  # latin-1, not UTF-8
        b'{"record_id": "a", "text": "\xed\xa0\x80"}',  # UTF-8-encoded surrogate (invalid UTF-8)
        b'{"record_id": "a", "text": "\xe2\x82"}',  # cut multi-byte sequence
    ],
)
def test_invalid_encoding(tmp_path: Path, raw: bytes) -> None:
    pm = parse_lines(tmp_path, [raw])
    assert pm.records == []
    r = only_rejection(pm)
    assert (r.modality, r.reason, r.record_id) == ("record", "invalid_encoding", None)
    assert "not valid UTF-8" in r.detail and "offset" in r.detail


def test_invalid_encoding_detail_names_byte_and_offset(tmp_path: Path) -> None:
    pm = parse_lines(tmp_path, [b'{"a": "\xff"}'])
    assert "byte ff at offset 7" in only_rejection(pm).detail


@pytest.mark.parametrize(
    "obj",
    [{"text": "hi"}, {"record_id": None, "text": "hi"}, {"op": "delete"}, {}],
)
def test_missing_record_id(tmp_path: Path, obj: dict) -> None:
    pm = parse_lines(tmp_path, [obj])
    r = only_rejection(pm)
    assert (r.modality, r.reason, r.record_id) == ("record", "missing_record_id", None)
    assert pm.records == []


@pytest.mark.parametrize(
    ("rid_json", "detail_part"),
    [
        ("123", "must be a string, got int"),
        ("1.5", "must be a string, got float"),
        ("true", "must be a string, got bool"),
        ('["a"]', "must be a string, got list"),
        ('{"a": 1}', "must be a string, got dict"),
        ('""', "empty or whitespace"),
        ('"   "', "empty or whitespace"),
        ('"a\\nb"', "control"),
        ('"a\\u0000b"', "control"),
        ('"a\\u0007"', "control"),
        ('"a\\u007fb"', "control"),
        ('"a\\u0085b"', "control"),  # C1 control
        ('"\\ud800"', "surrogates"),
        ('"ab\\udfff"', "surrogates"),
        ('" lead"', "leading/trailing whitespace"),
        ('"trail "', "leading/trailing whitespace"),
        ('"\\u3000ideographic"', "leading/trailing whitespace"),
        ('"' + "x" * (MAX_RECORD_ID_CHARS + 1) + '"', f"longer than {MAX_RECORD_ID_CHARS}"),
    ],
)
def test_invalid_record_id(tmp_path: Path, rid_json: str, detail_part: str) -> None:
    pm = parse_lines(tmp_path, ['{"record_id": ' + rid_json + ', "text": "hello"}'])
    assert pm.records == []
    r = only_rejection(pm)
    assert (r.modality, r.reason) == ("record", "invalid_record_id")
    assert detail_part in r.detail


@pytest.mark.parametrize("op", ["UPSERT", "insert", "", 1, ["upsert"], {"op": "delete"}, True])
def test_invalid_op(tmp_path: Path, op: object) -> None:
    pm = parse_lines(tmp_path, [{"record_id": "r", "op": op, "text": "hello"}])
    assert pm.records == []
    r = only_rejection(pm)
    assert (r.modality, r.reason, r.record_id) == ("record", "invalid_op", "r")


@pytest.mark.parametrize(
    "obj",
    [
        {"record_id": "r"},
        {"record_id": "r", "op": "upsert", "text": None, "image": None, "audio": None, "fields": None},
        {"record_id": "r", "label": "mug", "timestamp": "2024-01-01"},  # label/timestamp are no modality
        {"record_id": "r", "caption": "unknown keys do not count"},
    ],
)
def test_no_modality(tmp_path: Path, obj: dict) -> None:
    pm = parse_lines(tmp_path, [obj])
    assert pm.records == []
    r = only_rejection(pm)
    assert (r.modality, r.reason, r.record_id) == ("record", "no_modality", "r")


def test_duplicate_record_id_first_wins(tmp_path: Path) -> None:
    pm = parse_lines(
        tmp_path,
        [
            {"record_id": "a", "text": "first"},
            {"record_id": "b", "text": "other"},
            {"record_id": "a", "text": "second", "label": 5},  # its own label problem is superseded
            {"record_id": "a", "op": "delete"},
        ],
    )
    assert [(r.line_number, r.record_id) for r in pm.records] == [(1, "a"), (2, "b")]
    assert pm.records[0].text == "first"
    assert reasons(pm) == [(3, "record", "duplicate_record_id"), (4, "record", "duplicate_record_id")]
    assert all(r.record_id == "a" for r in pm.rejections)
    assert "already used on line 1" in pm.rejections[0].detail


def test_duplicate_after_rejected_first_line(tmp_path: Path) -> None:
    """The first *accepted* line with an id wins: a line rejected outright does not claim the id."""
    pm = parse_lines(
        tmp_path,
        [
            {"record_id": "a", "op": "bogus", "text": "x"},  # invalid_op
            {"record_id": "a", "text": ""},  # every modality rejected -> no record
            {"record_id": "a", "text": "accepted"},
            {"record_id": "a", "text": "dup"},
        ],
    )
    assert [(r.line_number, r.text) for r in pm.records] == [(3, "accepted")]
    assert reasons(pm) == [
        (1, "record", "invalid_op"),
        (2, "text", "empty_text"),
        (4, "record", "duplicate_record_id"),
    ]
    assert "already used on line 3" in pm.rejections[-1].detail


def test_duplicate_when_first_had_partial_rejection(tmp_path: Path) -> None:
    """A record kept with a rejected part still claims its id."""
    pm = parse_lines(
        tmp_path,
        [{"record_id": "a", "text": "ok", "image": "/abs.png"}, {"record_id": "a", "text": "again"}],
    )
    assert [r.line_number for r in pm.records] == [1]
    assert reasons(pm) == [(1, "image", "path_outside_batch"), (2, "record", "duplicate_record_id")]


# --------------------------------------------------------------------------------------------------
# parse_manifest: part-level rejections
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "detail_part"),
    [
        ("not a date", "not an ISO-8601"),
        ("", "empty"),
        (12345, "ISO-8601 string, got int"),
        (["2024"], "ISO-8601 string, got list"),
        ("0001-01-01T00:00:00+05:00", "out of range"),
    ],
)
def test_invalid_timestamp_keeps_record(tmp_path: Path, ts: object, detail_part: str) -> None:
    pm = parse_lines(tmp_path, [{"record_id": "r", "timestamp": ts, "text": "hello", "label": "mug"}])
    (rec,) = pm.records
    assert rec.timestamp is None
    assert rec.text == "hello" and rec.label == "mug"
    r = only_rejection(pm)
    assert (r.line_number, r.record_id, r.modality, r.reason) == (1, "r", "timestamp", "invalid_timestamp")
    assert detail_part in r.detail


def test_invalid_timestamp_and_no_modality(tmp_path: Path) -> None:
    pm = parse_lines(tmp_path, [{"record_id": "r", "timestamp": "bad"}])
    assert pm.records == []
    assert reasons(pm) == [(1, "record", "no_modality")]


@pytest.mark.parametrize(
    ("label_json", "detail_part"),
    [
        ("5", "must be a string, got int"),
        ('["mug"]', "must be a string, got list"),
        ('{"a": 1}', "must be a string, got dict"),
        ("false", "must be a string, got bool"),
        ('""', "empty or whitespace"),
        ('"  \\t "', "control"),  # tab is a control character
        ('"   "', "empty or whitespace"),
        ('"a\\u0000"', "surrogates/control"),
        ('"a\\nb"', "surrogates/control"),
        ('"\\udc00"', "surrogates/control"),
        ('"' + "l" * (MAX_LABEL_CHARS + 1) + '"', f"longer than {MAX_LABEL_CHARS}"),
    ],
)
def test_invalid_label_keeps_record(tmp_path: Path, label_json: str, detail_part: str) -> None:
    pm = parse_lines(tmp_path, ['{"record_id": "r", "text": "hello", "label": ' + label_json + "}"])
    (rec,) = pm.records
    assert rec.label is None and rec.text == "hello"
    r = only_rejection(pm)
    assert (r.modality, r.reason, r.record_id) == ("label", "invalid_label", "r")
    assert detail_part in r.detail


@pytest.mark.parametrize(
    ("fields_json", "detail_part"),
    [
        ('{"a": {"nested": 1}}', "value must be number, string or null, got dict"),
        ('{"a": [1, 2]}', "got list"),
        ('{"a": true}', "booleans not allowed"),
        ('{"a": 9223372036854775808}', "out of 64-bit range"),
        ('{"a": -9223372036854775808}', "out of 64-bit range"),
        ('{"a": 1e400}', "non-finite"),
        ('{"a": "\\ud800"}', "lone surrogates or NUL"),
        ('{"a": "x\\u0000y"}', "lone surrogates or NUL"),
        ('{"a": "' + "s" * 10_001 + '"}', "longer than 10000"),
        ('{"": 1}', "bad field name"),
        ('{"  ": 1}', "bad field name"),
        ('{"' + "k" * 129 + '": 1}', "bad field name"),
        ('{"a\\nb": 1}', "bad field name"),
        ('{"\\ud800": 1}', "bad field name"),
        ("{}", "empty"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('"price=3"', "must be a JSON object, got str"),
        ("7", "must be a JSON object, got int"),
    ],
)
def test_invalid_fields_keeps_record(tmp_path: Path, fields_json: str, detail_part: str) -> None:
    pm = parse_lines(tmp_path, ['{"record_id": "r", "text": "hello", "fields": ' + fields_json + "}"])
    (rec,) = pm.records
    assert rec.fields is None and rec.modalities == ("text",)
    r = only_rejection(pm)
    assert (r.modality, r.reason, r.record_id) == ("fields", "invalid_fields", "r")
    assert detail_part in r.detail


def test_invalid_fields_too_many(tmp_path: Path) -> None:
    fields = {f"f{i}": i for i in range(MAX_FIELDS + 1)}
    pm = parse_lines(tmp_path, [{"record_id": "r", "text": "t", "fields": fields}])
    r = only_rejection(pm)
    assert r.reason == "invalid_fields" and f"> limit {MAX_FIELDS}" in r.detail


def test_invalid_fields_one_bad_value_rejects_all_fields(tmp_path: Path) -> None:
    pm = parse_lines(tmp_path, [{"record_id": "r", "text": "t", "fields": {"ok": 1, "bad": {"x": 1}}}])
    assert pm.records[0].fields is None
    assert "bad:" in only_rejection(pm).detail


def test_invalid_fields_detail_capped(tmp_path: Path) -> None:
    fields = {f"f{i}": [i] for i in range(15)}
    pm = parse_lines(tmp_path, [{"record_id": "r", "text": "t", "fields": fields}])
    assert "(+5 more)" in only_rejection(pm).detail


@pytest.mark.parametrize(
    ("text_json", "reason"),
    [
        ('"\\ud800"', "invalid_text"),
        ('"ok \\udfff tail"', "invalid_text"),
        ('"a\\u0000b"', "invalid_text"),
        ("123", "invalid_text"),
        ('["a"]', "invalid_text"),
        ('{"t": "x"}', "invalid_text"),
        ("false", "invalid_text"),
        ('""', "empty_text"),
        ('"   \\n\\t  "', "empty_text"),
        ('"\\ufeff\\u200b"', "empty_text"),
    ],
)
def test_text_rejections_keep_other_modalities(tmp_path: Path, text_json: str, reason: str) -> None:
    pm = parse_lines(tmp_path, ['{"record_id": "r", "image": "img/a.png", "text": ' + text_json + "}"])
    (rec,) = pm.records
    assert rec.text is None and rec.modalities == ("image",)
    r = only_rejection(pm)
    assert (r.modality, r.reason, r.record_id) == ("text", reason, "r")


def test_text_too_long(tmp_path: Path) -> None:
    from mm_platform.lib.media import DEFAULT_MAX_TEXT_CHARS

    pm = parse_lines(
        tmp_path, [{"record_id": "r", "fields": {"a": 1}, "text": "x" * (DEFAULT_MAX_TEXT_CHARS + 1)}]
    )
    assert reasons(pm) == [(1, "text", "text_too_long")]
    assert pm.records[0].modalities == ("fields",)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc/passwd", "path_outside_batch"),
        ("//host/share/x.png", "path_outside_batch"),
        ("C:\\x.png", "path_outside_batch"),
        ("../x.png", "path_outside_batch"),
        ("images/../../x.png", "path_outside_batch"),
        ("", "invalid_path"),
        ("   ", "invalid_path"),
        (".", "invalid_path"),
        ("./", "invalid_path"),
        ("a/..", "invalid_path"),
        ("images\\a.png", "invalid_path"),
        ("a\u0000b.png", "invalid_path"),
        ("a\nb.png", "invalid_path"),
        ("\ud800.png", "invalid_path"),
        (5, "invalid_path"),
        (["a.png"], "invalid_path"),
    ],
)
@pytest.mark.parametrize("modality", ["image", "audio"])
def test_path_rejections(tmp_path: Path, path: object, reason: str, modality: str) -> None:
    obj = {"record_id": "r", "text": "keep me", modality: path}
    pm = parse_lines(tmp_path, [obj])
    (rec,) = pm.records
    assert rec.modalities == ("text",)
    r = only_rejection(pm)
    assert (r.modality, r.reason, r.record_id) == (modality, reason, "r")
    assert r.detail.startswith(modality)


@pytest.mark.parametrize(
    "path", ["a.png", "images/r1.png", "./images/r1.png", "a/../b.png", "deep/er/x.webp"]
)
def test_valid_relative_paths_kept_as_written(tmp_path: Path, path: str) -> None:
    pm = parse_lines(tmp_path, [{"record_id": "r", "image": path}])
    assert pm.rejections == []
    assert pm.records[0].image == path


def test_all_modalities_rejected_no_record(tmp_path: Path) -> None:
    pm = parse_lines(
        tmp_path,
        [
            {
                "record_id": "r",
                "timestamp": "bad",
                "text": "",
                "image": "../x.png",
                "audio": "",
                "fields": {"a": [1]},
                "label": 3,
            }
        ],
    )
    assert pm.records == []
    assert reasons(pm) == [
        (1, "timestamp", "invalid_timestamp"),
        (1, "text", "empty_text"),
        (1, "image", "path_outside_batch"),
        (1, "audio", "invalid_path"),
        (1, "fields", "invalid_fields"),
        (1, "label", "invalid_label"),
    ]
    assert all(r.record_id == "r" for r in pm.rejections)


# --------------------------------------------------------------------------------------------------
# parse_manifest: line handling, hashing, accounting
# --------------------------------------------------------------------------------------------------


def test_blank_lines_skipped_and_not_counted(tmp_path: Path) -> None:
    bdir = tmp_path / "b1"
    bdir.mkdir()
    data = (
        b"\n"
        b'{"record_id": "a", "text": "x"}\n'
        b"   \t \n"
        b"\r\n"
        b'{"record_id": "b", "text": "y"}\r\n'
        b"\x0b\x0c\n"
        b"{bad\n"
        b"\n"
        b'{"record_id": "c", "text": "z"}'  # no trailing newline
    )
    (bdir / MANIFEST_NAME).write_bytes(data)
    pm = parse_manifest(bdir)
    assert pm.n_lines == 4
    assert [(r.line_number, r.record_id) for r in pm.records] == [(2, "a"), (5, "b"), (9, "c")]
    assert reasons(pm) == [(7, "record", "malformed_json")]
    assert pm.manifest_sha256 == hashlib.sha256(data).hexdigest()


def test_empty_manifest(tmp_path: Path) -> None:
    bdir = tmp_path / "b1"
    bdir.mkdir()
    (bdir / MANIFEST_NAME).write_bytes(b"")
    pm = parse_manifest(bdir)
    assert (pm.n_lines, pm.records, pm.rejections) == (0, [], [])
    assert pm.manifest_sha256 == hashlib.sha256(b"").hexdigest()


def test_bom_on_first_line(tmp_path: Path) -> None:
    bdir = tmp_path / "b1"
    bdir.mkdir()
    data = b'\xef\xbb\xbf{"record_id": "a", "text": "x"}\n\xef\xbb\xbf{"record_id": "b", "text": "y"}\n'
    (bdir / MANIFEST_NAME).write_bytes(data)
    pm = parse_manifest(bdir)
    assert [r.record_id for r in pm.records] == ["a"]
    # a BOM is only tolerated at the start of the file
    assert reasons(pm) == [(2, "record", "malformed_json")]
    assert pm.manifest_sha256 == hashlib.sha256(data).hexdigest()


def test_bom_only_first_line_is_blank(tmp_path: Path) -> None:
    bdir = tmp_path / "b1"
    bdir.mkdir()
    (bdir / MANIFEST_NAME).write_bytes(b'\xef\xbb\xbf\n{"record_id": "a", "text": "x"}\n')
    pm = parse_manifest(bdir)
    assert pm.n_lines == 1
    assert [(r.line_number, r.record_id) for r in pm.records] == [(2, "a")]


def test_crlf_line_endings(tmp_path: Path) -> None:
    bdir = tmp_path / "b1"
    bdir.mkdir()
    (bdir / MANIFEST_NAME).write_bytes(
        b'{"record_id": "a", "text": "x"}\r\n{"record_id": "b", "text": "y"}\r\n'
    )
    pm = parse_manifest(bdir)
    assert [r.record_id for r in pm.records] == ["a", "b"]
    assert pm.rejections == []


def test_manifest_sha256_matches_file_bytes(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "b1", [{"record_id": "a", "text": "x"}, b"\xff garbage", b"", b"[1]"])
    pm = parse_manifest(tmp_path / "b1")
    assert pm.manifest_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert pm.manifest_sha256 == file_sha256(path)


def test_batch_id_default_and_override(tmp_path: Path) -> None:
    write_manifest(tmp_path / "folder-1", [{"record_id": "a", "text": "x"}, b"{"])
    assert parse_manifest(tmp_path / "folder-1").batch_id == "folder-1"
    pm = parse_manifest(tmp_path / "folder-1", batch_id="other.id")
    assert pm.batch_id == "other.id"
    assert {r.batch_id for r in pm.records} | {r.batch_id for r in pm.rejections} == {"other.id"}


@pytest.mark.parametrize("bad_id", ["bad id", "..", "x/y", ""])
def test_invalid_batch_id_raises(tmp_path: Path, bad_id: str) -> None:
    write_manifest(tmp_path / "ok", [{"record_id": "a", "text": "x"}])
    with pytest.raises(ValueError, match="invalid batch id"):
        parse_manifest(tmp_path / "ok", batch_id=bad_id)


def test_invalid_folder_name_raises(tmp_path: Path) -> None:
    write_manifest(tmp_path / "has space", [{"record_id": "a", "text": "x"}])
    with pytest.raises(ValueError):
        parse_manifest(tmp_path / "has space")


def test_missing_manifest_raises(tmp_path: Path) -> None:
    (tmp_path / "b1").mkdir()
    with pytest.raises(FileNotFoundError):
        parse_manifest(tmp_path / "b1")


def test_accounting_invariant_on_mixed_manifest(tmp_path: Path) -> None:
    lines: list[bytes | str | dict] = [
        {"record_id": "ok1", "text": "fine", "timestamp": "2024-01-01T00:00:00Z"},  # 1 record
        b"",  # 2 blank
        b'{"record_id": "x", "text": ',  # 3 malformed_json
        b"\xff\xfe",  # 4 invalid_encoding
        {"text": "no id"},  # 5 missing_record_id
        {"record_id": 7, "text": "x"},  # 6 invalid_record_id
        {"record_id": "ok1", "text": "dup"},  # 7 duplicate_record_id
        {"record_id": "nomod"},  # 8 no_modality
        {"record_id": "op", "op": "merge", "text": "x"},  # 9 invalid_op
        {"record_id": "ts", "text": "x", "timestamp": "soon"},  # 10 record + invalid_timestamp
        {"record_id": "lab", "text": "x", "label": 1},  # 11 record + invalid_label
        {"record_id": "fld", "text": "x", "fields": {"a": {}}},  # 12 record + invalid_fields
        '{"record_id": "sur", "text": "\\ud800", "image": "a.png"}',  # 13 record + invalid_text
        {"record_id": "emp", "text": " "},  # 14 empty_text only
        {"record_id": "pth", "image": "/abs.png"},  # 15 path_outside_batch only
        {"record_id": "pth2", "audio": ""},  # 16 invalid_path only
        {"record_id": "del", "op": "delete"},  # 17 record
        b"   ",  # 18 blank
        b"[]",  # 19 malformed_json
        {"record_id": "ok2", "fields": {"n": 1}},  # 20 record
    ]
    pm = parse_lines(tmp_path, lines)
    nonblank = set(range(1, 21)) - {2, 18}
    assert_accounted(pm, nonblank)
    got = {(r.line_number, r.reason) for r in pm.rejections}
    assert got == {
        (3, "malformed_json"),
        (4, "invalid_encoding"),
        (5, "missing_record_id"),
        (6, "invalid_record_id"),
        (7, "duplicate_record_id"),
        (8, "no_modality"),
        (9, "invalid_op"),
        (10, "invalid_timestamp"),
        (11, "invalid_label"),
        (12, "invalid_fields"),
        (13, "invalid_text"),
        (14, "empty_text"),
        (15, "path_outside_batch"),
        (16, "invalid_path"),
        (19, "malformed_json"),
    }
    assert [r.line_number for r in pm.records] == [1, 10, 11, 12, 13, 17, 20]
    # record ids among records are unique
    ids = [r.record_id for r in pm.records]
    assert len(ids) == len(set(ids))
    # rejections are produced in line order
    assert [r.line_number for r in pm.rejections] == sorted(r.line_number for r in pm.rejections)


def test_dataclasses_are_frozen(tmp_path: Path) -> None:
    pm = parse_lines(tmp_path, [{"record_id": "a", "text": "x"}, b"{"])
    with pytest.raises(AttributeError):
        pm.records[0].text = "y"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        pm.rejections[0].reason = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# check_record_media / validate_batch (real files)
# --------------------------------------------------------------------------------------------------


def test_validate_batch_media_checks(tmp_path: Path) -> None:
    bdir = tmp_path / "b1"
    (bdir / "images").mkdir(parents=True)
    good = png_bytes((10, 7))
    (bdir / "images" / "good.png").write_bytes(good)
    (bdir / "images" / "trunc.png").write_bytes(good[: len(good) // 2])
    (bdir / "images" / "text.png").write_bytes(b"hello, I am not an image\n")
    (bdir / "images" / "empty.png").write_bytes(b"")
    (bdir / "images" / "dir.png").mkdir()
    outside = tmp_path / "outside.png"
    outside.write_bytes(good)
    os.symlink(outside, bdir / "images" / "link.png")
    write_manifest(
        bdir,
        [
            {"record_id": "g", "image": "images/good.png", "text": "nice"},  # 1
            {"record_id": "t", "image": "images/trunc.png"},  # 2 -> dropped
            {"record_id": "u", "image": "images/text.png", "text": "keeps text"},  # 3 -> kept (text)
            {"record_id": "m", "image": "images/missing.png"},  # 4
            {"record_id": "e", "image": "images/empty.png"},  # 5
            {"record_id": "d", "image": "images/dir.png"},  # 6
            {"record_id": "l", "image": "images/link.png"},  # 7
            {"record_id": "x", "op": "delete"},  # 8
            {"record_id": "bad", "image": "../outside.png"},  # 9 parse-level
        ],
    )
    vb = validate_batch(bdir)
    assert vb.batch_id == "b1" and vb.n_lines == 9
    assert vb.manifest_sha256 == file_sha256(bdir / MANIFEST_NAME)
    assert [(r.record_id, r.modalities) for r in vb.records] == [
        ("g", ("text", "image")),
        ("u", ("text",)),
        ("x", ()),
    ]
    assert set(vb.images) == {"g"}
    info = vb.images["g"]
    assert (info.width, info.height, info.format) == (10, 7, "PNG")
    assert info.sha256 == hashlib.sha256(good).hexdigest()
    assert [(r.line_number, r.modality, r.reason) for r in vb.rejections] == [
        (2, "image", "truncated_image"),
        (3, "image", "unreadable_image"),
        (4, "image", "missing_file"),
        (5, "image", "empty_file"),
        (6, "image", "not_a_file"),
        (7, "image", "path_outside_batch"),
        (9, "image", "path_outside_batch"),
    ]
    assert "images/text.png" in vb.rejections[1].detail
    assert_accounted(vb, set(range(1, 10)))


def test_validate_batch_limits_passthrough(tmp_path: Path) -> None:
    bdir = tmp_path / "b1"
    bdir.mkdir()
    (bdir / "a.png").write_bytes(png_bytes((20, 20)))
    write_manifest(bdir, [{"record_id": "a", "image": "a.png", "text": "t"}])
    assert validate_batch(bdir).rejections == []
    vb = validate_batch(bdir, max_image_pixels=399)
    assert [r.reason for r in vb.rejections] == ["decompression_bomb"]
    assert vb.records[0].modalities == ("text",) and vb.images == {}
    vb = validate_batch(bdir, max_image_bytes=10)
    assert [r.reason for r in vb.rejections] == ["file_too_large"]


def test_validate_batch_rejections_sorted_by_line(tmp_path: Path) -> None:
    bdir = tmp_path / "b1"
    bdir.mkdir()
    write_manifest(
        bdir,
        [
            {"record_id": "a", "image": "missing.png", "text": "t"},  # media rejection (line 1)
            b"{",  # parse rejection (line 2)
        ],
    )
    vb = validate_batch(bdir)
    assert [(r.line_number, r.reason) for r in vb.rejections] == [(1, "missing_file"), (2, "malformed_json")]


def test_check_record_media_audio(tmp_path: Path) -> None:
    import wave

    bdir = tmp_path / "b1"
    bdir.mkdir()
    with wave.open(str(bdir / "a.wav"), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(8000)
        wf.writeframes(b"\x00\x00" * 4000)
    (bdir / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    rec = ManifestRecord("b1", 1, "r", "upsert", None, None, None, "a.wav", None, None)
    chk = check_record_media(bdir, rec)
    assert chk.rejections == [] and chk.record == rec
    assert (
        chk.audio is not None and chk.audio.sample_rate == 8000 and chk.audio.duration_s == pytest.approx(0.5)
    )
    rec2 = ManifestRecord("b1", 2, "r2", "upsert", None, "txt", None, "bad.wav", None, None)
    chk2 = check_record_media(bdir, rec2)
    assert chk2.record is not None and chk2.record.audio is None and chk2.record.text == "txt"
    assert [(r.modality, r.reason) for r in chk2.rejections] == [("audio", "unreadable_audio")]


def test_check_record_media_delete_passthrough(tmp_path: Path) -> None:
    rec = ManifestRecord("b1", 1, "r", "delete", None, None, None, None, None, None)
    chk = check_record_media(tmp_path, rec)
    assert chk.record is rec and chk.rejections == [] and chk.image is None


def test_check_record_media_drops_record_without_modalities(tmp_path: Path) -> None:
    rec = ManifestRecord("b1", 3, "r", "upsert", None, None, "nope.png", None, None, "mug")
    chk = check_record_media(tmp_path, rec)
    assert chk.record is None and chk.image is None
    assert [(r.line_number, r.record_id, r.modality, r.reason) for r in chk.rejections] == [
        (3, "r", "image", "missing_file")
    ]


# --------------------------------------------------------------------------------------------------
# list_complete_batches
# --------------------------------------------------------------------------------------------------


def test_list_complete_batches(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    t = 1_700_000_000

    def batch(name: str, mtime: float | None, content: bytes = b'{"record_id": "a", "text": "x"}\n') -> None:
        d = landing / name
        d.mkdir()
        if mtime is not None:
            (d / MANIFEST_NAME).write_bytes(content)
            os.utime(d / MANIFEST_NAME, (mtime, mtime))

    batch("late", t + 100)
    batch("early", t + 1)
    batch("tie-b", t + 50)
    batch("tie-a", t + 50, b"different\n")
    batch("incomplete", None)  # no manifest
    (landing / "incomplete" / "images").mkdir()
    batch(".hidden", t)  # dot-dir
    batch("bad name", t)  # invalid name
    batch("é", t)  # invalid name (non-ASCII)
    (landing / "dirmanifest").mkdir()
    (landing / "dirmanifest" / MANIFEST_NAME).mkdir()  # manifest is a directory
    (landing / "plainfile").write_bytes(b"not a dir")
    (landing / "plainfile.jsonl").write_bytes(b"not a dir")

    got = list_complete_batches(landing)
    assert [b.batch_id for b in got] == ["early", "tie-a", "tie-b", "late"]
    for b in got:
        assert isinstance(b, BatchInfo)
        assert b.path == landing / b.batch_id
        assert b.manifest_path == landing / b.batch_id / MANIFEST_NAME
        assert b.manifest_sha256 == hashlib.sha256(b.manifest_path.read_bytes()).hexdigest()
    assert [b.manifest_mtime for b in got] == [t + 1, t + 50, t + 50, t + 100]


def test_list_complete_batches_mtime_beats_name(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    for name, mt in [("a", 300), ("b", 100), ("c", 200)]:
        write_manifest(landing / name, [{"record_id": "r", "text": "t"}])
        os.utime(landing / name / MANIFEST_NAME, (mt, mt))
    assert [b.batch_id for b in list_complete_batches(landing)] == ["b", "c", "a"]
    os.utime(landing / "a" / MANIFEST_NAME, (50, 50))
    assert [b.batch_id for b in list_complete_batches(landing)] == ["a", "b", "c"]


def test_list_complete_batches_symlinks(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    real = tmp_path / "elsewhere"
    write_manifest(real, [{"record_id": "r", "text": "t"}])
    landing.mkdir()
    os.symlink(real, landing / "linked")  # a symlinked batch folder counts as a directory
    write_manifest(landing / "m", [])
    (landing / "m" / MANIFEST_NAME).unlink()
    os.symlink(real / MANIFEST_NAME, landing / "m" / MANIFEST_NAME)  # symlinked manifest -> regular file
    (landing / "dangling").mkdir()
    os.symlink(tmp_path / "nope", landing / "dangling" / MANIFEST_NAME)
    assert sorted(b.batch_id for b in list_complete_batches(landing)) == ["linked", "m"]


def test_list_complete_batches_missing_or_file(tmp_path: Path) -> None:
    assert list_complete_batches(tmp_path / "does-not-exist") == []
    f = tmp_path / "file"
    f.write_bytes(b"x")
    assert list_complete_batches(f) == []
    (tmp_path / "empty").mkdir()
    assert list_complete_batches(tmp_path / "empty") == []


def test_module_exports() -> None:
    for name in mf.__all__:
        assert hasattr(mf, name), name
    assert mf.MODALITIES == ("text", "image", "audio", "fields")
    assert mf.OPS == ("upsert", "delete")


@pytest.mark.parametrize(
    ("rid", "detail_part"),
    [
        ("\u200b", "no visible character"),  # zero-width space
        ("\u200b\u200c\u200d\u2060\ufeff", "no visible character"),  # zero-width run, word joiner, BOM
        ("\u00ad\u034f", "no visible character"),  # soft hyphen + combining grapheme joiner
        ("\u3164\u3164", "no visible character"),  # Hangul filler renders blank
        ("\u2800", "no visible character"),  # braille blank
        ("\ue000", "no visible character"),  # private use
        ("invoice\u202egpj.exe", "bidirectional control characters (U+202E)"),  # right-to-left override
        ("a\u2066b\u2069", "U+2066, U+2069"),  # isolates
        ("a\u200fb", "U+200F"), ("a\u200eb", "U+200E"), ("a\u061cb", "U+061C"), ("\u202a\u202b\u202cx", "U+202A"),
    ],
)
def test_hostile_record_ids_are_rejected(tmp_path: Path, rid: str, detail_part: str) -> None:
    pm = parse_lines(tmp_path, [json.dumps({"record_id": rid, "text": "hello"})])
    assert pm.records == []
    r = only_rejection(pm)
    assert (r.modality, r.reason) == ("record", "invalid_record_id")
    assert detail_part in r.detail


@pytest.mark.parametrize("rid", ["a\u200bb", "caf\u00e9", "e\u0301", "\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627",
                                 "\U0001f600", "\u4e2d\u6587", "x-1.2_3"])
def test_visible_ids_in_any_script_are_accepted(tmp_path: Path, rid: str) -> None:
    pm = parse_lines(tmp_path, [json.dumps({"record_id": rid, "text": "hello"})])
    assert [r.record_id for r in pm.records] == [rid] and not pm.rejections


@pytest.mark.parametrize(("ent", "detail_part"), [("\u200b\u200d", "no visible character"),
                                                   ("dev\u202e1", "bidirectional")])
def test_hostile_entity_ids_are_rejected_and_the_record_kept(tmp_path: Path, ent: str, detail_part: str) -> None:
    pm = parse_lines(tmp_path, [json.dumps({"record_id": "r1", "text": "hello", "entity_id": ent})])
    assert [r.record_id for r in pm.records] == ["r1"] and pm.records[0].entity_id is None
    r = only_rejection(pm)
    assert (r.modality, r.reason) == ("entity_id", "invalid_entity_id") and detail_part in r.detail
