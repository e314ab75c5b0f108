"""Tests for the dbt-like SQL model runner and the real models under dbt_like_sql/."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from mm_platform.lib.storage.lake import (
    ALL_TABLES,
    DERIVED_VIEWS,
    GLOBAL_TABLES,
    RECORD_TABLES,
    VIEW_SOURCES,
    Lake,
    atomic_write_parquet,
    register_views,
    view_statements,
)
from mm_platform.lib.storage.sql_models import (
    WAREHOUSE_TABLES,
    SqlModel,
    _tokenizer_table_names,
    discover_models,
    parse_dependencies,
    run_all,
    run_model,
    topo_order,
)

SQL_ROOT = Path(__file__).resolve().parents[3] / "dbt_like_sql"


# -- dependency parsing ----------------------------------------------------------------------------------

DEP_CASES: list[tuple[str, set[str]]] = [
    ("select * from a", {"a"}),
    ("select * from main.a join s.b on a.id = b.id", {"a", "b"}),
    ("select * from cat.sch.tbl", {"tbl"}),
    # CTE chain: CTE names are not dependencies
    (
        (
            "with source as (select * from raw_records), renamed as (select record_id from source), "
            "final as (select * from renamed) select * from final"
        ),
        {"raw_records"},
    ),
    # a CTE named like a table shadows it downstream, but a plain CTE naming itself reads the table
    ("with x as (select * from x) select * from x", {"x"}),
    ("with raw_records as (select * from stg_raw_records) select * from raw_records", {"stg_raw_records"}),
    # qualified name is never a CTE
    ("with a as (select 1) select * from a, main.a", {"a"}),
    # CTE declared later is not visible to an earlier one
    ("with b as (select * from a), a as (select 1) select * from b", {"a"}),
    # CTE scoped to a subquery does not leak out
    (
        "select * from t where exists (with t2 as (select 1) select * from t2) and k in (select k from t2)",
        {"t", "t2"},
    ),
    ("with recursive r(n) as (select 1 union all select n + 1 from r where n < 3) select * from r", set()),
    # joins, USING on CTEs (get_table_names fails here), subqueries, set operations, lateral
    (
        "with a as (select * from x) select * from a join a as a2 using (id) left join y using (id)",
        {"x", "y"},
    ),
    (
        "select * from (select * from inner_t) sub where v > (select max(v) from scalar_t)",
        {"inner_t", "scalar_t"},
    ),
    ("select id from u1 union all select id from u2 except select id from u3", {"u1", "u2", "u3"}),
    ("select * from t1 cross join lateral (select * from t2 where t2.k = t1.k) l", {"t1", "t2"}),
    # comments and strings that contain table-like text
    ("-- select * from commented\nselect 'from fake_str join x2' as s /* from c2 */ from real_t", {"real_t"}),
    ("select $$ from dollar $$ as s from real_t", {"real_t"}),
    # quoted identifiers (DuckDB matches them case-insensitively)
    ('select * from "Weird Name" w join "S"."Other" o on true', {"weird name", "other"}),
    ("SELECT * FROM Stg_Upper", {"stg_upper"}),
    # table functions are not dependencies (get_table_names would try to open the file)
    ("select * from read_parquet('missing/*.parquet') p join dim using (k)", {"dim"}),
    ("select * from range(10)", set()),
    # trailing semicolon
    ("select * from a;", {"a"}),
]


@pytest.mark.parametrize(("sql", "expected"), DEP_CASES)
def test_parse_dependencies(sql: str, expected: set[str]) -> None:
    assert parse_dependencies(sql) == frozenset(expected)


def test_parse_dependencies_syntax_error() -> None:
    with pytest.raises(ValueError, match="does not parse"):
        parse_dependencies("select from where")


def test_parse_dependencies_non_select_falls_back() -> None:
    assert parse_dependencies("create table z as select * from q join w using (id)") == {"q", "w"}


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("with c as (select * from a) select * from c join b on true", {"a", "b"}),
        ("-- from x\nselect 'join y' from \"Q\".z, read_parquet('f')", {"z"}),
    ],
)
def test_tokenizer_fallback(sql: str, expected: set[str]) -> None:
    assert _tokenizer_table_names(sql) == expected


# -- discovery -----------------------------------------------------------------------------------------


def _write(root: Path, rel: str, sql: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sql)


def test_discover_models_small_project(tmp_path: Path) -> None:
    _write(tmp_path, "staging/stg_a.sql", "-- Staging a.\n--   second line\n\nselect * from src_a")
    _write(tmp_path, "staging/sub/stg_b.sql", "select * from src_b")
    _write(
        tmp_path,
        "intermediate/int_ab.sql",
        "with a as (select * from stg_a) select * from a join stg_b on true",
    )
    _write(tmp_path, "marts/m.sql", "select * from int_ab")
    _write(tmp_path, "other/ignored.sql", "select 1")
    _write(tmp_path, "staging/notes.txt", "not sql")
    models = discover_models(tmp_path)
    assert set(models) == {"stg_a", "stg_b", "int_ab", "m"}
    assert models["stg_a"].description == "Staging a.\nsecond line"
    assert models["stg_b"].description == "" and models["stg_b"].layer == "staging"
    assert models["int_ab"].deps == {"stg_a", "stg_b"} and models["int_ab"].layer == "intermediate"
    assert models["int_ab"].model_deps(models) == {"stg_a", "stg_b"}
    assert models["stg_a"].source_deps(models) == {"src_a"}
    order = topo_order(models)
    assert order.index("stg_a") < order.index("int_ab") < order.index("m")
    assert order.index("stg_b") < order.index("int_ab")


def test_discover_models_duplicate_name(tmp_path: Path) -> None:
    _write(tmp_path, "staging/dup.sql", "select 1")
    _write(tmp_path, "marts/dup.sql", "select 2")
    with pytest.raises(ValueError, match="duplicate"):
        discover_models(tmp_path)


def test_discover_models_cycle(tmp_path: Path) -> None:
    _write(tmp_path, "intermediate/int_a.sql", "select * from int_b")
    _write(tmp_path, "intermediate/int_b.sql", "with x as (select * from int_a) select * from x")
    _write(tmp_path, "staging/stg_ok.sql", "select * from src")
    with pytest.raises(ValueError, match="cycle"):
        discover_models(tmp_path)


def test_discover_models_self_reference_is_cycle(tmp_path: Path) -> None:
    _write(tmp_path, "marts/m.sql", "select * from m")
    with pytest.raises(ValueError, match="cycle"):
        discover_models(tmp_path)


def test_discover_models_bad_sql(tmp_path: Path) -> None:
    _write(tmp_path, "marts/m.sql", "select from where")
    with pytest.raises(ValueError, match="m.sql"):
        discover_models(tmp_path)


# -- run_model -----------------------------------------------------------------------------------------


def _model(tmp_path: Path, name: str, sql: str) -> SqlModel:
    return SqlModel(name, tmp_path / f"{name}.sql", "marts", sql, parse_dependencies(sql), "")


def test_run_model_atomic_write(tmp_path: Path) -> None:
    con = duckdb.connect()
    con.execute("create table src as select range as i from range(5)")
    out = tmp_path / "out" / "m.parquet"
    good = _model(tmp_path, "m", "-- a comment\nselect i, i * 2 as j from src where i < 3 -- trailing\n;\n")
    assert run_model(con, good, out) == 3
    assert con.execute(f"select sum(j) from read_parquet('{out}')").fetchone() == (6,)
    bad = _model(tmp_path, "m", "select no_such_column from src")
    with pytest.raises(duckdb.Error):
        run_model(con, bad, out)
    # the previous result is intact and no temp file is left behind
    assert con.execute(f"select count(*) from read_parquet('{out}')").fetchone() == (3,)
    assert [p.name for p in out.parent.iterdir()] == ["m.parquet"]
    empty = _model(tmp_path, "m", "select * from src where false")
    assert run_model(con, empty, out) == 0


def test_run_model_rejects_two_statements(tmp_path: Path) -> None:
    con = duckdb.connect()
    with pytest.raises(ValueError, match="one statement"):
        run_model(con, _model(tmp_path, "m", "select 1; select 2"), tmp_path / "m.parquet")


# -- the real models -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_models() -> dict[str, SqlModel]:
    return discover_models(SQL_ROOT)


def test_warehouse_tables_are_the_lake_views(tmp_path: Path) -> None:
    names = [name for name, _ in view_statements(Lake(tmp_path / "lake"))]  # an empty lake
    assert len(names) == len(set(names))
    assert WAREHOUSE_TABLES == frozenset(names)
    assert set(ALL_TABLES) | set(DERIVED_VIEWS) | {f"{t}_history" for t in RECORD_TABLES} == WAREHOUSE_TABLES
    assert "current_clusters" in WAREHOUSE_TABLES and "recluster_assignments" in WAREHOUSE_TABLES
    # every view maps to the lake tables (Dagster assets) it reads
    for name in WAREHOUSE_TABLES - set(ALL_TABLES):
        assert name in VIEW_SOURCES and set(VIEW_SOURCES[name]) <= set(ALL_TABLES), name


def test_real_models_structure(real_models: dict[str, SqlModel]) -> None:
    expected = {
        "stg_raw_records",
        "stg_raw_text",
        "stg_raw_images",
        "stg_rejected_records",
        "stg_aligned_records",
        "stg_clusters",
        "stg_cluster_summary",
        "int_records_with_clusters",
        "cluster_profiles",
        "batch_quality",
    }
    assert expected <= set(real_models)
    for name, m in real_models.items():
        assert m.description, f"{name} has no leading comment"
        assert "select * from final" in m.sql.lower(), f"{name} does not end in the final CTE"
        for dep in m.deps:
            assert dep in WAREHOUSE_TABLES or dep in real_models, f"{name} reads unknown {dep}"
        if m.layer == "staging":  # staging reads warehouse tables only
            assert m.deps and m.deps <= WAREHOUSE_TABLES and not m.model_deps(real_models), name
        else:  # intermediate and marts read models only, never raw tables
            assert m.deps and all(d in real_models for d in m.deps), name
        assert ".parquet" not in m.sql and "read_parquet" not in m.sql
    order = topo_order(real_models)
    assert len(order) == len(real_models)
    assert real_models["stg_aligned_records"].deps == {"aligned_records_history", "current_records"}
    assert real_models["stg_clusters"].deps == {"current_clusters"}
    assert real_models["int_records_with_clusters"].deps == {"stg_aligned_records", "stg_clusters"}
    assert real_models["cluster_profiles"].deps == {"int_records_with_clusters", "stg_cluster_summary"}
    assert real_models["batch_quality"].deps == {
        "stg_raw_records",
        "stg_aligned_records",
        "stg_rejected_records",
    }


# -- a small lake, written through the real lake code ------------------------------------------------------

T = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
LANDED = {"b1": datetime(2024, 5, 1, 10, 0, tzinfo=UTC), "b2": datetime(2024, 5, 1, 12, 0, tzinfo=UTC)}


def _ts(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, minute, tzinfo=UTC)


def _frame(table: str, rows: list[tuple]) -> pl.DataFrame:
    """Rows given in the table's declared column order (raw_records: without landed_at); declared columns
    after the given ones (added by later versions) are null."""
    schema = ALL_TABLES[table]
    cols = [c for c in schema if not (table == "raw_records" and c == "landed_at")]
    given = cols[: len(rows[0])] if rows else cols
    df = pl.DataFrame(rows, schema={c: schema[c] for c in given}, orient="row")
    return df.with_columns(pl.lit(None, dtype=schema[c]).alias(c) for c in cols if c not in given)


def _write_lake(lake: Lake, table: str, rows: list[tuple]) -> None:
    """Write ``rows`` one partition per batch_id (or the whole global table)."""
    df = _frame(table, rows)
    if table in GLOBAL_TABLES:
        lake.write_global(table, df)
        return
    if table == "raw_records":
        df = df.with_columns(
            landed_at=pl.col("batch_id").replace_strict(LANDED, return_dtype=pl.Datetime("us", "UTC"))
        )
    for (batch_id,), part in df.group_by("batch_id", maintain_order=True):
        lake.write_partition(table, str(batch_id), part)


# b1 lands r1..r4; b2 (landed later) updates r1, deletes r2 and adds r5, r6, r7; b3 only has a rejected line.
# Clustering: an eager assignment of b1 (run1, 10:30), then a full re-cluster of b1 (run2, 11:00), then an
# eager assignment of b2 into run2's clusters (12:30). Current records: r1@b2, r3, r4, r5, r6, r7.
LAKE_ROWS: dict[str, list[tuple]] = {
    "raw_records": [
        ("b1", 1, "r1", "upsert", T, "cat", True, "img/r1.png", None, None, "m1", T),
        ("b1", 2, "r2", "upsert", T, "dog", True, None, None, None, "m1", T),
        ("b1", 3, "r3", "upsert", None, "cat", False, "img/r3.png", "", "", "m1", T),
        ("b1", 4, "r4", "upsert", T, "dog", True, "img/r4.png", "a/r4.wav", '{"x": 1}', "m1", T),
        ("b2", 1, "r5", "upsert", T, "", True, "img/r5.png", "a/r5.wav", None, "m2", T),
        ("b2", 2, "r1", "upsert", T, "cat", True, None, None, None, "m2", T),
        ("b2", 3, "r2", "delete", T, None, True, None, None, "{}", "m2", T),
        ("b2", 4, "r6", "upsert", T, "dog", True, None, None, None, "m2", T),
        ("b2", 5, "r7", "upsert", T, "cat", True, None, None, None, "m2", T),
    ],
    "raw_text": [
        ("r1", "b1", 1, "the old text", "h1", 12),
        ("r2", "b1", 2, "deleted later", "h2", 13),
        ("r4", "b1", 4, "   ", "h4", 3),
        ("r1", "b2", 2, "a  cat on a mat", "h1b", 15),
    ],
    "raw_images": [
        ("r1", "b1", 1, "img/r1.png", "file:///img/r1.png", "s1", 10, 20, "png", "RGB", 1),
        ("r3", "b1", 3, "img/r3.png", "file:///img/r3.png", "s3", 10, 10, "jpeg", "L", 99),
        ("r5", "b2", 1, "img/r5.png", "file:///img/r5.png", "s5", 2000, 1000, "png", "RGB", 1234),
    ],
    "rejected_records": [
        ("b1", 4, "r4", "image", "decode_error", "truncated", "raw_images", T),
        ("b1", 4, "r4", "audio", "missing_file", "a/r4.wav", "raw_audio", T),
        ("b1", 5, None, None, "bad_json", "line 5", "manifest", T),
        ("b3", 1, None, "", "bad_json", "line 1", "manifest", T),
    ],
    "aligned_records": [
        ("r1", "b1", 1, T, "cat", True, True, False, False, "h1", "s1"),
        ("r2", "b1", 2, T, "dog", True, False, False, False, "h2", None),
        ("r3", "b1", 3, None, "cat", False, True, False, False, None, "s3"),
        ("r4", "b1", 4, T, "dog", True, False, False, True, "h4", None),
        ("r5", "b2", 1, T, "", True, True, True, False, "h5", "s5"),
        ("r1", "b2", 2, T, "cat", True, None, False, False, "h1b", None),
        ("r6", "b2", 4, T, "dog", True, False, False, False, "h6", None),
        ("r7", "b2", 5, T, "cat", True, False, False, False, "h7", None),
    ],
    "cluster_assignments": [
        ("r1", "b1", 7, "kmeans+assign", 0.5, False, "run1", _ts(1, 10, 30)),
        ("r3", "b1", 5, "kmeans+assign", 0.9, False, "run1", _ts(1, 10, 30)),
        ("r5", "b2", 1, "hdbscan+assign", 0.0, False, "run2", _ts(1, 12, 30)),
        ("r1", "b2", -1, "hdbscan+assign", None, None, "run2", _ts(1, 12, 30)),
        ("r7", "b2", 0, "hdbscan+assign", 0.1, False, "run2", _ts(1, 12, 30)),
    ],
    "recluster_assignments": [
        ("r1", "b1", 0, "hdbscan", 0.1, False, "run2", _ts(1, 11)),
        ("r2", "b1", 1, "hdbscan", 0.4, False, "run2", _ts(1, 11)),
        ("r3", "b1", 0, "hdbscan", 0.3, False, "run2", _ts(1, 11)),
        ("r4", "b1", 0, "hdbscan", 0.2, None, "run2", _ts(1, 11)),
    ],
    "cluster_summary": [
        (
            0,
            "cats",
            3,
            ["r1", "r3"],
            ["cat", "kitten"],
            '{"cat": 2, "dog": 1}',
            0.67,
            0.67,
            "hdbscan",
            "run2",
        ),
        (1, "dogs", 2, ["r5"], ["dog"], '{"dog": 1}', 1.0, 0.5, "hdbscan", "run2"),
        (0, "stale name", 9, [], [], "{}", 0.0, 0.0, "kmeans", "run1"),
    ],
}


@pytest.fixture(scope="module")
def warehouse(real_models: dict[str, SqlModel], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    lake = Lake(tmp_path_factory.mktemp("lake"))
    for table, rows in LAKE_ROWS.items():
        _write_lake(lake, table, rows)
    con = duckdb.connect()
    register_views(con, lake)
    out_dir = tmp_path_factory.mktemp("models")
    counts = run_all(con, real_models, out_dir)  # topological order, each output registered as a view
    yield con, counts, out_dir
    con.close()


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def _keyed(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, dict[str, Any]]:
    return {r["record_id"] + r["batch_id"]: r for r in _rows(con, f"select * from {table}")}


def test_real_models_run_and_write(warehouse) -> None:  # type: ignore[no-untyped-def]
    _, counts, out_dir = warehouse
    assert counts["stg_raw_records"] == 9  # every version, deletes included
    assert counts["stg_aligned_records"] == 8  # every aligned version
    assert counts["stg_clusters"] == 5  # current records with a cluster: r1@b2, r3, r4, r5, r7
    assert counts["stg_cluster_summary"] == 3
    assert counts["int_records_with_clusters"] == 6  # current aligned records
    assert counts["cluster_profiles"] == 3
    assert counts["batch_quality"] == 3
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{n}.parquet" for n in counts)


def test_staging_derivations(warehouse) -> None:  # type: ignore[no-untyped-def]
    con, _, _ = warehouse
    rec = _keyed(con, "stg_raw_records")
    assert rec["r3b1"]["op"] == "upsert" and rec["r3b1"]["has_timestamp"] is False
    assert rec["r3b1"]["audio_path"] is None and rec["r3b1"]["declares_tabular"] is False
    assert rec["r4b1"]["declares_tabular"] is True and rec["r2b2"]["declares_tabular"] is False
    assert (
        rec["r5b2"]["label"] is None
        and rec["r2b2"]["is_delete"] is True
        and rec["r2b1"]["is_delete"] is False
    )
    # per-record staging models read the current views: superseded (r1@b1) and deleted (r2) versions are gone
    img = _keyed(con, "stg_raw_images")
    assert set(img) == {"r3b1", "r5b2"}
    assert img["r5b2"]["megapixels"] == pytest.approx(2.0) and img["r5b2"]["aspect_ratio"] == pytest.approx(
        2.0
    )
    assert img["r5b2"]["orientation"] == "landscape" and img["r3b1"]["orientation"] == "square"
    assert img["r5b2"]["image_sha256"] == "s5" and img["r5b2"]["image_format"] == "PNG"
    txt = _keyed(con, "stg_raw_text")
    assert set(txt) == {"r1b2", "r4b1"}
    assert txt["r1b2"]["n_words"] == 5 and txt["r4b1"]["n_words"] == 0 and txt["r4b1"]["is_blank"]
    rej = _rows(con, "select modality from stg_rejected_records order by batch_id, line_number, modality")
    assert [r["modality"] for r in rej] == ["audio", "image", "record", "record"]
    al = _keyed(con, "stg_aligned_records")
    assert set(al) == {"r1b1", "r2b1", "r3b1", "r4b1", "r5b2", "r1b2", "r6b2", "r7b2"}
    assert {k for k, r in al.items() if not r["is_current"]} == {"r1b1", "r2b1"}
    assert al["r1b2"]["has_image"] is False and al["r5b2"]["n_modalities"] == 3
    assert al["r3b1"]["has_timestamp"] is False and al["r5b2"]["has_label"] is False
    cl = _keyed(con, "stg_clusters")
    assert set(cl) == {"r1b2", "r3b1", "r4b1", "r5b2", "r7b2"}
    assert cl["r1b2"]["is_outlier"] is True and cl["r4b1"]["is_outlier"] is False
    assert {r["cluster_run_id"] for r in cl.values()} == {"run2"}
    # the latest of the full re-cluster (11:00) and the eager assignments (10:30 for b1, 12:30 for b2)
    assert {k: r["assignment_source"] for k, r in cl.items()} == {
        "r1b2": "incremental",
        "r3b1": "recluster",
        "r4b1": "recluster",
        "r5b2": "incremental",
        "r7b2": "incremental",
    }
    assert cl["r3b1"]["cluster_id"] == 0 and cl["r3b1"]["cluster_algorithm"] == "hdbscan"


def test_stg_raw_records_normalises_op(real_models: dict[str, SqlModel], tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    raw = _frame("raw_records", [("b1", 1, "r1", " UPSERT ", T, " ", None, " ", None, "null", "m", T)])
    lake.write_partition("raw_records", "b1", raw.with_columns(landed_at=pl.lit(T)))
    con = duckdb.connect()
    register_views(con, lake)
    run_model(con, real_models["stg_raw_records"], tmp_path / "out.parquet")
    (row,) = _rows(con, f"select * from read_parquet('{tmp_path / 'out.parquet'}')")
    assert row["op"] == "upsert" and row["is_delete"] is False and row["label"] is None
    assert row["text_declared"] is False and row["image_path"] is None and row["declares_tabular"] is False


def test_int_records_with_clusters(warehouse) -> None:  # type: ignore[no-untyped-def]
    con, _, _ = warehouse
    rows = _keyed(con, "int_records_with_clusters")
    assert set(rows) == {"r1b2", "r3b1", "r4b1", "r5b2", "r6b2", "r7b2"}  # current versions only
    assert rows["r1b2"]["cluster_id"] == -1 and rows["r1b2"]["is_outlier"] is True
    assert rows["r3b1"]["cluster_id"] == 0 and rows["r3b1"]["cluster_run_id"] == "run2"
    assert rows["r6b2"]["is_clustered"] is False and rows["r6b2"]["cluster_id"] is None
    assert rows["r6b2"]["is_outlier"] is False
    assert rows["r5b2"]["has_audio"] is True and rows["r4b1"]["has_tabular"] is True


def test_cluster_profiles_numbers(warehouse) -> None:  # type: ignore[no-untyped-def]
    con, _, _ = warehouse
    prof = {r["cluster_id"]: r for r in _rows(con, "select * from cluster_profiles")}
    assert list(prof) == [-1, 0, 1]
    c0, c1, out = prof[0], prof[1], prof[-1]
    # cluster 0: r3, r4 and r7 (r1's old version, clustered 0 in run2, is superseded)
    assert c0["n_records"] == 3 and c0["cluster_name"] == "cats" and c0["top_terms"] == ["cat", "kitten"]
    assert c0["text_share"] == pytest.approx(2 / 3) and c0["image_share"] == pytest.approx(1 / 3)
    assert c0["audio_share"] == 0 and c0["tabular_share"] == pytest.approx(1 / 3)
    assert c0["dominant_label"] == "cat" and c0["dominant_label_count"] == 2
    assert c0["label_purity"] == pytest.approx(2 / 3) and c0["n_labelled"] == 3
    assert c0["mean_distance_to_centroid"] == pytest.approx(0.2) and c0["cluster_run_id"] == "run2"
    # cluster 1: r5 only (r2, clustered 1 in run2, was deleted in b2); r5 has no label
    assert c1["n_records"] == 1 and c1["cluster_name"] == "dogs"
    assert c1["text_share"] == 1.0 and c1["image_share"] == 1.0 and c1["audio_share"] == 1.0
    assert c1["n_labelled"] == 0 and c1["dominant_label"] is None and c1["dominant_label_count"] == 0
    assert c1["label_purity"] is None and c1["cluster_algorithm"] == "hdbscan+assign"
    # outliers: r1's current version
    assert out["is_outlier_group"] is True and out["n_records"] == 1 and out["cluster_name"] is None
    assert out["top_terms"] == [] and out["mean_distance_to_centroid"] is None and not c0["is_outlier_group"]
    assert out["dominant_label"] == "cat" and out["label_purity"] == 1.0


def test_batch_quality_numbers(warehouse) -> None:  # type: ignore[no-untyped-def]
    con, _, _ = warehouse
    bq = {r["batch_id"]: r for r in _rows(con, "select * from batch_quality")}
    assert list(bq) == ["b1", "b2", "b3"]
    b1, b2, b3 = bq["b1"], bq["b2"], bq["b3"]
    # per batch, from history: r1@b1 (superseded) and r2@b1 (deleted later) still count in b1
    assert (b1["n_manifest_lines"], b1["n_raw_records"], b1["n_aligned_records"]) == (5, 4, 4)
    assert (b1["n_aligned_with_text"], b1["n_aligned_with_image"]) == (3, 2)
    assert (b1["n_rejected_lines"], b1["n_rejections"]) == (2, 3)
    assert (b1["n_rejected_image"], b1["n_rejected_audio"], b1["n_rejected_record"]) == (1, 1, 1)
    assert (b1["n_rejected_text"], b1["n_rejected_tabular"], b1["n_rejected_other"]) == (0, 0, 0)
    assert b1["rejection_rate"] == pytest.approx(0.4) and b1["manifest_sha256"] == "m1"
    # b2: 5 lines, the delete is a raw record but not aligned
    assert (b2["n_manifest_lines"], b2["n_raw_records"], b2["n_aligned_records"]) == (5, 5, 4)
    assert b2["n_rejected_lines"] == 0 and b2["rejection_rate"] == 0.0 and b2["n_distinct_records"] == 5
    assert (b3["n_manifest_lines"], b3["n_raw_records"], b3["n_aligned_records"]) == (1, 0, 0)
    assert b3["n_rejected_record"] == 1 and b3["rejection_rate"] == 1.0 and b3["manifest_sha256"] is None


def test_mart_types_are_stable(warehouse) -> None:  # type: ignore[no-untyped-def]
    con, _, out_dir = warehouse
    types = dict(
        con.execute(
            f"select column_name, column_type from (describe select * from read_parquet('{out_dir}/cluster_profiles.parquet'))"
        ).fetchall()
    )
    assert types["cluster_id"] == "INTEGER" and types["label_purity"] == "DOUBLE"
    assert types["top_terms"] == "VARCHAR[]" and types["n_records"] == "BIGINT"


def test_run_all_on_an_empty_lake(real_models: dict[str, SqlModel], tmp_path: Path) -> None:
    con = duckdb.connect()
    register_views(con, Lake(tmp_path / "lake"))  # empty lake: every view is valid, every model still runs
    counts = run_all(con, real_models, tmp_path / "models")
    assert set(counts) == set(real_models) and all(v == 0 for v in counts.values())


def test_run_all_reads_legacy_partitions(real_models: dict[str, SqlModel], tmp_path: Path) -> None:
    """A raw_records partition written (in the Parquet layout) before landed_at existed is migrated to the
    Delta lake on first start and still reads (NULL landed_at)."""
    lake = Lake(tmp_path / "lake")
    legacy = _frame("raw_records", [("b0", 1, "r1", "upsert", T, "cat", True, None, None, None, "m0", T)])
    atomic_write_parquet(legacy, lake.root / "raw_records" / "batch_id=b0" / "part.parquet")
    lake.ensure_initialized()
    assert lake.read_table("raw_records")["landed_at"].to_list() == [None]
    _write_lake(lake, "aligned_records", [("r1", "b0", 1, T, "cat", True, False, False, False, "h", None)])
    con = duckdb.connect()
    register_views(con, lake)
    counts = run_all(con, real_models, tmp_path / "models")
    assert counts["stg_raw_records"] == 1 and counts["int_records_with_clusters"] == 1
