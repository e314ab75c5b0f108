"""Tests for mm_platform.lib.storage.lake: the Parquet lake and the DuckDB warehouse of views over it.

Everything is real: temp dirs, Parquet files written by polars, DuckDB (in-memory and file), and a second
OS process holding the DuckDB file's write lock.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from mm_platform.lib.storage.delta import load_delta_extension
from mm_platform.lib.storage.lake import (
    ALL_TABLES,
    F32_LIST,
    GLOBAL_TABLES,
    PARTITIONED_TABLES,
    MODEL_TABLES_DIR,
    TS,
    Lake,
    WarehouseBusy,
    atomic_write_parquet,
    conform,
    connect_readonly,
    empty_frame,
    refresh_warehouse,
    register_views,
    view_statements,
)

UTC = dt.UTC


# -- helpers ---------------------------------------------------------------------------------------------


def raw_records_df(batch_id: str, n: int = 2, **overrides: object) -> pl.DataFrame:
    """A raw_records frame with loose input types (Int64, naive datetimes) that conform must fix."""
    data: dict[str, object] = {
        "batch_id": [batch_id] * n,
        "line_number": list(range(1, n + 1)),  # Int64 in, Int32 out
        "record_id": [f"{batch_id}-r{i}" for i in range(n)],
        "op": ["upsert"] * n,
        "timestamp": [dt.datetime(2024, 1, 1, 12, i) for i in range(n)],  # naive -> UTC
        "label": ["cat"] * n,
        "text_declared": [True] * n,
        "image_path": [None] * n,
        "audio_path": [None] * n, "entity_id": [None] * n,
        "fields_json": ["{}"] * n,
        "manifest_sha256": ["m" * 64] * n,
        "ingested_at": [dt.datetime(2024, 2, 1, tzinfo=UTC)] * n,
        "landed_at": [dt.datetime(2024, 1, 31, tzinfo=UTC)] * n,
    }
    data.update(overrides)
    return pl.DataFrame(data)


def text_embeddings_df(batch_id: str, n: int = 2, dim: int = 3) -> pl.DataFrame:
    return pl.DataFrame({
        "record_id": [f"{batch_id}-r{i}" for i in range(n)],
        "batch_id": [batch_id] * n,
        "model": ["tiny"] * n,
        "model_version": ["1"] * n,
        "space": ["text"] * n,
        "dim": [dim] * n,
        "content_sha256": [f"h{i}" for i in range(n)],
        "embedding": [[float(i + j) / 7 for j in range(dim)] for i in range(n)],  # List(Float64) in
        "cache_hit": [False] * n,
    })


def raw_text_df(batch_id: str, version: int, n_rows: int) -> pl.DataFrame:
    """A raw_text frame whose every row carries ``version`` (in line_number and text)."""
    return pl.DataFrame({
        "record_id": [f"r{i}" for i in range(n_rows)],
        "batch_id": [batch_id] * n_rows,
        "line_number": [version] * n_rows,
        "text": [f"v{version}"] * n_rows,
        "text_sha256": ["x"] * n_rows,
        "n_chars": [2] * n_rows,
    })


def rejections_df(batch_id: str, n: int, **extra: list[object]) -> pl.DataFrame:
    data: dict[str, object] = {
        "batch_id": [batch_id] * n,
        "line_number": list(range(1, n + 1)),
        "record_id": [f"r{i}" for i in range(n)],
        "modality": ["image"] * n,
        "reason": ["unreadable"] * n,
        "detail": ["boom"] * n,
        "rejected_at": [dt.datetime(2024, 3, 1, tzinfo=UTC)] * n,
    }
    data.update(extra)
    return pl.DataFrame(data)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def view_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}


class DuckDBHolder:
    """Another OS process that opens the DuckDB file (read-write by default) and keeps it open."""

    def __init__(self, path: Path, read_only: bool = False):
        code = (
            "import sys, duckdb\n"
            f"con = duckdb.connect(sys.argv[1], read_only={read_only!r})\n"
            "con.execute('SELECT 1').fetchall()\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n"  # hold the file until the parent closes our stdin
            "con.close()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.kill()
            raise RuntimeError(f"holder process failed to open {path}: {line!r} {err}")

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")


# -- conform ---------------------------------------------------------------------------------------------


def test_conform_casts_to_declared_types_and_orders_columns() -> None:
    df = raw_records_df("b1").select(list(reversed(raw_records_df("b1").columns)))  # scrambled order
    out = conform("raw_records", df)
    assert list(out.schema.items()) == list(PARTITIONED_TABLES["raw_records"].items())
    assert out["line_number"].dtype == pl.Int32
    assert out["timestamp"].dtype == TS
    # a naive timestamp is taken as UTC
    assert out["timestamp"][0] == dt.datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def test_conform_converts_other_timezones_to_the_same_instant_in_utc() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    df = raw_records_df("b1", n=1, timestamp=[dt.datetime(2024, 1, 1, 12, tzinfo=plus2)])
    out = conform("raw_records", df)
    assert out["timestamp"].dtype == TS
    assert out["timestamp"][0] == dt.datetime(2024, 1, 1, 10, tzinfo=UTC)


def test_conform_missing_columns_raise_key_error_naming_them() -> None:
    df = raw_records_df("b1").drop("label", "ingested_at")
    with pytest.raises(KeyError) as exc:
        conform("raw_records", df)
    msg = str(exc.value)
    assert "label" in msg and "ingested_at" in msg and "raw_records" in msg


def test_conform_keeps_extra_columns_after_the_declared_ones() -> None:
    df = text_embeddings_df("b1").with_columns(pl.lit("x").alias("zz_extra"), pl.lit(7).alias("aa_extra"))
    out = conform("text_embeddings", df)
    declared = list(PARTITIONED_TABLES["text_embeddings"])
    assert out.columns == [*declared, "zz_extra", "aa_extra"]
    assert out["embedding"].dtype == F32_LIST
    assert out["aa_extra"].to_list() == [7, 7]


def test_conform_unknown_table_is_passthrough() -> None:
    df = pl.DataFrame({"a": [1, 2]})
    assert conform("some_sql_model", df).equals(df)


def test_write_partition_with_missing_column_fails_and_writes_nothing(lake: Lake) -> None:
    with pytest.raises(KeyError):
        lake.write_partition("raw_text", "b1", pl.DataFrame({"record_id": ["r"]}))
    assert not lake.has_partition("raw_text", "b1")
    assert lake.partitions("raw_text") == []
    assert temp_files(lake.root) == []


# -- write / read round trips ----------------------------------------------------------------------------


def test_write_read_partition_round_trip_preserves_declared_types(lake: Lake) -> None:
    path = lake.write_partition("raw_records", "b1", raw_records_df("b1", n=3))
    assert path.parent == lake.root / "raw_records" / "_lake_batch=b1" and path.is_file()  # a Delta data file
    assert lake.has_partition("raw_records", "b1")
    back = lake.read_partition("raw_records", "b1")
    assert dict(back.schema) == PARTITIONED_TABLES["raw_records"]
    assert back["line_number"].to_list() == [1, 2, 3]
    assert back["timestamp"].to_list() == [dt.datetime(2024, 1, 1, 12, i, tzinfo=UTC) for i in range(3)]
    assert back["ingested_at"].to_list() == [dt.datetime(2024, 2, 1, tzinfo=UTC)] * 3
    assert back["image_path"].null_count() == 3


def test_embedding_round_trip_is_list_float32(lake: Lake) -> None:
    src = text_embeddings_df("b1", n=4, dim=5)
    lake.write_partition("text_embeddings", "b1", src)
    back = lake.read_partition("text_embeddings", "b1")
    assert back["embedding"].dtype == F32_LIST
    assert back["dim"].dtype == pl.Int32
    for got, want in zip(back["embedding"].to_list(), src["embedding"].to_list(), strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    import numpy as np

    arr = np.stack(back["embedding"].to_numpy())
    assert arr.dtype == np.float32 and arr.shape == (4, 5)


def test_read_table_concatenates_all_partitions_typed(lake: Lake) -> None:
    lake.write_partition("raw_records", "b2", raw_records_df("b2", n=2))
    lake.write_partition("raw_records", "b1", raw_records_df("b1", n=3))
    table = lake.read_table("raw_records")
    assert dict(table.schema) == PARTITIONED_TABLES["raw_records"]
    assert table.height == 5
    assert sorted(set(table["batch_id"].to_list())) == ["b1", "b2"]
    # the zero-row schema file is not a partition and contributes nothing
    assert lake.partitions("raw_records") == ["b1", "b2"]


def test_overwriting_a_partition_replaces_it(lake: Lake) -> None:
    lake.write_partition("raw_text", "b1", raw_text_df("b1", version=1, n_rows=5))
    lake.write_partition("raw_text", "b1", raw_text_df("b1", version=2, n_rows=2))
    back = lake.read_partition("raw_text", "b1")
    assert back.height == 2 and set(back["line_number"].to_list()) == {2}
    assert lake.read_table("raw_text").height == 2


def test_write_global_and_read_table(lake: Lake) -> None:
    df = pl.DataFrame({
        "record_id": ["a", "b"], "batch_id": ["b1", "b1"], "cluster_id": [0, 1], "algorithm": ["kmeans"] * 2,
        "distance_to_centroid": [0.1, 0.2], "is_outlier": [False, True], "run_id": ["run"] * 2,
        "clustered_at": [dt.datetime(2024, 5, 1, tzinfo=UTC)] * 2,
    })
    path = lake.write_global("recluster_assignments", df)
    assert path.parent == lake.root / "recluster_assignments" and path.is_file()
    back = lake.read_table("recluster_assignments")
    assert dict(back.schema) == GLOBAL_TABLES["recluster_assignments"]
    assert back["cluster_id"].to_list() == [0, 1]


def test_read_partition_of_missing_partition_is_empty_typed(lake: Lake) -> None:
    empty = lake.read_partition("image_embeddings", "nope")
    assert empty.height == 0
    assert dict(empty.schema) == PARTITIONED_TABLES["image_embeddings"]
    assert lake.read_partition("not_a_table", "nope").shape == (0, 0)


# -- empty lake ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", list(ALL_TABLES))
def test_every_table_reads_empty_and_typed_before_any_write(lake: Lake, table: str) -> None:
    # neither initialised nor written: still an empty, typed frame
    out = lake.read_table(table)
    assert out.height == 0
    assert dict(out.schema) == ALL_TABLES[table]
    assert dict(empty_frame(table).schema) == ALL_TABLES[table]


def test_ensure_initialized_creates_empty_typed_delta_tables(lake: Lake) -> None:
    lake.ensure_initialized()
    for table, schema in ALL_TABLES.items():
        assert (lake.root / table / "_delta_log").is_dir(), table
        assert lake.version(table) == 0  # one commit: the schema, no data file
        df = lake.read_table(table)
        assert df.height == 0 and dict(df.schema) == schema
        assert lake.partitions(table) == []
    # idempotent, also from another Lake object (another process): nothing is committed again
    Lake(lake.root).ensure_initialized()
    assert {lake.version(t) for t in ALL_TABLES} == {0}
    assert temp_files(lake.root) == []


def test_ensure_initialized_does_not_clobber_global_data(lake: Lake) -> None:
    df = pl.DataFrame({
        "cluster_id": [3], "name": ["c3"], "size": [10], "representative_record_ids": [["a", "b"]],
        "top_terms": [["x"]], "label_counts_json": ["{}"], "text_coverage": [1.0], "image_coverage": [0.5],
        "audio_coverage": [0.0], "tabular_coverage": [1.0], "algorithm": ["hdbscan"], "run_id": ["r"],
        "name_source": ["top_terms"], "agreement_json": ["{}"], "n_outliers": [0],
    })
    lake.write_global("cluster_summary", df)
    lake.ensure_initialized()
    back = lake.read_table("cluster_summary")
    assert back.height == 1
    assert back["representative_record_ids"].to_list() == [["a", "b"]]
    assert back["size"].dtype == pl.Int32


def test_register_views_on_empty_lake_in_memory(lake: Lake) -> None:
    con = duckdb.connect()
    register_views(con, lake)
    names = {name for name, _ in view_statements(lake)}
    assert view_names(con) == names
    assert {"raw_records", "current_clusters", "current_records", "record_deletions", "text_embeddings_history"} <= names
    for table in names:
        assert con.execute(f'SELECT count(*) FROM "{table}"').fetchone() == (0,)
    types = {r[0]: r[1] for r in con.execute("DESCRIBE raw_records").fetchall()}
    assert list(types) == list(PARTITIONED_TABLES["raw_records"])
    assert types["line_number"] == "INTEGER"
    assert types["timestamp"] == "TIMESTAMP WITH TIME ZONE"
    emb = {r[0]: r[1] for r in con.execute("DESCRIBE text_embeddings").fetchall()}
    assert emb["embedding"] == "FLOAT[]"
    con.close()


def test_register_views_see_partitions_and_extra_views(lake: Lake) -> None:
    lake.write_partition("raw_records", "b1", raw_records_df("b1", n=3))
    lake.write_partition("raw_records", "b2", raw_records_df("b2", n=1))
    con = duckdb.connect()
    register_views(con, lake, extra={"per_batch": "SELECT batch_id, count(*) AS n FROM raw_records GROUP BY 1"})
    assert con.execute("SELECT count(*) FROM raw_records").fetchone() == (4,)
    assert con.execute("SELECT batch_id, n FROM per_batch ORDER BY 1").fetchall() == [("b1", 3), ("b2", 1)]
    ts = con.execute("SELECT min(timestamp) FROM raw_records").fetchone()[0]
    assert ts.astimezone(UTC) == dt.datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    con.close()


def test_view_sql_escapes_quotes_in_paths(tmp_path: Path) -> None:
    weird = Lake(tmp_path / "it's a lake")
    weird.write_partition("raw_text", "b1", raw_text_df("b1", version=1, n_rows=2))
    assert "it''s a lake" in dict(view_statements(weird))["raw_text_history"]
    con = duckdb.connect()
    register_views(con, weird)
    assert con.execute("SELECT count(*) FROM raw_text_history").fetchone() == (2,)
    con.close()


# -- partitions / deletes / model tables -----------------------------------------------------------------


def test_partitions_ignore_schema_dir_and_incomplete_dirs(lake: Lake) -> None:
    lake.write_partition("raw_text", "b2", raw_text_df("b2", 1, 1))
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 1, 1))
    (lake.table_dir("raw_text") / "batch_id=incomplete").mkdir()  # no file in the Delta log
    (lake.table_dir("raw_text") / "batch_id=stray").mkdir()
    atomic_write_parquet(raw_text_df("stray", 1, 1), lake.table_dir("raw_text") / "batch_id=stray" / "part.parquet")
    assert lake.partitions("raw_text") == ["b1", "b2"]  # a file no commit added is not part of the table
    assert lake.read_table("raw_text").height == 2
    assert lake.partitions("never_written") == []


def test_delete_partition(lake: Lake) -> None:
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 1, 3))
    lake.write_partition("raw_text", "b2", raw_text_df("b2", 1, 2))
    lake.delete_partition("raw_text", "b1")
    assert not lake.has_partition("raw_text", "b1")
    assert not lake.partition_path("raw_text", "b1").exists()
    assert lake.partitions("raw_text") == ["b2"]
    assert lake.read_partition("raw_text", "b1").height == 0
    assert lake.read_table("raw_text").height == 2
    lake.delete_partition("raw_text", "b1")  # deleting again is fine
    lake.delete_partition("raw_text", "never")
    con = duckdb.connect()
    register_views(con, lake)
    assert con.execute("SELECT count(*) FROM raw_text_history").fetchone() == (2,)
    con.close()


def test_model_tables_are_global_tables_no_asset_owns(lake: Lake) -> None:
    assert lake.model_tables() == []  # root does not even exist yet
    lake.ensure_initialized()
    lake.write_stage_rejections("media", "b1", rejections_df("b1", 1))
    assert lake.model_tables() == []  # _rejections and owned tables are not models
    lake.write_global("mart_b", pl.DataFrame({"x": [1]}))
    lake.write_global("mart_a", pl.DataFrame({"x": [1]}))
    (lake.root / "mart_empty_dir").mkdir()
    assert lake.model_tables() == ["mart_a", "mart_b"]
    lake.write_global("mart_a", pl.DataFrame({"y": ["other schema"]}))  # a model's columns may change
    assert lake.read_table("mart_a").to_dict(as_series=False) == {"y": ["other schema"]}


# -- stage rejections ------------------------------------------------------------------------------------


def test_stage_rejections_across_two_stages(lake: Lake) -> None:
    lake.write_stage_rejections("parse", "b1", rejections_df("b1", 2))
    lake.write_stage_rejections("media", "b1", rejections_df("b1", 3))
    lake.write_stage_rejections("media", "b2", rejections_df("b2", 1))
    got = lake.read_stage_rejections("b1")
    assert dict(got.schema) == PARTITIONED_TABLES["rejected_records"]
    assert got.height == 5
    assert sorted(got["stage"].to_list()) == ["media"] * 3 + ["parse"] * 2
    assert set(got["batch_id"].to_list()) == {"b1"}
    only_b2 = lake.read_stage_rejections("b2")
    assert only_b2.height == 1 and only_b2["stage"].to_list() == ["media"]
    # rewriting a stage for a batch replaces that stage's rows only
    lake.write_stage_rejections("media", "b1", rejections_df("b1", 1))
    assert sorted(lake.read_stage_rejections("b1")["stage"].to_list()) == ["media", "parse", "parse"]
    # stage files are not partitions of rejected_records
    assert lake.partitions("rejected_records") == []


def test_stage_rejections_keep_an_explicit_stage_column(lake: Lake) -> None:
    lake.write_stage_rejections("media", "b1", rejections_df("b1", 2, stage=["custom", "custom"]))
    assert lake.read_stage_rejections("b1")["stage"].to_list() == ["custom", "custom"]


def test_read_stage_rejections_without_any_is_empty_typed(lake: Lake) -> None:
    out = lake.read_stage_rejections("b1")
    assert out.height == 0 and dict(out.schema) == PARTITIONED_TABLES["rejected_records"]
    lake.write_stage_rejections("parse", "b2", rejections_df("b2", 1))
    assert lake.read_stage_rejections("b1").height == 0


# -- atomic writes ---------------------------------------------------------------------------------------


def test_atomic_writes_leave_no_temp_files(lake: Lake) -> None:
    for i in range(5):
        lake.write_partition("raw_text", "b1", raw_text_df("b1", i, 3))
        lake.write_global("cluster_metrics", pl.DataFrame(schema=GLOBAL_TABLES["cluster_metrics"]))
        lake.write_stage_rejections("parse", "b1", rejections_df("b1", 1))
    assert temp_files(lake.root) == []
    assert len(lake._files_of("raw_text", "b1")) == 1  # each overwrite replaced the partition's one file
    assert lake.read_table("raw_text").height == 3


def test_failed_write_keeps_previous_version_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "t" / "part.parquet"
    atomic_write_parquet(pl.DataFrame({"a": [1, 2, 3]}), target)
    unwritable = pl.DataFrame({"a": [object()]}, schema={"a": pl.Object})
    with pytest.raises(Exception):  # noqa: B017 - polars raises its own error type for Object columns
        atomic_write_parquet(unwritable, target)
    assert pl.read_parquet(target)["a"].to_list() == [1, 2, 3]
    assert list(target.parent.iterdir()) == [target]


ROWS_OF_VERSION = {v: 500 + 97 * v for v in range(400)}  # each version has its own row count


def check_version(df: pl.DataFrame) -> int:
    """Assert ``df`` is exactly one complete version of the partition written by ``overwrite_while``."""
    vs = set(df["line_number"].to_list())
    assert len(vs) == 1, f"mixed versions in one read: {sorted(vs)[:5]}"
    (v,) = vs
    assert df.height == ROWS_OF_VERSION[v], f"version {v} read with {df.height} rows, wrote {ROWS_OF_VERSION[v]}"
    assert set(df["text"].to_list()) == {f"v{v}"}
    return v


def overwrite_while(lake: Lake, read_once: object, versions: int) -> tuple[int, set[int]]:
    """Overwrite raw_text/b1 ``versions - 1`` times in a thread while calling ``read_once()`` in a loop.

    Stops at the first failing read (which is re-raised) or once the writer is done; returns the number of
    reads and the versions seen."""
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 0, ROWS_OF_VERSION[0]))
    stop = threading.Event()
    done = threading.Event()
    errors: list[Exception] = []

    def writer() -> None:
        try:
            for v in range(1, versions):
                if stop.is_set():
                    return
                lake.write_partition("raw_text", "b1", raw_text_df("b1", v, ROWS_OF_VERSION[v]))
        except Exception as exc:  # noqa: BLE001 - handed to the main thread, asserted below
            errors.append(exc)
        finally:
            done.set()

    seen: set[int] = set()
    reads = 0
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        while not done.is_set() or reads < 5:
            seen.add(read_once())  # type: ignore[operator]
            reads += 1
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert temp_files(lake.root) == []
    return reads, seen


def test_a_reader_pinned_to_a_version_keeps_reading_it_while_writes_land(lake: Lake) -> None:
    """Snapshot isolation: data files are immutable, so a version once resolved reads the same forever
    (until vacuum, after its retention period)."""
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 0, ROWS_OF_VERSION[0]))
    pinned = lake.version("raw_text")
    assert pinned is not None

    def read_pinned() -> int:
        return check_version(lake.read_table("raw_text", version=pinned))

    reads, seen = overwrite_while(lake, read_pinned, versions=40)
    assert reads >= 5 and seen == {0}
    assert check_version(lake.read_partition("raw_text", "b1")) == 39


def test_read_partition_never_mixes_versions_during_overwrite(lake: Lake) -> None:
    def read_once() -> int:
        return check_version(lake.read_partition("raw_text", "b1"))

    overwrite_while(lake, read_once, versions=150)


def test_duckdb_view_never_mixes_versions_during_overwrite(lake: Lake) -> None:
    con = duckdb.connect()
    register_views(con, lake)

    def read_once() -> int:
        lo, hi, n = con.execute(
            "SELECT min(line_number), max(line_number), count(*) FROM raw_text_history WHERE batch_id = 'b1'"
        ).fetchone()
        assert lo == hi, (lo, hi)
        assert n == ROWS_OF_VERSION[lo], f"version {lo} read with {n} rows, wrote {ROWS_OF_VERSION[lo]}"
        return lo

    try:
        overwrite_while(lake, read_once, versions=150)
    finally:
        con.close()


# -- the warehouse file ----------------------------------------------------------------------------------


def test_refresh_warehouse_only_writes_when_views_change(lake: Lake, tmp_path: Path) -> None:
    db = tmp_path / "wh" / "warehouse.duckdb"
    db.parent.mkdir()
    assert refresh_warehouse(lake, db) is True
    assert db.is_file()
    assert refresh_warehouse(lake, db) is False
    # new partitions of existing tables need no refresh: the views are globs
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 1, 4))
    assert refresh_warehouse(lake, db) is False
    con = duckdb.connect(str(db), read_only=True)
    load_delta_extension(con)  # what a plain duckdb session does first (docs/operations.md)
    try:
        assert view_names(con) == {name for name, _ in view_statements(lake)}
        assert con.execute("SELECT count(*) FROM raw_text_history").fetchone() == (4,)
    finally:
        con.close()
    # a SQL model's table appears: a new view is needed
    lake.write_global("mart_x", pl.DataFrame({"k": ["a", "b"], "n": [1, 2]}))
    assert refresh_warehouse(lake, db) is True
    assert refresh_warehouse(lake, db) is False
    con = duckdb.connect(str(db), read_only=True)
    load_delta_extension(con)  # what a plain duckdb session does first (docs/operations.md)
    try:
        assert "mart_x" in view_names(con)
        assert con.execute("SELECT sum(n) FROM mart_x").fetchone() == (3,)
    finally:
        con.close()
    # the model table goes away: its stale view is dropped
    (lake.root / MODEL_TABLES_DIR / "mart_x").unlink()
    assert refresh_warehouse(lake, db) is True
    con = duckdb.connect(str(db), read_only=True)
    load_delta_extension(con)  # what a plain duckdb session does first (docs/operations.md)
    try:
        assert "mart_x" not in view_names(con)
    finally:
        con.close()
    # the warehouse file is lost: recreated even though the stamp still matches
    db.unlink()
    assert refresh_warehouse(lake, db) is True
    assert db.is_file()


def test_connect_readonly_without_contention_is_the_readonly_file(lake: Lake, tmp_path: Path) -> None:
    db = tmp_path / "warehouse.duckdb"
    con = connect_readonly(lake, db)
    try:
        assert con.execute("SELECT count(*) FROM raw_records").fetchone() == (0,)
        assert con.execute("SELECT current_database()").fetchone() == ("warehouse",)
        with pytest.raises(duckdb.Error):
            con.execute("CREATE TABLE t (a INT)")  # read-only
    finally:
        con.close()


def test_readonly_user_sees_new_partitions_on_the_next_query(lake: Lake, tmp_path: Path) -> None:
    db = tmp_path / "warehouse.duckdb"
    lake.write_partition("raw_records", "b1", raw_records_df("b1", n=2))
    user = connect_readonly(lake, db)
    try:
        assert user.execute("SELECT count(*) FROM raw_records").fetchone() == (2,)
        lake.write_partition("raw_records", "b2", raw_records_df("b2", n=3))  # written while user is connected
        assert user.execute("SELECT count(*) FROM raw_records").fetchone() == (5,)
        lake.write_partition("raw_records", "b1", raw_records_df("b1", n=1))  # overwrite
        assert user.execute("SELECT count(*) FROM raw_records").fetchone() == (4,)
        lake.delete_partition("raw_records", "b2")
        assert user.execute("SELECT count(*) FROM raw_records").fetchone() == (1,)
    finally:
        user.close()


def test_refresh_with_unchanged_views_does_not_contend_with_a_readonly_user(lake: Lake, tmp_path: Path) -> None:
    db = tmp_path / "warehouse.duckdb"
    assert refresh_warehouse(lake, db) is True
    holder = DuckDBHolder(db, read_only=True)
    try:
        t0 = time.monotonic()
        assert refresh_warehouse(lake, db, timeout_s=1) is False
        lake.write_partition("raw_text", "b1", raw_text_df("b1", 1, 2))
        assert refresh_warehouse(lake, db, timeout_s=1) is False
        con = connect_readonly(lake, db)  # read-only alongside another read-only process
        try:
            assert con.execute("SELECT count(*) FROM raw_text_history").fetchone() == (2,)
        finally:
            con.close()
        assert time.monotonic() - t0 < 3
    finally:
        holder.release()


def test_warehouse_held_read_write_by_another_process(lake: Lake, tmp_path: Path) -> None:
    """A user's read-write session in another process: refreshing raises WarehouseBusy after its timeout,
    and connect_readonly still answers queries through in-memory views (including new tables)."""
    db = tmp_path / "warehouse.duckdb"
    lake.write_partition("raw_text", "b1", raw_text_df("b1", 1, 3))
    assert refresh_warehouse(lake, db) is True
    holder = DuckDBHolder(db)
    try:
        # views up to date: connect_readonly falls back to in-memory views at once
        t0 = time.monotonic()
        con = connect_readonly(lake, db)
        assert time.monotonic() - t0 < 3
        try:
            assert con.execute("SELECT count(*) FROM raw_text_history").fetchone() == (3,)
            assert view_names(con) >= set(ALL_TABLES)
        finally:
            con.close()

        # a new SQL-model table needs a view: the file cannot be written
        lake.write_global("mart_y", pl.DataFrame({"n": [1, 2, 3, 4]}))
        t0 = time.monotonic()
        with pytest.raises(WarehouseBusy, match="locked by another process"):
            refresh_warehouse(lake, db, timeout_s=1)
        assert 0.9 <= time.monotonic() - t0 < 5

        con = connect_readonly(lake, db)  # retries for a while, then in-memory views
        try:
            assert con.execute("SELECT count(*) FROM mart_y").fetchone() == (4,)
            assert con.execute("SELECT count(*) FROM raw_text_history").fetchone() == (3,)
            lake.write_partition("raw_text", "b2", raw_text_df("b2", 1, 2))
            assert con.execute("SELECT count(*) FROM raw_text_history").fetchone() == (5,)
        finally:
            con.close()
    finally:
        holder.release()
    # once the user is gone, the pending view is written
    assert refresh_warehouse(lake, db, timeout_s=5) is True
    con = duckdb.connect(str(db), read_only=True)
    load_delta_extension(con)  # what a plain duckdb session does first (docs/operations.md)
    try:
        assert con.execute("SELECT count(*) FROM mart_y").fetchone() == (4,)
    finally:
        con.close()
