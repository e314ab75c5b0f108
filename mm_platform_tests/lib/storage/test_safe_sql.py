"""Restricted SQL (``connect_restricted`` + ``execute_restricted``): every escape from the lake is refused
with a clear error, while every warehouse view still answers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from mm_platform.lib.storage.delta import load_delta_extension
from mm_platform.lib.storage.lake import (
    ALL_TABLES,
    Lake,
    RestrictedSQLError,
    check_restricted_sql,
    connect_readonly,
    connect_restricted,
    execute_restricted,
    refresh_warehouse,
    view_statements,
)
from mm_platform.lib.storage.sqlquote import sql_identifier, sql_literal


def rows(table: str, **values) -> pl.DataFrame:
    """One row of ``table``: the given values, nulls elsewhere."""
    frame = pl.DataFrame({k: [v] for k, v in values.items()})
    return frame.with_columns(pl.lit(None).alias(c) for c in ALL_TABLES[table] if c not in values)


@pytest.fixture()
def env(tmp_path: Path):
    lake = Lake(tmp_path / "data" / "lake")
    lake.write_partition("raw_records", "b1", rows("raw_records", batch_id="b1", record_id="r1", op="upsert",
                                                   landed_at=datetime(2024, 1, 1, tzinfo=UTC)))
    lake.write_partition("aligned_records", "b1", rows("aligned_records", record_id="r1", batch_id="b1"))
    secret = tmp_path / "secret.csv"
    secret.write_text("user,password\nroot,hunter2\n")
    duckdb_path = tmp_path / "data" / "warehouse.duckdb"
    con = connect_restricted(lake, duckdb_path)
    yield lake, con, secret, tmp_path
    con.close()


def test_every_view_answers_on_a_restricted_connection(env):
    lake, con, _, _ = env
    names = [name for name, _ in view_statements(lake)]
    assert len(names) > 30
    for name in names:
        n = execute_restricted(con, f"SELECT count(*) FROM {sql_identifier(name)}").fetchone()[0]
        assert n >= 0
    assert execute_restricted(con, "SELECT record_id FROM aligned_records").fetchall() == [("r1",)]
    assert execute_restricted(con, "SELECT record_id FROM current_records").fetchall() == [("r1",)]
    # reading lake files directly is allowed, as are DESCRIBE / SHOW / SUMMARIZE / EXPLAIN and parameters
    part = lake.partition_path("aligned_records", "b1")
    assert execute_restricted(con, f"SELECT count(*) FROM read_parquet({sql_literal(part)})").fetchone() == (1,)
    for sql in ("DESCRIBE aligned_records", "SHOW TABLES", "SUMMARIZE raw_records",
                "EXPLAIN SELECT * FROM current_clusters", "WITH a AS (SELECT 1 AS x) SELECT x FROM a"):
        execute_restricted(con, sql).fetchall()
    assert execute_restricted(con, "SELECT ?::INT + 1", [1]).fetchone() == (2,)


def escapes(secret: Path, lake: Lake, tmp_path: Path) -> dict[str, str]:
    """Each attempt to leave the lake, write, or reconfigure; all must be refused."""
    s = sql_literal(secret)
    part = sql_literal(lake.partition_path("aligned_records", "b1"))
    return {
        "read_csv secret": f"SELECT * FROM read_csv({s})",
        "read_csv_auto /etc/passwd": "SELECT * FROM read_csv_auto('/etc/passwd')",
        "read_text /etc/passwd": "SELECT * FROM read_text('/etc/passwd')",
        "read_blob secret": f"SELECT * FROM read_blob({s})",
        "read_parquet outside": f"SELECT * FROM read_parquet({sql_literal(tmp_path / 'x.parquet')})",
        "read_json outside": "SELECT * FROM read_json('/etc/os-release')",
        "glob /": "SELECT * FROM glob('/*')",
        "glob ..": f"SELECT * FROM glob({sql_literal(str(lake.root) + '/../*')})",
        "dotdot read": f"SELECT * FROM read_csv({sql_literal(str(lake.root) + '/../../secret.csv')})",
        "path in FROM": "SELECT * FROM '/etc/passwd'",
        "secret path in FROM": f"SELECT * FROM {s}",
        "COPY TO lake file": f"COPY (SELECT 1 AS x) TO {part} (FORMAT PARQUET)",
        "COPY TO outside": f"COPY (SELECT 1 AS x) TO {sql_literal(tmp_path / 'out.csv')}",
        "COPY FROM": f"COPY aligned_records FROM {s}",
        "query then COPY": f"SELECT 1; COPY (SELECT 1) TO {part}",
        "EXPLAIN ANALYZE COPY": f"EXPLAIN ANALYZE COPY (SELECT 1) TO {part}",
        "ATTACH": f"ATTACH {sql_literal(tmp_path / 'other.duckdb')} AS o",
        "DETACH": "DETACH memory",
        "INSTALL": "INSTALL httpfs",
        "LOAD": "LOAD httpfs",
        "SET external access": "SET enable_external_access = true",
        "RESET lock": "RESET lock_configuration",
        "SET allowed_directories": "SET allowed_directories = ['/']",
        "SET VARIABLE": "SET VARIABLE x = 1",
        "PRAGMA": "PRAGMA enable_profiling",
        "CALL": "CALL checkpoint()",
        "EXPORT DATABASE": f"EXPORT DATABASE {sql_literal(tmp_path / 'export')}",
        "CREATE TABLE": "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW": "CREATE VIEW v AS SELECT * FROM read_csv('/etc/passwd')",
        "CREATE SECRET": "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
        "CREATE MACRO": "CREATE MACRO m() AS 1",
        "DROP VIEW": "DROP VIEW aligned_records",
        "INSERT": "INSERT INTO aligned_records_history SELECT * FROM aligned_records_history",
        "VACUUM": "VACUUM",
    }


def test_each_escape_is_refused_by_the_statement_check_and_by_duckdb(env):
    lake, con, secret, tmp_path = env
    attempts = escapes(secret, lake, tmp_path)
    assert len(attempts) == 34
    for what, sql in attempts.items():
        with pytest.raises((RestrictedSQLError, duckdb.Error)) as err:
            execute_restricted(con, sql).fetchall()
        msg = str(err.value)
        assert "hunter2" not in msg and "root:" not in msg, what
        assert ("allowed here" in msg or "disabled by configuration" in msg or "Cannot change configuration" in msg
                or "does not exist" in msg or "read-only" in msg.lower()), (what, msg)
    # DuckDB's own enforcement, without the statement check: every read/write outside the lake is refused
    for what in ("read_csv secret", "read_text /etc/passwd", "read_blob secret", "glob /", "dotdot read",
                 "COPY TO outside", "ATTACH", "INSTALL", "LOAD", "SET external access", "RESET lock",
                 "SET allowed_directories", "EXPORT DATABASE", "read_parquet outside"):
        with pytest.raises(duckdb.Error, match="disabled|Cannot change configuration|Permission"):
            con.execute(attempts[what]).fetchall()
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "export").exists()
    # the lake is untouched and still answers
    assert execute_restricted(con, "SELECT count(*) FROM aligned_records").fetchone() == (1,)


def test_statement_check_messages():
    check_restricted_sql("SELECT 1")
    check_restricted_sql("explain analyze select 1")
    with pytest.raises(RestrictedSQLError, match="refused a COPY statement"):
        check_restricted_sql("COPY (SELECT 1) TO 'x.csv'")
    with pytest.raises(RestrictedSQLError, match="does not parse"):
        check_restricted_sql("SELEC 1")
    with pytest.raises(RestrictedSQLError, match="no SQL"):
        check_restricted_sql("  ;  ")


def test_unsafe_connection_reads_any_file(env):
    lake, _, secret, tmp_path = env
    con = connect_readonly(lake, tmp_path / "data" / "warehouse.duckdb")
    try:
        assert con.execute(f"SELECT password FROM read_csv({sql_literal(secret)})").fetchone() == ("hunter2",)
    finally:
        con.close()


@pytest.mark.parametrize("name", ["it's a \"lake\" ; DROP --", "glob [1]*?{a,b}", "ünï cødé \u05e9"])
def test_views_work_with_hostile_characters_in_the_lake_path(tmp_path: Path, name: str):
    if "[" in name:  # deltalake 1.6.6 cannot open a table location holding brackets: a clear error up front
        with pytest.raises(ValueError, match="holds '\\[' or '\\]'"):
            Lake(tmp_path / name / "lake")
        name = name.replace("[", "(").replace("]", ")")
    lake = Lake(tmp_path / name / "lake")
    lake.write_partition("aligned_records", "b1", rows("aligned_records", record_id="r1", batch_id="b1"))
    lake.write_global("cluster_summary", rows("cluster_summary", cluster_id=3))
    con = connect_restricted(lake, lake.root.parent / "w'h.duckdb")
    try:
        assert execute_restricted(con, "SELECT count(*) FROM aligned_records_history").fetchone() == (1,)
        assert execute_restricted(con, "SELECT cluster_id FROM cluster_summary").fetchall() == [(3,)]
    finally:
        con.close()
    if "?" in name:
        return  # DuckDB takes a `?` in a database file path for URI options: no warehouse file there
    # the warehouse file's views too
    assert refresh_warehouse(lake, lake.root.parent / "w'h.duckdb")
    ro = duckdb.connect(str(lake.root.parent / "w'h.duckdb"), read_only=True)
    load_delta_extension(ro)
    try:
        assert ro.execute("SELECT count(*) FROM aligned_records").fetchone() == (0,)  # no raw_records: not current
        assert ro.execute("SELECT count(*) FROM aligned_records_history").fetchone() == (1,)
    finally:
        ro.close()


def test_quoting_helpers():
    assert sql_literal("it's") == "'it''s'"
    assert sql_identifier('a"b') == '"a""b"'
    lit, ident = sql_literal("'''x"), sql_identifier('we"ird')
    assert duckdb.sql(f"SELECT {lit} AS {ident}").fetchone() == ("'''x",)
    with pytest.raises(ValueError):
        sql_literal("a\x00b")
    with pytest.raises(ValueError):
        sql_identifier("")
