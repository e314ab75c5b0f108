"""Tests for typed fields and the fitted tabular encoder in mm_platform.lib.features.tabular."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mm_platform.lib.features.tabular import (
    CURRENT_NAME,
    RESERVED_COLUMNS,
    TABULAR_DIM,
    FieldSpec,
    TabularEncoderState,
    TabularParams,
    TypedRows,
    encode_raw,
    encode_tabular,
    field_column_names,
    fit_or_load,
    fit_tabular,
    format_number,
    load_state,
    parse_number,
    save_state,
    type_rows,
    typed_frame,
)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


ROWS = [
    {"price": 10.0, "material": "steel", "note": None},
    {"price": 20, "material": "wood", "note": None},
    {"price": "30", "material": "steel", "note": None},
    {"price": None, "material": None},
    None,
]


# -- values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(" 3.5", 3.5), ("1e3", 1000.0), ("-2", -2.0), (".5", 0.5), (7, 7.0), (2.5, 2.5),
     ("nan", None), ("inf", None), ("1_000", None), ("0x10", None), ("1e999", None), ("", None),
     ("abc", None), (True, None), (None, None), (float("nan"), None)],
)
def test_parse_number(value: object, expected: float | None) -> None:
    assert parse_number(value) == expected


def test_format_number() -> None:
    assert format_number(3) == "3"
    assert format_number(3.0) == "3"
    assert format_number(0.1) == "0.1"
    assert format_number(-2.5e-7) == "-2.5e-07"


# -- fitting / inference -----------------------------------------------------------------------------------


def test_fit_infers_kinds_and_stats() -> None:
    st = fit_tabular(ROWS)
    assert [f.name for f in st.fields] == ["material", "note", "price"]
    price = st.field("price")
    assert price is not None and price.kind == "numeric" and price.n_seen == 3
    assert price.mean == pytest.approx(20.0) and price.std == pytest.approx(np.std([10, 20, 30]))
    material = st.field("material")
    assert material is not None and material.kind == "categorical"
    assert material.categories == ("steel", "wood") and material.n_seen == 3
    note = st.field("note")
    assert note is not None and note.kind == "empty" and note.n_seen == 0
    assert st.fitted_rows == 5
    assert st.feature_names == [
        "material=steel", "material=wood", "material:other", "material:missing", "price", "price:missing",
    ]
    assert st.raw_dim == 6 and st.dim == TABULAR_DIM


def test_numeric_share_threshold_and_constant_std() -> None:
    rows = [{"x": i} for i in range(9)] + [{"x": "n/a"}]
    assert fit_tabular(rows).field("x").kind == "numeric"  # type: ignore[union-attr]
    assert fit_tabular(rows, numeric_share=0.95).field("x").kind == "categorical"  # type: ignore[union-attr]
    rows30 = [{"x": i} for i in range(27)] + [{"x": "a"}, {"x": "b"}, {"x": "c"}]  # exactly 0.9
    assert fit_tabular(rows30).field("x").kind == "numeric"  # type: ignore[union-attr]
    const = fit_tabular([{"c": 5}, {"c": 5}]).field("c")
    assert const is not None and const.std == 1.0 and const.mean == 5.0


def test_categories_capped_most_frequent_first_ties_by_name() -> None:
    rows = [{"c": v} for v in ["b", "a", "c", "c", "d", "d", "e"]]
    spec = fit_tabular(rows, max_categories=3).field("c")
    assert spec is not None and spec.categories == ("c", "d", "a")
    mixed = fit_tabular([{"c": 3}, {"c": 3.0}, {"c": "x"}, {"c": "y"}]).field("c")
    assert mixed is not None and mixed.kind == "categorical" and mixed.categories == ("3", "x", "y")


def test_identifier_detection() -> None:
    ids = fit_tabular([{"sku": f"SKU-{i:05d}"} for i in range(200)]).field("sku")
    assert ids is not None and ids.kind == "identifier" and ids.n_seen == 200
    few = fit_tabular([{"c": f"v{i}"} for i in range(40)]).field("c")  # <= 50 distinct: categorical
    assert few is not None and few.kind == "categorical"
    repeated = fit_tabular([{"c": f"v{i % 60}"} for i in range(200)]).field("c")  # not nearly all distinct
    assert repeated is not None and repeated.kind == "categorical"
    st = fit_tabular([{"sku": f"S{i}", "p": float(i)} for i in range(100)])
    assert st.feature_names == ["p", "p:missing"]
    tr = type_rows(st, [{"sku": "S1", "p": 1}, {"sku": 42, "p": 2}])
    assert tr.values[1]["sku"] == "42"


def test_params_validation() -> None:
    with pytest.raises(ValueError, match="max_categories"):
        fit_tabular(ROWS, max_categories=0)
    with pytest.raises(ValueError, match="numeric_share"):
        fit_tabular(ROWS, numeric_share=1.5)
    with pytest.raises(ValueError, match="clip"):
        fit_tabular(ROWS, clip=float("inf"))
    with pytest.raises(ValueError, match="mapping"):
        fit_tabular([["not", "a", "mapping"]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="std must be > 0"):
        FieldSpec("x", "numeric", mean=0.0, std=0.0)
    with pytest.raises(ValueError, match="kind"):
        FieldSpec("x", "boolean")


# -- typing ----------------------------------------------------------------------------------------------


def test_strings_in_numeric_field_become_problems_row_kept() -> None:
    st = fit_tabular([{"price": i, "material": "steel"} for i in range(10)])
    tr = type_rows(st, [{"price": "cheap", "material": "wood"}, {"price": " 4.5 ", "material": "steel"}])
    assert len(tr.problems) == 1
    p = tr.problems[0]
    assert (p.row, p.field, p.reason) == (0, "price", "invalid_field_value") and "cheap" in p.detail
    assert tr.values[0] == {"price": None, "material": "wood"}
    assert tr.values[1] == {"price": 4.5, "material": "steel"}  # numeric string coerced
    assert tr.n_missing(0, st) == 1
    enc = encode_tabular(st, tr)
    same_as_missing = encode_tabular(st, [{"price": None, "material": "wood"}])
    np.testing.assert_allclose(enc[0], same_as_missing[0], atol=1e-7)


def test_unknown_fields_counted_kept_not_encoded() -> None:
    st = fit_tabular([{"a": 1.0}, {"a": 2.0}])
    tr = type_rows(st, [{"a": 1.0, "z": "x"}, {"a": 2.0, "z": 3, "y": 1}, {"a": None}])
    assert tr.unknown_fields == {"y": 1, "z": 2}
    assert tr.values[0] == {"a": 1.0, "z": "x"} and tr.values[1]["z"] == 3.0
    assert tr.values[2] == {"a": None}
    base = encode_tabular(st, [{"a": 1.0}])
    np.testing.assert_allclose(encode_tabular(st, tr)[0], base[0])


def test_all_missing_column_and_all_missing_row() -> None:
    st = fit_tabular([{"a": None, "b": 1.0, "c": "x"}, {"a": None, "b": 3.0, "c": "y"}])
    assert st.field("a").kind == "empty"  # type: ignore[union-attr]
    tr = type_rows(st, [{"a": None, "b": None, "c": None}, None, {"a": "late value", "b": 2.0, "c": "x"}])
    assert tr.problems == [] and tr.values[2]["a"] == "late value"
    enc = encode_tabular(st, tr)
    assert enc.shape == (3, TABULAR_DIM) and enc.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(enc, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(enc[0], enc[1])  # None row == all-missing row
    raw = encode_raw(st, tr)[0]
    names = st.feature_names
    assert {names[i] for i in np.flatnonzero(raw)} == {"b:missing", "c:missing"}


def test_new_category_in_later_batch_uses_other() -> None:
    st = fit_tabular([{"m": "steel", "p": 1.0}, {"m": "wood", "p": 2.0}, {"m": "steel", "p": 3.0}])
    before = encode_tabular(st, type_rows(st, [{"m": "steel", "p": 2.0}, {"m": "wood", "p": 1.0}]))
    version = st.version
    later = type_rows(st, [{"m": "glass", "p": 2.0}, {"m": "steel", "p": 2.0}, {"m": "wood", "p": 1.0}])
    assert later.problems == []
    enc = encode_tabular(st, later)
    assert st.version == version
    raw = encode_raw(st, later)
    assert raw[0, st.feature_names.index("m:other")] == 1.0
    np.testing.assert_array_equal(enc[1:], before)
    assert np.linalg.norm(enc[0]) == pytest.approx(1.0, abs=1e-6)


def test_numeric_clip_and_zero_row_fallback() -> None:
    st = fit_tabular([{"x": float(v)} for v in (-1, 1, -1, 1)], clip=2.0)  # mean 0, std 1
    raw = encode_raw(st, [{"x": 100.0}, {"x": -100.0}, {"x": 0.5}])
    np.testing.assert_allclose(raw[:, 0], [2.0, -2.0, 0.5])
    enc = encode_tabular(st, [{"x": 0.0}])  # exactly at the mean: raw row is all zeros
    np.testing.assert_allclose(np.linalg.norm(enc, axis=1), 1.0, atol=1e-6)


def test_empty_state_handling() -> None:
    for rows in ([], [None, {}], [{"a": None}], [{"id": f"id-{i}"} for i in range(100)]):
        st = fit_tabular(rows)
        assert st.raw_dim == 0 and st.feature_names == []
        with pytest.raises(ValueError, match="no usable field"):
            encode_tabular(st, [{}])
    st = fit_tabular([{"a": 1.0}, {"a": 2.0}])
    assert encode_tabular(st, []).shape == (0, TABULAR_DIM)


# -- padding / projection ------------------------------------------------------------------------------------


def test_padding_preserves_cosines_exactly() -> None:
    rng = np.random.default_rng(0)
    rows = [{"a": float(rng.normal()), "b": float(rng.normal() * 10), "c": str(rng.integers(5))} for _ in range(30)]
    st = fit_tabular(rows)
    assert st.raw_dim <= TABULAR_DIM and st.projection is None
    raw = encode_raw(st, rows)
    enc = encode_tabular(st, rows).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(enc, axis=1), 1.0, atol=1e-6)
    assert np.all(enc[:, st.raw_dim:] == 0)
    for i, j in [(0, 1), (2, 7), (5, 29)]:
        assert enc[i] @ enc[j] == pytest.approx(_cos(raw[i], raw[j]), abs=1e-6)


def test_projection_above_64_features() -> None:
    rows = [{"c": f"cat{i % 80:02d}", "x": float(i % 7)} for i in range(600)]
    st = fit_tabular(rows, max_categories=100)
    assert st.raw_dim == 80 + 2 + 2 > TABULAR_DIM
    proj = st.projection
    assert proj is not None and proj.shape == (st.raw_dim, TABULAR_DIM)
    enc = encode_tabular(st, rows)
    assert enc.shape == (600, TABULAR_DIM)
    np.testing.assert_allclose(np.linalg.norm(enc, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc[0], enc[80 * 7])  # identical inputs -> identical vectors
    # deterministic from the version (a fresh state object gives the same projection)
    again = TabularEncoderState.from_json(st.to_json())
    np.testing.assert_array_equal(encode_tabular(again, rows[:5]), enc[:5])
    # approximate (JL) cosine preservation
    raw = encode_raw(st, rows[:40])
    errs = [abs(float(enc[i] @ enc[j]) - _cos(raw[i], raw[j])) for i in range(40) for j in range(i + 1, 40)]
    assert np.mean(errs) < 0.2 and max(errs) < 0.7


# -- state JSON / versioning ------------------------------------------------------------------------------------


def test_state_json_round_trip_and_version_determinism() -> None:
    st = fit_tabular(ROWS + [{"price": 0.1 + 0.2}])
    text = st.to_json()
    back = TabularEncoderState.from_json(text)
    assert back == st and back.version == st.version and back.to_json() == text
    assert back.feature_names == st.feature_names
    assert fit_tabular(list(ROWS) + [{"price": 0.1 + 0.2}]).version == st.version
    assert fit_tabular(ROWS).version != st.version  # different data
    assert fit_tabular(ROWS, clip=4.0).version != fit_tabular(ROWS).version  # different params
    assert len(st.version) == 12 and int(st.version, 16) >= 0
    assert TabularParams(clip=5) == TabularParams(clip=5.0)


def test_state_from_json_rejects_tampered_and_malformed() -> None:
    st = fit_tabular(ROWS)
    obj = json.loads(st.to_json())
    tampered = json.loads(st.to_json())
    tampered["fields"][2]["mean"] = 21.0
    with pytest.raises(ValueError, match="version mismatch"):
        TabularEncoderState.from_json(json.dumps(tampered))
    bad_cases = [
        "not json",
        "[]",
        json.dumps({**obj, "extra": 1}),
        json.dumps({k: v for k, v in obj.items() if k != "params"}),
        json.dumps({**obj, "format": "something.else"}),
        json.dumps({**obj, "format_version": 99}),
        json.dumps({**obj, "fields": "nope"}),
        json.dumps({**obj, "fields": [{"name": "x"}]}),
        json.dumps({**obj, "fields": list(reversed(obj["fields"]))}),
        json.dumps({**obj, "params": {**obj["params"], "clip": -1}}),
        json.dumps({**obj, "fitted_rows": "5"}),
    ]
    for text in bad_cases:
        with pytest.raises(ValueError):
            TabularEncoderState.from_json(text)


# -- persistence ------------------------------------------------------------------------------------------------


def test_save_load_current_pointer(tmp_path: Path) -> None:
    d = tmp_path / "enc"
    assert load_state(d) is None
    a = fit_tabular(ROWS)
    b = fit_tabular([{"z": 1.0}, {"z": 2.0}])
    pa = save_state(a, d)
    assert pa.name == f"tabular_encoder-{a.version}.json" and pa.exists()
    assert load_state(d) == a
    save_state(b, d)
    assert load_state(d) == b
    assert load_state(d, a.version) == a
    assert load_state(d, "0" * 12) is None
    assert json.loads((d / CURRENT_NAME).read_text())["version"] == b.version
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError):
        load_state(d, "../../etc")
    pa.write_text(pa.read_text().replace('"fitted_rows": 5', '"fitted_rows": 6'))
    with pytest.raises(ValueError, match="version mismatch"):
        load_state(d, a.version)
    (d / CURRENT_NAME).write_text("{oops")
    with pytest.raises(ValueError, match="current.json"):
        load_state(d)


def test_fit_or_load_agrees(tmp_path: Path) -> None:
    d = tmp_path / "enc"
    s1, fitted1 = fit_or_load(d, ROWS, max_categories=8)
    s2, fitted2 = fit_or_load(d, [{"other": "x"}], max_categories=8)
    assert fitted1 and not fitted2 and s1 == s2
    assert s1.params.max_categories == 8
    # an unusable first batch is not frozen into the store
    e = tmp_path / "enc2"
    s3, fitted3 = fit_or_load(e, [{"a": None}])
    assert fitted3 and s3.raw_dim == 0 and load_state(e) is None
    s4, fitted4 = fit_or_load(e, ROWS)
    assert fitted4 and load_state(e) == s4


def _race_worker(args: tuple[str, int]) -> tuple[str, bool]:
    directory, k = args
    rows = [{"x": float(i * (k + 1)), "k": f"worker{k}"} for i in range(50)]
    state, fitted = fit_or_load(directory, rows)
    return state.version, fitted


def test_fit_or_load_multiprocess_race(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_race_worker, [(str(tmp_path), 0), (str(tmp_path), 1)])
    versions = {v for v, _ in results}
    assert len(versions) == 1
    assert sorted(f for _, f in results) == [False, True]
    assert load_state(tmp_path).version == versions.pop()  # type: ignore[union-attr]


# -- typed frame --------------------------------------------------------------------------------------------------


def test_typed_frame_dtypes_and_reserved_names() -> None:
    rows = [
        {"price": 1.5, "record_id": "dup", "batch_id": 7, "material": "steel", "blank": None},
        {"price": "2", "record_id": "dup2", "batch_id": 8, "material": 3, "blank": None},
    ]
    st = fit_tabular(rows)
    later = [
        {"price": "bad", "record_id": "x", "batch_id": 9, "material": "wood", "extra_num": 1, "extra_mix": 1},
        {"price": 3, "material": None, "extra_num": 2.5, "extra_mix": "a", "field_record_id": "f"},
    ]
    tr = type_rows(st, later)
    df = typed_frame(["r1", "r2"], tr, st)
    assert df.columns == [
        "record_id", "field_batch_id", "blank", "material", "price", "field_field_record_id",
        "extra_mix", "extra_num", "field_record_id",
    ]
    schema = df.schema
    assert df["record_id"].to_list() == ["r1", "r2"]
    assert schema["price"] == pl.Float64 and df["price"].to_list() == [None, 3.0]
    assert schema["material"] == pl.String and df["material"].to_list() == ["wood", None]
    assert schema["blank"] == pl.String and df["blank"].null_count() == 2
    assert schema["field_batch_id"] == pl.Float64  # batch_id field was numeric
    assert schema["extra_num"] == pl.Float64 and df["extra_num"].to_list() == [1.0, 2.5]
    assert schema["extra_mix"] == pl.String and df["extra_mix"].to_list() == ["1", "a"]
    names = field_column_names(["record_id", "field_record_id", "x"])
    assert names["field_record_id"] == "field_record_id"
    assert names["record_id"] == "field_field_record_id" and names["x"] == "x"
    assert len(set(df.columns)) == len(df.columns)
    assert not set(df.columns[1:]) & set(RESERVED_COLUMNS)
    assert typed_frame(["r1", "r2"], tr, st).equals(df)  # deterministic
    with pytest.raises(ValueError, match="record ids"):
        typed_frame(["r1"], tr, st)
    assert typed_frame([], TypedRows(values=[]), st).columns[0] == "record_id"
