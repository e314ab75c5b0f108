"""What Delta Lake adds to the lake: time travel (``--as-of``), housekeeping (compaction + vacuum) that
readers never notice, and the one-time migration of a lake in the old Parquet layout."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from mm_platform.lib.storage.lake import (
    ALL_TABLES,
    LEGACY_DIR,
    Lake,
    connect_restricted,
    execute_restricted,
    read_parquet,
    register_views,
    resolve_as_of,
)
from mm_platform.lib.storage.migrate import legacy_tables
from mm_platform.lib.settings import vacuum_retention_hours
from mm_platform_tests.lib.storage.test_lake import raw_text_df

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "legacy_lake"


def count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return execute_restricted(con, sql).fetchone()[0]


# -- time travel -----------------------------------------------------------------------------------------


def test_as_of_a_time_or_a_version_sees_that_state(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 1, 3))
    time.sleep(0.05)
    between = dt.datetime.now(dt.UTC)
    time.sleep(0.05)
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 2, 5))  # overwrite
    lake.write_partition("raw_text", "b2", raw_text_df("b2", 2, 1))
    now = connect_restricted(lake)
    then = connect_restricted(lake, as_of=between.isoformat())
    first = connect_restricted(lake, as_of="1")  # version 0 is the empty table, 1 the first write
    try:
        assert count(now, "SELECT count(*) FROM raw_text_history") == 6
        assert count(then, "SELECT count(*) FROM raw_text_history") == 3
        assert count(then, "SELECT max(line_number) FROM raw_text_history") == 1
        assert count(first, "SELECT count(*) FROM raw_text_history") == 3
        # naive times are UTC; a time before the lake existed sees every table empty
        early = connect_restricted(lake, as_of="2000-01-01T00:00:00")
        assert count(early, "SELECT count(*) FROM raw_text_history") == 0
        early.close()
    finally:
        for c in (now, then, first):
            c.close()
    assert resolve_as_of(lake, "1")["raw_text"] == 1
    with pytest.raises(ValueError, match="neither a version number nor an ISO-8601 time"):
        resolve_as_of(lake, "last tuesday")


# -- housekeeping ----------------------------------------------------------------------------------------


def test_vacuum_retention_setting_has_a_floor() -> None:
    assert vacuum_retention_hours({}) == 168.0
    assert vacuum_retention_hours({"MM_LAKE_VACUUM_RETENTION_HOURS": "0"}) == 1.0
    with pytest.raises(ValueError, match="not a number"):
        vacuum_retention_hours({"MM_LAKE_VACUUM_RETENTION_HOURS": "soon"})


def test_housekeeping_while_readers_read_never_breaks_a_read(tmp_path: Path) -> None:
    """Compaction + vacuum (the asset's retention floor) run again and again while DuckDB and polars
    readers query: no read fails and every read is one complete version."""
    lake = Lake(tmp_path / "lake")
    for b in range(4):
        lake.write_partition("raw_text", f"b{b}", raw_text_df(f"b{b}", 0, 50))
    # many small files in one global table for the compaction to merge: a model table written whole, then
    # appended to through deltalake's own append (as another engine would)
    from deltalake import write_deltalake
    lake.write_global("mart_small", pl.DataFrame({"n": [0]}))
    for i in range(1, 6):
        write_deltalake(lake.table_uri("mart_small"), pl.DataFrame({"n": [i]}).to_arrow(), mode="append")
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = [0]

    def reader() -> None:
        con = duckdb.connect()
        register_views(con, lake)
        try:
            while not stop.is_set():
                n, lo, hi = con.execute("SELECT count(*), min(line_number), max(line_number) "
                                        "FROM raw_text_history").fetchone()
                assert n == 200 and lo == hi == 0, (n, lo, hi)
                assert con.execute("SELECT sum(n) FROM mart_small").fetchone() == (15,)
                assert lake.read_table("raw_text").height == 200
                reads[0] += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, asserted below
            errors.append(exc)
        finally:
            con.close()

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        stats = lake.housekeeping(vacuum_retention_hours({"MM_LAKE_VACUUM_RETENTION_HOURS": "0"}))
        for _ in range(3):
            lake.housekeeping(1.0)
    finally:
        while reads[0] < 10 and not errors:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert stats["mart_small"]["files_removed"] == 6 and stats["mart_small"]["files_added"] == 1
    assert stats["mart_small"]["files_vacuumed"] == 0  # the merged files are younger than the retention
    assert lake.verify(settle_s=0) == []  # the compacted file was recorded
    # once no reader needs them (retention 0, called directly), the merged-away files are deleted
    assert lake.housekeeping(0)["mart_small"]["files_vacuumed"] == 6
    assert lake.read_table("mart_small")["n"].sum() == 15


# -- migration -------------------------------------------------------------------------------------------


def legacy_copy(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    shutil.copytree(FIXTURE, root)
    return root


def test_a_parquet_layout_lake_is_migrated_once_with_nothing_lost(tmp_path: Path) -> None:
    """The fixture was made by the Parquet-layout lake (mm_platform_tests/fixtures/make_legacy_lake.py)."""
    root = legacy_copy(tmp_path)
    before = {p.relative_to(root): read_parquet(p) for p in root.rglob("part.parquet")}
    assert legacy_tables(root)
    con = connect_restricted(Lake(root))  # first start: migrates, then serves the same views
    try:
        assert count(con, "SELECT count(*) FROM raw_records") == 4
        assert execute_restricted(con, "SELECT record_id, batch_id FROM current_records").fetchall() == [("r2", "b2")]
        assert execute_restricted(con, "SELECT record_id FROM record_deletions").fetchall() == [("r1",)]
        assert execute_restricted(con, "SELECT text FROM raw_text").fetchall() == [("text of r2 in b2",)]
        assert count(con, "SELECT count(*) FROM raw_text_history") == 3
        assert execute_restricted(con, "SELECT name FROM cluster_summary").fetchall() == [("cats",)]
        assert execute_restricted(con, "SELECT label, n FROM mart_labels").fetchall() == [("cat", 1)]
    finally:
        con.close()
    lake = Lake(root)
    assert lake.partitions("raw_records") == ["b1", "b2", "b3"]
    assert lake.read_table("fused_vectors")["embedding"].to_list()[0] == pytest.approx([0.5, 0.25])
    assert legacy_tables(root) == [] and lake.verify(settle_s=0) == []
    # nothing lost: every old file is kept, byte-identical in content, under _legacy_parquet/
    for rel, df in before.items():
        kept = root / LEGACY_DIR / rel
        assert read_parquet(kept).equals(df), rel
    # once: a second start commits nothing
    versions = {t: lake.version(t) for t in ALL_TABLES}
    Lake(root).ensure_initialized()
    assert {t: lake.version(t) for t in ALL_TABLES} == versions


def test_a_migration_interrupted_midway_is_finished_on_the_next_start(tmp_path: Path) -> None:
    root = legacy_copy(tmp_path)
    # the crash: old dirs moved aside, one table's Delta commit never made
    (root / LEGACY_DIR).mkdir()
    shutil.move(str(root / "raw_text"), str(root / LEGACY_DIR / "raw_text"))
    lake = Lake(root)
    lake.ensure_initialized()
    assert lake.read_table("raw_text").height == 3
    assert lake.read_table("raw_records").height == 4
    assert (root / LEGACY_DIR / "raw_text" / ".migrated").read_text() == "3"


# -- MM_LAKE_URI -----------------------------------------------------------------------------------------


def test_lake_uri_settings_local_path_or_s3(tmp_path: Path, monkeypatch) -> None:
    from mm_platform.lib.storage.delta import storage_options
    from mm_platform.lib.settings import Paths

    env = {"MM_DATA_DIR": str(tmp_path / "d"), "MM_LAKE_URI": str(tmp_path / "elsewhere")}
    assert Paths.from_env(env).lake_dir == tmp_path / "elsewhere"  # a local URI is the lake dir
    env["MM_LAKE_URI"] = "s3://bucket/prefix"
    assert Paths.from_env(env).lake_dir == tmp_path / "d" / "lake"  # bookkeeping stays local
    opts = storage_options("s3://bucket/prefix", {"MM_S3_ENDPOINT": "http://127.0.0.1:9000",
                                                  "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    assert opts == {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ALLOW_HTTP": "true",
                    "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    assert storage_options(str(tmp_path)) is None
    monkeypatch.setenv("MM_LAKE_URI", "s3://bucket/prefix/")
    lake = Lake(tmp_path / "d" / "lake")
    assert lake.remote and lake.table_uri("raw_text") == "s3://bucket/prefix/raw_text"
    monkeypatch.setenv("MM_LAKE_URI", str(tmp_path / "x"))
    assert not Lake(tmp_path / "d" / "lake").remote  # a local MM_LAKE_URI is resolved by Paths, not here


# -- the per-process view database ---------------------------------------------------------------------


def test_view_cursors_read_each_tables_newest_commit_and_pick_up_new_tables(tmp_path: Path) -> None:
    """Cursors on the cached view database answer like a fresh ``register_views`` connection after every
    write: an overwrite of a partition, a new partition, and a new SQL-model table."""
    from mm_platform.lib.storage.views import register_views, view_cursor

    lake = Lake(tmp_path / "lake")
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 1, 3))
    first = view_cursor(lake)
    assert first.execute("SELECT count(*), max(line_number) FROM raw_text_history").fetchone() == (3, 1)
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 2, 5))  # a transactional replace
    lake.write_partition("raw_text", "b2", raw_text_df("b2", 3, 1))
    assert first.execute("SELECT count(*), max(line_number) FROM raw_text_history").fetchone() == (6, 3)
    lake.write_global("my_model", pl.DataFrame({"k": [1, 2]}))  # a SQL model's table appears
    second = view_cursor(lake)
    fresh = duckdb.connect()
    register_views(fresh, lake)
    try:
        for sql in ("SELECT count(*) FROM my_model", "SELECT count(*) FROM raw_text",
                    "SELECT count(*) FROM current_records"):
            assert second.execute(sql).fetchone() == fresh.execute(sql).fetchone()
        assert second.execute("SELECT sum(k) FROM my_model").fetchone() == (3,)
    finally:
        for c in (first, second, fresh):
            c.close()


def test_views_are_defined_as_they_are_first_needed_with_what_they_read(tmp_path: Path) -> None:
    """A cursor asked for some views gets them and every view they read, nothing else (a batch run's cache
    lookups bind 1 view each instead of 51); asking for more later adds those; answers equal a connection with
    every view; a path in a table's URI that looks like a view name is no dependency."""
    from mm_platform.lib.storage.views import register_views, view_cursor, view_dependencies, view_statements

    lake = Lake(tmp_path / "raw_text")  # the lake dir's own name is a view name: its paths must not count
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 1, 3))

    def defined(cur) -> set[str]:
        return {r[0] for r in cur.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}

    deps = view_dependencies(view_statements(lake))
    assert deps["raw_text_history"] == set() and deps["raw_text"] == {"raw_text_history", "current_records"}
    assert deps["record_versions"] == {"raw_records", "aligned_records_history"}
    one = view_cursor(lake, needs=["text_embeddings_history"])
    assert defined(one) == {"text_embeddings_history"}
    two = view_cursor(lake, needs=["raw_text", "no_such_view"])
    assert defined(two) == {"text_embeddings_history", "raw_text", "raw_text_history", "current_records",
                            "record_versions", "raw_records", "aligned_records_history"}
    fresh = duckdb.connect()
    register_views(fresh, lake)
    try:
        for sql in ("SELECT count(*) FROM raw_text_history", "SELECT count(*) FROM raw_text"):
            assert two.execute(sql).fetchone() == fresh.execute(sql).fetchone()
        everything = view_cursor(lake)
        assert defined(everything) == defined(fresh)
    finally:
        for c in (one, two, fresh):
            c.close()


def test_open_table_reuses_the_newest_snapshot_until_a_commit_lands(tmp_path: Path) -> None:
    """The per-thread snapshot cache never serves a stale version: a new commit, a transactional replace, and
    a table deleted and made again at the same path are all seen."""
    from mm_platform.lib.storage import delta as delta_store

    lake = Lake(tmp_path / "lake")
    uri = lake.table_uri("raw_text")
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 1, 3))
    first = delta_store.open_table(uri, None)
    assert delta_store.open_table(uri, None) is first  # nothing changed: the same snapshot
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 2, 4))
    second = delta_store.open_table(uri, None)
    assert second is not first and second.version() == first.version() + 1
    assert lake.read_table("raw_text")["line_number"].to_list() == [2] * 4
    pinned = delta_store.open_table(uri, None, version=first.version())
    assert pinned is not first and pinned.version() == first.version()
    assert delta_store.open_table(uri, None) is second

    def remake() -> None:  # in another thread (its own cache): delete the table, make it again up to version N
        shutil.rmtree(lake.table_dir("raw_text"))
        again = Lake(tmp_path / "lake")
        for v in range(second.version()):  # version 0 is the empty table
            again.write_partition("raw_text", "b9", raw_text_df("b9", 7, v + 1))

    worker = threading.Thread(target=remake)
    worker.start()
    worker.join()
    remade = delta_store.open_table(uri, None)
    assert remade.version() == second.version() and remade is not second  # same version number, new table
    assert lake.read_table("raw_text")["batch_id"].unique().to_list() == ["b9"]


def test_reads_come_back_in_file_order_without_a_pyarrow_dataset(tmp_path: Path) -> None:
    """``read_frame`` (every lake read) returns rows in the log's file order, as a pyarrow dataset does, even for
    multi-batch files (DataFusion's default parallel scan interleaves them: clustering input would change order
    run to run), filters a partition, and never imports ``pyarrow.dataset`` or pandas (0.2 s a process)."""
    import subprocess
    import sys

    import numpy as np
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from mm_platform.lib.storage import delta as delta_store

    uri = str(tmp_path / "t")
    for i in range(6):
        n = 20_000 if i % 2 == 0 else 300
        write_deltalake(uri, pa.table({"k": np.arange(n) + i * 100_000, "part": [f"p{i % 3}"] * n}),
                        mode="append", partition_by=["part"])
    table = DeltaTable(uri)
    want = pl.from_arrow(table.to_pyarrow_dataset().to_table())
    got = delta_store.read_frame(table)
    assert got.select(want.columns).equals(want)
    one = delta_store.read_frame(table, "part", "p1")
    assert one["part"].unique().to_list() == ["p1"] and one.height == 20_300
    assert delta_store.read_frame(table, "part", "no'such").height == 0
    assert dict(delta_store.schema_frame(table).schema) == dict(want.schema)
    code = ("import sys; from deltalake import DeltaTable; from mm_platform.lib.storage import delta as d; "
            f"t = DeltaTable({uri!r}); d.read_frame(t); d.read_frame(t, 'part', 'p0'); d.schema_frame(t); "
            "d.add_actions(t); print(sorted(m for m in ('pandas', 'pyarrow.dataset') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_tables_checkpoint_every_ten_commits_and_older_lakes_are_brought_up_to_it(tmp_path: Path) -> None:
    """Every ingest adds a commit to most tables and every open replays the log since the last checkpoint: the
    lake's tables checkpoint every 10 commits (Delta's default is 100). A table made without the property gets
    it once, at the next start, and nothing is committed again after that."""
    from deltalake import DeltaTable, write_deltalake

    from mm_platform.lib.storage import delta as delta_store

    lake = Lake(tmp_path / "lake")
    lake.ensure_initialized()
    for i in range(12):
        lake.write_partition("raw_text", f"b{i}", raw_text_df(f"b{i}", i, 3))
    table = DeltaTable(lake.table_uri("raw_text"))
    assert table.metadata().configuration == delta_store.TABLE_PROPERTIES
    log = Path(lake.table_uri("raw_text")) / "_delta_log"
    assert sorted(p.name for p in log.glob("*.checkpoint.parquet")) == ["00000000000000000009.checkpoint.parquet"]
    assert lake.read_table("raw_text").height == 36
    lake.write_global("my_model", pl.DataFrame({"x": [1]}))  # a SQL model's table, made by its first write
    assert DeltaTable(lake.table_uri("my_model")).metadata().configuration == delta_store.TABLE_PROPERTIES

    old = tmp_path / "old"
    write_deltalake(str(old / "raw_text"), raw_text_df("a", 1, 2).to_arrow(), mode="overwrite")
    assert DeltaTable(str(old / "raw_text")).metadata().configuration == {}
    Lake(old).ensure_initialized()
    upgraded = DeltaTable(str(old / "raw_text"))
    assert upgraded.metadata().configuration == delta_store.TABLE_PROPERTIES and upgraded.version() == 1
    Lake(old).ensure_initialized()
    assert DeltaTable(str(old / "raw_text")).version() == 1


def test_a_lake_this_process_may_only_read_still_opens(tmp_path: Path, monkeypatch) -> None:
    """Bringing an older table up to today's properties is an optimisation: where the commit is refused (a
    read-only mount or read-only S3 credentials), the lake opens and reads all the same."""
    from deltalake import DeltaTable, write_deltalake

    old = tmp_path / "old"
    write_deltalake(str(old / "raw_text"), raw_text_df("a", 1, 2).to_arrow(), mode="overwrite",
                    configuration={"delta.checkpointInterval": "100"})

    from deltalake.table import TableAlterer

    def refused(self, properties, raise_if_not_exists=True, commit_properties=None):
        raise OSError("Read-only file system (os error 30)")

    monkeypatch.setattr(TableAlterer, "set_table_properties", refused)
    lake = Lake(old)
    lake.ensure_initialized()
    assert lake.read_table("raw_text").height == 2
    assert DeltaTable(str(old / "raw_text")).metadata().configuration["delta.checkpointInterval"] == "100"
