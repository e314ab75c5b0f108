"""Delta Lake plumbing for the lake: where a table lives (local path or ``s3://``), atomic writes with retry,
snapshots at a version or a time, housekeeping, and the DuckDB ``delta`` extension.

Every lake table is one Delta table (``deltalake``): each write is one commit to ``_delta_log/``, data files
are immutable and uniquely named, so a reader that resolved a snapshot reads exactly that version however
many writes land meanwhile. Files a newer version no longer references are removed only by ``vacuum`` after
a retention period, never by a write.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import threading
import time
from collections.abc import Mapping

import duckdb
import polars as pl
import pyarrow as pa
from arro3.core import Table as ArrowTable
from deltalake import DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

#: Commits retried when another writer won the race for the same version (disjoint partitions).
COMMIT_RETRIES = 8

#: Properties of every lake table. Each ingest adds a commit to most tables, and opening a table (a write,
#: a read, a DuckDB view binding) replays its log since the last checkpoint: with Delta's default of a
#: checkpoint every 100 commits, at 98 commits an open took 18.7 ms and a write 18 ms; checkpointing every 10
#: commits, 5.1 ms and 7.8 ms (a small ingest opens tables a few hundred times).
TABLE_PROPERTIES = {"delta.checkpointInterval": "10"}


def is_remote(uri: str) -> bool:
    """True for an object-store URI (``s3://…``); local paths (and ``file://``) are not remote."""
    return "://" in uri and not uri.startswith("file://")


def storage_options(uri: str, env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """``deltalake`` storage options for ``uri``: for ``s3://`` the usual ``AWS_*`` variables plus
    ``MM_S3_ENDPOINT`` (any S3-compatible store); ``None`` for local paths."""
    if not uri.startswith(("s3://", "s3a://")):
        return None
    env = os.environ if env is None else env
    opts = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
            if env.get(k, "").strip()}
    region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip() or "us-east-1"
    opts["AWS_REGION"] = region
    endpoint = env.get("MM_S3_ENDPOINT", "").strip() or env.get("AWS_ENDPOINT_URL", "").strip()
    if endpoint:
        opts["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    # one ingest per data dir (the ingest lock) and per-partition commits: plain S3 renames are safe enough
    # here without a DynamoDB lock; set AWS_S3_LOCKING_PROVIDER (and its table) to share a lake between hosts
    if not env.get("AWS_S3_LOCKING_PROVIDER", "").strip():
        opts["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
    else:
        opts["AWS_S3_LOCKING_PROVIDER"] = env["AWS_S3_LOCKING_PROVIDER"]
    return opts


#: per thread (``.tables``: {(process, local table uri): (what ``newest_commit`` saw, snapshot)}): the newest
#: snapshot opened. Per thread, because a deltalake table object is not meant to be shared between threads.
_SNAPSHOTS = threading.local()


def newest_commit(uri: str) -> tuple[int, int, int] | None:
    """(newest commit version, inode and mtime of commit 0) of a local table, from one directory listing; None
    when it cannot be told that cheaply (no such table, or commit 0 cleaned up after a checkpoint). Commit 0
    tells a table apart from one deleted and made again at the same path."""
    log = os.path.join(uri.removeprefix("file://"), "_delta_log")
    newest = -1
    try:
        with os.scandir(log) as entries:
            for entry in entries:
                stem, dot, ext = entry.name.partition(".")
                if ext == "json" and stem.isdigit():
                    newest = max(newest, int(stem))
        first = os.stat(os.path.join(log, f"{0:020d}.json"))
    except OSError:
        return None
    return (newest, first.st_ino, first.st_mtime_ns) if newest >= 0 else None


def open_table(uri: str, opts: dict[str, str] | None, version: int | None = None) -> DeltaTable | None:
    """The Delta table at ``uri`` (at ``version``), or None when there is none. Read it; never change it
    (``open_for_write`` gives a table to commit through).

    A local table's newest snapshot is opened once per version and thread: a later call that finds no newer
    commit in the log gets the same (never updated, so unchanging) snapshot back. Opening reads the whole log
    since the last checkpoint (2-4 ms) and one ingest opens tables about 400 times; listing the log, ~50 µs.
    """
    seen = newest_commit(uri) if version is None and not is_remote(uri) else None
    key = (os.getpid(), uri)
    cache = getattr(_SNAPSHOTS, "tables", None)
    if cache is None:
        cache = _SNAPSHOTS.tables = {}
    if seen is not None and (cached := cache.get(key)) is not None and cached[0] == seen:
        return cached[1]
    table = open_for_write(uri, opts, version)
    if table is not None and seen is not None and table.version() == seen[0]:  # no commit in between
        cache[key] = (seen, table)
    return table


def open_for_write(uri: str, opts: dict[str, str] | None, version: int | None = None) -> DeltaTable | None:
    """A table object of its own (``delete``, ``optimize`` and ``vacuum`` change the object they run on)."""
    try:
        return DeltaTable(uri, version=version, storage_options=opts)
    except TableNotFoundError:
        return None


def write_arrow(uri: str, data: pa.Table, opts: dict[str, str] | None, *, predicate: str | None = None,
                partition_by: list[str] | None = None, schema_mode: str = "merge") -> None:
    """One atomic commit replacing the rows that match ``predicate`` (all rows when None) with ``data``.

    A commit that lost a race to another writer (a different partition of the same table) is retried.
    """
    for attempt in range(COMMIT_RETRIES):
        try:
            write_deltalake(uri, data, mode="overwrite", predicate=predicate, partition_by=partition_by,
                            schema_mode=schema_mode, storage_options=opts,
                            configuration=TABLE_PROPERTIES)  # used when this creates the table
            return
        except CommitFailedError:
            if attempt == COMMIT_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def delete_where(uri: str, opts: dict[str, str] | None, predicate: str) -> None:
    """One commit removing the rows matching ``predicate`` (a partition predicate: metadata only, the
    files are not even read, so a damaged file can be dropped)."""
    for attempt in range(COMMIT_RETRIES):
        table = open_for_write(uri, opts)
        if table is None:
            return
        try:
            table.delete(predicate)
            return
        except CommitFailedError:
            if attempt == COMMIT_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def read_frame(table: DeltaTable, column: str | None = None, value: str | None = None) -> pl.DataFrame:
    """The snapshot's rows (those whose ``column`` equals ``value`` when given: a partition column prunes
    whole files) in file order, read by the engine built into ``deltalake`` (DataFusion, one partition so the
    order is the log's, as a pyarrow dataset reads it). No pyarrow dataset: importing one imports pandas
    (0.2 s of every process that reads the lake)."""
    where = ""
    if column is not None:
        quoted = str(value).replace("'", "''")
        where = f' WHERE "{column.replace(chr(34), chr(34) * 2)}" = \'{quoted}\''
    query = QueryBuilder({"datafusion.execution.target_partitions": "1"}).register("snapshot", table)
    return pl.DataFrame(query.execute(f"SELECT * FROM snapshot{where}"))


def schema_frame(table: DeltaTable) -> pl.DataFrame:
    """An empty frame with the snapshot's columns and types (the schema a pyarrow dataset of it would have)."""
    return pl.DataFrame(ArrowTable.from_batches([], schema=table.schema().to_arrow()))


def add_actions(table: DeltaTable) -> list[dict]:
    """The snapshot's data files: ``path`` (relative to the table), ``size_bytes``, partition values."""
    return pl.DataFrame(table.get_add_actions(flatten=True)).to_dicts()


def version_at(uri: str, opts: dict[str, str] | None, when: dt.datetime) -> int | None:
    """The table's newest version committed at or before ``when``; None when the table did not exist yet."""
    table = open_table(uri, opts)
    if table is None:
        return None
    stamp_ms = when.timestamp() * 1000
    best = None
    for h in table.history():
        if h.get("timestamp", 0) <= stamp_ms and (best is None or h["version"] > best):
            best = h["version"]
    return best


def ensure_properties(table: DeltaTable, uri: str, opts: dict[str, str] | None) -> bool:
    """Give a table (``table``: a snapshot of it, to read its properties) made before :data:`TABLE_PROPERTIES`
    existed those properties: one metadata commit, once. True when it committed. Best effort: a lost race with
    another writer, or a lake this process may only read (read-only mount or credentials), leaves the table as
    it is, to be tried again at the next start; it only reads a longer log meanwhile."""
    config = table.metadata().configuration
    if all(config.get(k) == v for k, v in TABLE_PROPERTIES.items()):
        return False
    try:
        writable = open_for_write(uri, opts)
        if writable is None:
            return False
        writable.alter.set_table_properties(TABLE_PROPERTIES)
    except Exception:  # noqa: BLE001 - an optimisation; never a reason for a reader to fail
        return False
    return True


def compact_and_vacuum(uri: str, opts: dict[str, str] | None, retention_hours: float) -> dict[str, int]:
    """Merge small files (one commit; readers keep their snapshot) and delete files no version younger than
    ``retention_hours`` references. Returns counts for the asset's metadata."""
    table = open_for_write(uri, opts)
    if table is None:
        return {"files_added": 0, "files_removed": 0, "files_vacuumed": 0}
    metrics = table.optimize.compact()
    table = open_for_write(uri, opts)
    assert table is not None
    removed = table.vacuum(retention_hours=int(retention_hours), enforce_retention_duration=False, dry_run=False)
    return {"files_added": int(metrics.get("numFilesAdded", 0)),
            "files_removed": int(metrics.get("numFilesRemoved", 0)), "files_vacuumed": len(removed)}


def delta_extension_path() -> str:
    """The DuckDB ``delta`` extension shipped by the ``duckdb-extension-delta`` package (no download)."""
    import duckdb_extension_delta

    base = os.path.dirname(duckdb_extension_delta.__file__)
    found = glob.glob(os.path.join(base, "extensions", f"v{duckdb.__version__}", "delta.duckdb_extension"))
    if not found:
        raise RuntimeError(f"no DuckDB delta extension for duckdb {duckdb.__version__} under {base}")
    return found[0]


def load_delta_extension(con: duckdb.DuckDBPyConnection) -> None:
    """``LOAD`` the local delta extension on ``con`` (before any view over ``delta_scan`` is created or run)."""
    con.execute(f"LOAD '{delta_extension_path()}'")


def install_delta_extension(con: duckdb.DuckDBPyConnection) -> None:
    """``INSTALL`` the shipped extension file into DuckDB's extension directory (offline: a file copy), so
    a plain ``duckdb`` session on the warehouse file autoloads it when a view calls ``delta_scan``."""
    installed = con.execute("SELECT installed FROM duckdb_extensions() WHERE extension_name = 'delta'").fetchone()
    if not (installed and installed[0]):
        con.execute(f"INSTALL '{delta_extension_path()}'")
