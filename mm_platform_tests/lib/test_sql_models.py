"""Tests for the dbt-like SQL model runner and the real models under dbt_like_sql/."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from mm_platform.lib.sql_models import (
    WAREHOUSE_TABLES,
    SqlModel,
    _tokenizer_table_names,
    discover_models,
    parse_dependencies,
    register_view,
    run_all,
    run_model,
    topo_order,
)

SQL_ROOT = Path(__file__).resolve().parents[2] / "dbt_like_sql"

#: The warehouse tables the models may read (the brief's list).
ALLOWED_SOURCES = {
    "raw_records",
    "raw_text",
    "raw_images",
    "rejected_records",
    "aligned_records",
    "text_embeddings",
    "image_embeddings",
    "fused_vectors",
    "clusters",
    "cluster_summary",
}


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
    assert ALLOWED_SOURCES <= WAREHOUSE_TABLES
    for name, m in real_models.items():
        assert m.description, f"{name} has no leading comment"
        assert "select * from final" in m.sql.lower(), f"{name} does not end in the final CTE"
        for dep in m.deps:
            assert dep in ALLOWED_SOURCES or dep in real_models, f"{name} reads unknown {dep}"
        if m.layer == "staging":
            assert len(m.deps) == 1 and next(iter(m.deps)) in ALLOWED_SOURCES, name
        else:  # intermediate and marts read models only, never raw tables
            assert m.deps and all(d in real_models for d in m.deps), name
        assert ".parquet" not in m.sql and "read_parquet" not in m.sql
    order = topo_order(real_models)
    assert len(order) == len(real_models)
    assert real_models["int_records_with_clusters"].deps == {"stg_aligned_records", "stg_clusters"}
    assert real_models["cluster_profiles"].deps == {"int_records_with_clusters", "stg_cluster_summary"}
    assert real_models["batch_quality"].deps == {
        "stg_raw_records",
        "stg_aligned_records",
        "stg_rejected_records",
    }


WAREHOUSE_DDL = """
create table raw_records (batch_id varchar, line_number int, record_id varchar, op varchar,
    "timestamp" timestamptz, label varchar, text_declared boolean, image_path varchar, audio_path varchar,
    fields_json varchar, manifest_sha256 varchar, ingested_at timestamptz);
create table raw_text (record_id varchar, batch_id varchar, line_number int, text varchar,
    text_sha256 varchar, n_chars int);
create table raw_images (record_id varchar, batch_id varchar, line_number int, image_path varchar,
    uri varchar, sha256 varchar, width int, height int, format varchar, mode varchar, n_bytes bigint);
create table rejected_records (batch_id varchar, line_number int, record_id varchar, modality varchar,
    reason varchar, detail varchar, stage varchar, rejected_at timestamptz);
create table aligned_records (record_id varchar, batch_id varchar, line_number int, "timestamp" timestamptz,
    label varchar, has_text boolean, has_image boolean, has_audio boolean, has_tabular boolean,
    text_sha256 varchar, image_sha256 varchar);
create table text_embeddings (record_id varchar, batch_id varchar, model varchar, model_version varchar,
    space varchar, dim int, content_sha256 varchar, embedding float[]);
create table image_embeddings (record_id varchar, batch_id varchar, model varchar, model_version varchar,
    space varchar, dim int, content_sha256 varchar, embedding float[]);
create table fused_vectors (record_id varchar, batch_id varchar, fusion varchar, modalities varchar[],
    dim int, embedding float[]);
create table clusters (record_id varchar, batch_id varchar, cluster_id int, algorithm varchar,
    distance_to_centroid double, is_outlier boolean, run_id varchar, clustered_at timestamptz);
create table cluster_summary (cluster_id int, name varchar, size int, representative_record_ids varchar[],
    top_terms varchar[], label_counts_json varchar, text_coverage double, image_coverage double,
    algorithm varchar, run_id varchar);
"""

T = "timestamptz '2024-05-01 10:00:00+00'"
WAREHOUSE_ROWS = f"""
insert into raw_records values
    ('b1', 1, 'r1', 'upsert', {T}, 'cat', true, 'img/r1.png', null, null, 'm1', {T}),
    ('b1', 2, 'r2', 'upsert', {T}, 'dog', true, null, null, null, 'm1', {T}),
    ('b1', 3, 'r3', ' UPSERT ', null, 'cat', false, 'img/r3.png', '', '', 'm1', {T}),
    ('b1', 4, 'r4', 'upsert', {T}, 'dog', true, 'img/r4.png', 'a/r4.wav', '{{"x": 1}}', 'm1', {T}),
    ('b2', 1, 'r5', 'upsert', {T}, '', true, 'img/r5.png', 'a/r5.wav', null, 'm2', {T}),
    ('b2', 2, 'r1', 'upsert', {T}, 'cat', true, null, null, null, 'm2', {T}),
    ('b2', 3, 'r6', 'delete', {T}, null, true, null, null, '{{}}', 'm2', {T});
insert into raw_text values
    ('r1', 'b1', 1, 'a  cat on a mat', 'h1', 15), ('r2', 'b1', 2, '   ', 'h2', 3);
insert into raw_images values
    ('r1', 'b1', 1, 'img/r1.png', 'file:///img/r1.png', 's1', 2000, 1000, 'png', 'RGB', 1234),
    ('r3', 'b1', 3, 'img/r3.png', 'file:///img/r3.png', 's3', 10, 10, 'jpeg', 'L', 99);
insert into rejected_records values
    ('b1', 4, 'r4', 'image', 'decode_error', 'truncated', 'raw_images', {T}),
    ('b1', 4, 'r4', 'audio', 'missing_file', 'a/r4.wav', 'raw_audio', {T}),
    ('b1', 5, null, null, 'bad_json', 'line 5', 'manifest', {T}),
    ('b3', 1, null, '', 'bad_json', 'line 1', 'manifest', {T});
insert into aligned_records values
    ('r1', 'b1', 1, {T}, 'cat', true, true, false, false, 'h1', 's1'),
    ('r2', 'b1', 2, {T}, 'dog', true, false, false, false, 'h2', null),
    ('r3', 'b1', 3, null, 'cat', false, true, false, false, null, 's3'),
    ('r4', 'b1', 4, {T}, 'dog', true, false, false, true, 'h4', null),
    ('r5', 'b2', 1, {T}, '', true, true, true, false, 'h5', 's5'),
    ('r1', 'b2', 2, {T}, 'cat', true, null, false, false, 'h1b', null),
    ('r6', 'b2', 3, {T}, null, true, false, false, false, 'h6', null);
insert into clusters values
    ('r1', 'b1', 0, 'hdbscan', 0.1, false, 'run2', timestamptz '2024-05-02 00:00:00+00'),
    ('r3', 'b1', 0, 'hdbscan', 0.3, false, 'run2', timestamptz '2024-05-02 00:00:00+00'),
    ('r4', 'b1', 0, 'hdbscan', 0.2, null, 'run2', timestamptz '2024-05-02 00:00:00+00'),
    ('r2', 'b1', 1, 'hdbscan', 0.4, false, 'run2', timestamptz '2024-05-02 00:00:00+00'),
    ('r5', 'b2', 1, 'hdbscan', 0.0, false, 'run2', timestamptz '2024-05-02 00:00:00+00'),
    ('r1', 'b2', -1, 'hdbscan', null, null, 'run2', timestamptz '2024-05-02 00:00:00+00'),
    ('r1', 'b1', 7, 'kmeans', 0.5, false, 'run1', timestamptz '2024-05-01 00:00:00+00');
insert into cluster_summary values
    (0, 'cats', 3, ['r1', 'r3'], ['cat', 'kitten'], '{{"cat": 2, "dog": 1}}', 0.67, 0.67, 'hdbscan', 'run2'),
    (1, 'dogs', 2, ['r5'], ['dog'], '{{"dog": 1}}', 1.0, 0.5, 'hdbscan', 'run2'),
    (0, 'stale name', 9, [], [], '{{}}', 0.0, 0.0, 'kmeans', 'run1');
"""


@pytest.fixture(scope="module")
def warehouse(real_models: dict[str, SqlModel], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    con = duckdb.connect()
    con.execute(WAREHOUSE_DDL)
    con.execute(WAREHOUSE_ROWS)
    out_dir = tmp_path_factory.mktemp("models")
    counts: dict[str, int] = {}
    for name in topo_order(real_models):  # run_model + views, as the Dagster assets do
        path = out_dir / f"{name}.parquet"
        counts[name] = run_model(con, real_models[name], path)
        register_view(con, name, path)
    yield con, counts, out_dir
    con.close()


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def test_real_models_run_and_write(warehouse) -> None:  # type: ignore[no-untyped-def]
    _, counts, out_dir = warehouse
    assert counts["stg_raw_records"] == 7
    assert counts["stg_clusters"] == 6  # only the latest run
    assert counts["stg_cluster_summary"] == 3
    assert counts["int_records_with_clusters"] == 7
    assert counts["cluster_profiles"] == 3
    assert counts["batch_quality"] == 3
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{n}.parquet" for n in counts)


def test_staging_derivations(warehouse) -> None:  # type: ignore[no-untyped-def]
    con, _, _ = warehouse
    rec = {r["record_id"] + r["batch_id"]: r for r in _rows(con, "select * from stg_raw_records")}
    assert rec["r3b1"]["op"] == "upsert" and rec["r3b1"]["has_timestamp"] is False
    assert rec["r3b1"]["audio_path"] is None and rec["r3b1"]["declares_tabular"] is False
    assert rec["r4b1"]["declares_tabular"] is True and rec["r6b2"]["declares_tabular"] is False
    assert rec["r5b2"]["label"] is None and rec["r6b2"]["is_delete"] is True
    img = {r["record_id"]: r for r in _rows(con, "select * from stg_raw_images")}
    assert img["r1"]["megapixels"] == pytest.approx(2.0) and img["r1"]["aspect_ratio"] == pytest.approx(2.0)
    assert img["r1"]["orientation"] == "landscape" and img["r3"]["orientation"] == "square"
    assert img["r1"]["image_sha256"] == "s1" and img["r1"]["image_format"] == "PNG"
    txt = {r["record_id"]: r for r in _rows(con, "select * from stg_raw_text")}
    assert txt["r1"]["n_words"] == 5 and txt["r2"]["n_words"] == 0 and txt["r2"]["is_blank"]
    rej = _rows(con, "select modality from stg_rejected_records order by batch_id, line_number, modality")
    assert [r["modality"] for r in rej] == ["audio", "image", "record", "record"]
    al = {r["record_id"] + r["batch_id"]: r for r in _rows(con, "select * from stg_aligned_records")}
    assert al["r1b2"]["has_image"] is False and al["r5b2"]["n_modalities"] == 3
    assert al["r3b1"]["has_timestamp"] is False
    cl = {r["record_id"] + r["batch_id"]: r for r in _rows(con, "select * from stg_clusters")}
    assert cl["r1b2"]["is_outlier"] is True and cl["r4b1"]["is_outlier"] is False
    assert {r["cluster_run_id"] for r in cl.values()} == {"run2"}


def test_int_records_with_clusters(warehouse) -> None:  # type: ignore[no-untyped-def]
    con, _, _ = warehouse
    rows = {r["record_id"] + r["batch_id"]: r for r in _rows(con, "select * from int_records_with_clusters")}
    assert rows["r1b1"]["cluster_id"] == 0 and rows["r1b2"]["cluster_id"] == -1
    assert rows["r1b2"]["is_outlier"] is True
    assert rows["r6b2"]["is_clustered"] is False and rows["r6b2"]["cluster_id"] is None
    assert rows["r5b2"]["has_audio"] is True and rows["r4b1"]["has_tabular"] is True


def test_cluster_profiles_numbers(warehouse) -> None:  # type: ignore[no-untyped-def]
    con, _, _ = warehouse
    prof = {r["cluster_id"]: r for r in _rows(con, "select * from cluster_profiles")}
    assert list(prof) == [-1, 0, 1]
    c0, c1, out = prof[0], prof[1], prof[-1]
    assert c0["n_records"] == 3 and c0["cluster_name"] == "cats" and c0["top_terms"] == ["cat", "kitten"]
    assert c0["text_share"] == pytest.approx(2 / 3) and c0["image_share"] == pytest.approx(2 / 3)
    assert c0["audio_share"] == 0 and c0["tabular_share"] == pytest.approx(1 / 3)
    assert c0["dominant_label"] == "cat" and c0["dominant_label_count"] == 2
    assert c0["label_purity"] == pytest.approx(2 / 3) and c0["n_labelled"] == 3
    assert c0["mean_distance_to_centroid"] == pytest.approx(0.2)
    assert c1["n_records"] == 2 and c1["cluster_name"] == "dogs"
    assert c1["text_share"] == 1.0 and c1["image_share"] == 0.5 and c1["audio_share"] == 0.5
    assert c1["n_labelled"] == 1 and c1["dominant_label"] == "dog" and c1["label_purity"] == 1.0
    assert out["is_outlier_group"] is True and out["n_records"] == 1 and out["cluster_name"] is None
    assert out["top_terms"] == [] and not c0["is_outlier_group"]


def test_batch_quality_numbers(warehouse) -> None:  # type: ignore[no-untyped-def]
    con, _, _ = warehouse
    bq = {r["batch_id"]: r for r in _rows(con, "select * from batch_quality")}
    assert list(bq) == ["b1", "b2", "b3"]
    b1, b2, b3 = bq["b1"], bq["b2"], bq["b3"]
    assert (b1["n_manifest_lines"], b1["n_raw_records"], b1["n_aligned_records"]) == (5, 4, 4)
    assert (b1["n_rejected_lines"], b1["n_rejections"]) == (2, 3)
    assert (b1["n_rejected_image"], b1["n_rejected_audio"], b1["n_rejected_record"]) == (1, 1, 1)
    assert (b1["n_rejected_text"], b1["n_rejected_tabular"], b1["n_rejected_other"]) == (0, 0, 0)
    assert b1["rejection_rate"] == pytest.approx(0.4) and b1["manifest_sha256"] == "m1"
    assert (b2["n_manifest_lines"], b2["n_aligned_records"], b2["n_rejected_lines"]) == (3, 3, 0)
    assert b2["rejection_rate"] == 0.0 and b2["n_distinct_records"] == 3
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


def test_run_all_matches_manual_run(real_models: dict[str, SqlModel], tmp_path: Path) -> None:
    con = duckdb.connect()
    con.execute(WAREHOUSE_DDL)  # empty warehouse: every model still runs
    counts = run_all(con, real_models, tmp_path)
    assert set(counts) == set(real_models) and all(v == 0 for v in counts.values())
