"""Record versioning in the lake: the Python helpers (``Lake.record_versions`` & co.) and the DuckDB views
(``<t>``, ``<t>_history``, ``record_versions``, ``current_records``, ``record_deletions``, ``current_clusters``)
must agree on which version of each record is current."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from mm_platform.lib.storage.lake import (
    ALL_TABLES,
    RECORD_TABLES,
    Lake,
    atomic_write_parquet,
    register_views,
    view_statements,
)

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def _at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def _row(table: str, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(ALL_TABLES[table])
    row.update(values)
    return row


def _put(lake: Lake, table: str, batch_id: str, rows: list[dict[str, Any]]) -> None:
    df = pl.DataFrame([_row(table, batch_id=batch_id, **r) for r in rows], schema=ALL_TABLES[table])
    lake.write_partition(table, batch_id, df)


def land(lake: Lake, batch_id: str, landed_at: datetime | None, ops: dict[str, str]) -> None:
    """A landed batch: raw_records with ``ops`` (record_id -> op), and, for every upsert, one row in every
    per-record table (the row's batch_id tells the versions apart)."""
    rows = [
        {
            "line_number": i,
            "record_id": rid,
            "op": op,
            "label": f"{rid}-{batch_id}",
            "landed_at": landed_at,
            "ingested_at": landed_at,
        }
        for i, (rid, op) in enumerate(ops.items(), start=1)
    ]
    _put(lake, "raw_records", batch_id, rows)
    upserts = [
        {"record_id": rid, "line_number": i}
        for i, (rid, op) in enumerate(ops.items(), start=1)
        if op == "upsert"
    ]
    for table in RECORD_TABLES:
        cols = ALL_TABLES[table]
        _put(lake, table, batch_id, [{k: v for k, v in r.items() if k in cols} for r in upserts])


def assign(
    lake: Lake, rows: list[tuple[str, str, int, datetime | None]], batch_id: str | None = None
) -> None:
    """(record_id, batch_id, cluster_id, clustered_at) rows: the full re-cluster (global) when ``batch_id``
    is None, else the eager assignment partition of that batch."""
    frame = pl.DataFrame(
        [
            _row(
                "recluster_assignments",
                record_id=r,
                batch_id=b,
                cluster_id=c,
                clustered_at=t,
                run_id="full" if batch_id is None else f"inc-{batch_id}",
            )
            for r, b, c, t in rows
        ],
        schema=ALL_TABLES["recluster_assignments"],
    )
    if batch_id is None:
        lake.write_global("recluster_assignments", frame)
    else:
        lake.write_partition("cluster_assignments", batch_id, frame)


def con_for(lake: Lake) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    register_views(con, lake)
    return con


def q(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def keys(rows: list[dict[str, Any]] | pl.DataFrame) -> set[tuple[str, str]]:
    if isinstance(rows, pl.DataFrame):
        rows = rows.to_dicts()
    return {(r["record_id"], r["batch_id"]) for r in rows}


def current_state(lake: Lake, con: duckdb.DuckDBPyConnection) -> set[tuple[str, str]]:
    """The current (record_id, batch_id) pairs, asserting the Python helpers and every view agree."""
    cur = keys(lake.current_records())
    assert keys(q(con, "select * from current_records")) == cur
    sql_versions = q(con, "select * from record_versions")
    py_versions = lake.record_versions()
    assert keys(sql_versions) == keys(py_versions)
    assert keys([r for r in sql_versions if r["is_current"]]) == keys(py_versions.filter("is_current"))
    for table in RECORD_TABLES:
        history = keys(q(con, f"select * from {table}_history"))
        assert history == keys(lake.read_table(table)), table
        assert keys(q(con, f"select * from {table}")) == keys(lake.read_current(table)) == cur & history, (
            table
        )
    return cur


# -- versions ---------------------------------------------------------------------------------------------


def test_update_in_later_batch_supersedes(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    land(lake, "b1", _at(0), {"r1": "upsert", "r2": "upsert"})
    land(lake, "b2", _at(1), {"r1": "upsert"})
    con = con_for(lake)
    assert current_state(lake, con) == {("r1", "b2"), ("r2", "b1")}
    assert keys(q(con, "select * from raw_text_history where record_id = 'r1'")) == {
        ("r1", "b1"),
        ("r1", "b2"),
    }
    (row,) = q(con, "select * from aligned_records where record_id = 'r1'")
    assert row["batch_id"] == "b2" and row["line_number"] == 1
    versions = {(r["record_id"], r["batch_id"]): r for r in q(con, "select * from record_versions")}
    assert versions["r1", "b2"]["is_current"] and not versions["r1", "b1"]["is_current"]
    assert (
        versions["r1", "b2"]["previous_batch_id"] == "b1"
        and versions["r1", "b1"]["previous_batch_id"] is None
    )
    py = lake.record_versions()
    assert py.filter(pl.col("record_id") == "r1")["batch_id"].to_list() == ["b2", "b1"]  # newest first
    assert q(con, "select * from record_deletions") == []


def test_record_versions_are_kept_between_commits_and_follow_every_commit(tmp_path: Path) -> None:
    """One Lake object (a run's) asked again gets the same frame; a landed batch is seen at once."""
    lake = Lake(tmp_path)
    land(lake, "b1", _at(0), {"r1": "upsert", "r2": "upsert"})
    first = lake.record_versions()
    assert lake.record_versions() is first
    land(lake, "b2", _at(1), {"r1": "delete"})
    assert keys(lake.current_records()) == {("r2", "b1")}
    assert lake.record_versions() is not first and lake.record_versions().height == 3


def test_delete_in_later_batch_removes_the_record_everywhere(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    land(lake, "b1", _at(0), {"r1": "upsert", "r2": "upsert"})
    land(lake, "b2", _at(1), {"r1": "delete", "r3": "upsert"})
    assign(lake, [("r1", "b1", 0, _at(2)), ("r2", "b1", 1, _at(2)), ("r3", "b2", 1, _at(2))])
    con = con_for(lake)
    assert current_state(lake, con) == {("r2", "b1"), ("r3", "b2")}
    for table in RECORD_TABLES:
        assert q(con, f"select * from {table} where record_id = 'r1'") == [], table
        assert keys(q(con, f"select * from {table}_history where record_id = 'r1'")) == {("r1", "b1")}, table
    (deletion,) = q(con, "select * from record_deletions")
    assert (deletion["record_id"], deletion["batch_id"], deletion["line_number"]) == ("r1", "b2", 1)
    assert deletion["in_effect"] is True and deletion["deleted_version_batch_id"] == "b1"
    assert deletion["landed_at"] == _at(1)
    assert (
        keys(q(con, "select * from current_clusters"))
        == keys(lake.current_clusters())
        == {("r2", "b1"), ("r3", "b2")}
    )


def test_delete_of_an_unknown_record_is_audited(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    land(lake, "b1", _at(0), {"ghost": "delete", "r1": "upsert"})
    con = con_for(lake)
    assert current_state(lake, con) == {("r1", "b1")}
    (deletion,) = q(con, "select * from record_deletions")
    assert deletion["in_effect"] is True and deletion["deleted_version_batch_id"] is None


def test_upsert_after_delete_resurrects(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    land(lake, "b1", _at(0), {"r1": "upsert"})
    land(lake, "b2", _at(1), {"r1": "delete"})
    land(lake, "b3", _at(2), {"r1": "upsert"})
    con = con_for(lake)
    assert current_state(lake, con) == {("r1", "b3")}
    (deletion,) = q(con, "select * from record_deletions")
    assert deletion["batch_id"] == "b2" and deletion["in_effect"] is False
    assert deletion["deleted_version_batch_id"] == "b1"
    assert {(r["batch_id"], r["previous_batch_id"]) for r in q(con, "select * from record_versions")} == {
        ("b3", "b2"),
        ("b2", "b1"),
        ("b1", None),
    }


def test_landed_at_orders_versions_and_batch_id_breaks_ties(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    # landed_at wins over the batch id's sort order ...
    land(lake, "z-old", _at(0), {"r1": "upsert", "r2": "upsert"})
    land(lake, "a-new", _at(1), {"r1": "upsert"})
    # ... and on equal landed_at, the greater batch id is newer
    land(lake, "t1", _at(5), {"r2": "upsert", "r3": "upsert"})
    land(lake, "t2", _at(5), {"r2": "delete", "r3": "upsert"})
    con = con_for(lake)
    assert current_state(lake, con) == {("r1", "a-new"), ("r3", "t2")}
    (deletion,) = q(con, "select * from record_deletions")
    assert deletion["in_effect"] is True and deletion["deleted_version_batch_id"] == "t1"


def test_legacy_partition_without_landed_at_is_oldest(tmp_path: Path) -> None:
    """A raw_records partition written before landed_at existed reads as NULL landed_at: older than any
    dated version, in both implementations."""
    lake = Lake(tmp_path)
    lake.ensure_initialized()
    legacy = pl.DataFrame(
        [_row("raw_records", batch_id="zz-legacy", line_number=1, record_id="r1", op="upsert")],
        schema=ALL_TABLES["raw_records"],
    ).drop("landed_at")
    atomic_write_parquet(legacy, lake.partition_path("raw_records", "zz-legacy"))
    land(lake, "b1", _at(0), {"r1": "upsert"})
    con = con_for(lake)
    assert current_state(lake, con) == {("r1", "b1")}


# -- clusters ---------------------------------------------------------------------------------------------


def _clusters(lake: Lake, con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, int, str]]:
    """record_id -> (batch_id, cluster_id, source), asserting the view and the helper agree."""
    sql = {
        r["record_id"]: (r["batch_id"], r["cluster_id"], r["source"])
        for r in q(con, "select * from current_clusters")
    }
    py_df = lake.current_clusters()
    py = {r["record_id"]: (r["batch_id"], r["cluster_id"], r["source"]) for r in py_df.to_dicts()}
    assert sql == py
    assert py_df.height == len(py)  # one row per record
    assert {d[0] for d in con.execute("select * from current_clusters").description} == set(py_df.columns)
    return sql


def test_clusters_latest_assignment_wins(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    land(lake, "b1", _at(0), {"r1": "upsert", "r2": "upsert", "r3": "upsert"})
    land(lake, "b2", _at(1), {"r4": "upsert"})
    assign(lake, [("r1", "b1", 5, _at(0.5)), ("r2", "b1", 6, _at(0.5))], batch_id="b1")  # eager, 10:30
    assign(lake, [("r1", "b1", 0, _at(3)), ("r2", "b1", 1, _at(0.25)), ("r3", "b1", 2, _at(3))])  # full
    assign(lake, [("r4", "b2", 1, _at(4)), ("r3", "b1", 9, _at(4))], batch_id="b2")  # eager, later
    con = con_for(lake)
    assert _clusters(lake, con) == {
        "r1": ("b1", 0, "recluster"),  # re-cluster newer than the eager assignment
        "r2": ("b1", 6, "incremental"),  # eager assignment newer than the re-cluster
        "r3": ("b1", 9, "incremental"),
        "r4": ("b2", 1, "incremental"),
    }


def test_clusters_exclude_superseded_and_deleted(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    land(lake, "b1", _at(0), {"r1": "upsert", "r2": "upsert", "r3": "upsert"})
    assign(lake, [("r1", "b1", 0, _at(0.5)), ("r2", "b1", 1, _at(0.5)), ("r3", "b1", 1, _at(0.5))])
    land(lake, "b2", _at(1), {"r1": "upsert", "r2": "delete"})
    con = con_for(lake)
    # r1's only assignment is for its superseded version: not clustered until its new version is
    assert _clusters(lake, con) == {"r3": ("b1", 1, "recluster")}
    assign(lake, [("r1", "b2", 4, _at(2))], batch_id="b2")
    assert _clusters(lake, con) == {"r3": ("b1", 1, "recluster"), "r1": ("b2", 4, "incremental")}


def test_clusters_tie_on_clustered_at(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    land(lake, "b1", _at(0), {"r1": "upsert"})
    assign(lake, [("r1", "b1", 0, _at(1))])
    assign(lake, [("r1", "b1", 3, _at(1))], batch_id="b1")
    assert _clusters(lake, con_for(lake)) == {"r1": ("b1", 3, "incremental")}


def test_clusters_null_clustered_at_loses(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    land(lake, "b1", _at(0), {"r1": "upsert"})
    assign(lake, [("r1", "b1", 0, _at(1))])
    assign(lake, [("r1", "b1", 3, None)], batch_id="b1")
    assert _clusters(lake, con_for(lake)) == {"r1": ("b1", 0, "recluster")}


# -- empty lake -------------------------------------------------------------------------------------------


def test_empty_lake_views_are_valid_and_empty(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    con = con_for(lake)
    names = [name for name, _ in view_statements(lake)]
    assert {"record_versions", "current_records", "record_deletions", "current_clusters"} <= set(names)
    assert {f"{t}_history" for t in RECORD_TABLES} | set(RECORD_TABLES) <= set(names)
    for name in names:
        assert con.execute(f'select count(*) from "{name}"').fetchone() == (0,), name
    clusters_cols = {d[0] for d in con.execute("select * from current_clusters").description}
    assert clusters_cols == set(lake.current_clusters().columns)
    assert (
        lake.record_versions().height == lake.current_records().height == lake.current_clusters().height == 0
    )
    for table in RECORD_TABLES:
        assert lake.read_current(table).height == 0
        history_cols = [d[0] for d in con.execute(f"select * from {table}_history").description]
        assert history_cols == list(ALL_TABLES[table])  # typed by the _schema file
