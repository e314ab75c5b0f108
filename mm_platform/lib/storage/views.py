"""The DuckDB warehouse: one view per lake table over ``delta_scan`` (or a pinned version for ``--as-of``), the
derived views, and the read-only connection users and the explorer query."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from mm_platform.lib.storage import delta as delta_store
from mm_platform.lib.storage.sqlquote import sql_identifier, sql_literal
from mm_platform.lib.storage.tables import (
    ALL_TABLES,
    PART,
    PARTITIONED_TABLES,
    RECORD_TABLES,
    _file_lock,
)

if TYPE_CHECKING:
    from mm_platform.lib.storage.lake import Lake


def _columns_first(table: str) -> str:
    """The table's declared columns in order, then any extra ones (Delta keeps partition columns last)."""
    schema = ALL_TABLES.get(table)
    if not schema:
        return "*"
    cols = ", ".join(sql_identifier(c) for c in schema)
    hidden = f", {PART}" if table in PARTITIONED_TABLES else ""
    return f"{cols}, * EXCLUDE ({cols}{hidden})"


def arrow_view_name(table: str) -> str:
    """The name a table's Arrow dataset is registered under on a connection to an object-store lake."""
    return f"__lake_{table}"


def register_table_view(con: duckdb.DuckDBPyConnection, lake: Lake, table: str) -> None:
    """(Re)create the view of one lake table (a SQL model just written) on a ``register_views`` connection."""
    if lake.remote:
        t = lake._table(table)
        if t is not None:
            con.register(arrow_view_name(table), t.to_pyarrow_dataset())
    con.execute(_create_view(table, _scan(lake, table)))


def _scan(lake: Lake, table: str, versions: Mapping[str, int] | None = None) -> str:
    """The SELECT of one table: ``delta_scan`` of its current (or pinned) version; for an object-store lake,
    the Arrow dataset ``register_views`` registered (DuckDB reads S3 only with httpfs, not shipped offline)."""
    if lake.remote:
        return f"SELECT {_columns_first(table)} FROM {sql_identifier(arrow_view_name(table))}"
    args = sql_literal(lake.table_uri(table))
    if versions is not None and table in versions:
        args += f", version => {int(versions[table])}"
    return f"SELECT {_columns_first(table)} FROM delta_scan({args})"


#: Views derived from the lake tables: record versions (latest landed batch wins), the current records,
#: the audit of deletes, and the current cluster of each current record (the latest of the full
#: re-cluster and the eager per-batch assignment).
DERIVED_VIEWS: dict[str, str] = {
    "record_versions": """
        SELECT record_id, batch_id, line_number, op, landed_at, label,
               row_number() OVER w = 1 AS is_current,
               lead(batch_id) OVER w AS previous_batch_id
        FROM raw_records r
        WHERE op = 'delete' OR EXISTS (
            SELECT 1 FROM aligned_records_history a WHERE a.record_id = r.record_id AND a.batch_id = r.batch_id)
        WINDOW w AS (PARTITION BY record_id ORDER BY landed_at DESC, batch_id DESC)""",
    "current_records": """
        SELECT record_id, batch_id, landed_at, label FROM record_versions WHERE is_current AND op = 'upsert'""",
    "record_deletions": """
        SELECT record_id, batch_id, line_number, landed_at, is_current AS in_effect,
               previous_batch_id AS deleted_version_batch_id
        FROM record_versions WHERE op = 'delete'""",
    "current_clusters": """
        SELECT c.* FROM (
            SELECT *, 'recluster' AS source FROM recluster_assignments
            UNION ALL BY NAME
            SELECT *, 'incremental' AS source FROM cluster_assignments
        ) c
        SEMI JOIN current_records r ON c.record_id = r.record_id AND c.batch_id = r.batch_id
        QUALIFY row_number() OVER (PARTITION BY c.record_id ORDER BY c.clustered_at DESC, c.source) = 1""",
}

#: Which lake tables each derived name reads (SQL models depending on a view depend on these assets).
VIEW_SOURCES: dict[str, tuple[str, ...]] = {
    "record_versions": ("raw_records", "aligned_records"),
    "current_records": ("raw_records", "aligned_records"),
    "record_deletions": ("raw_records", "aligned_records"),
    "current_clusters": ("recluster_assignments", "cluster_assignments", "raw_records", "aligned_records"),
    **{f"{t}_history": (t,) for t in RECORD_TABLES},
    **{t: (t, "raw_records", "aligned_records") for t in RECORD_TABLES},
}


def view_statements(lake: Lake, versions: Mapping[str, int] | None = None) -> list[tuple[str, str]]:
    """Every warehouse view as (name, SELECT), in dependency order (tables pinned to ``versions`` if given)."""
    views: list[tuple[str, str]] = []
    for table in [*ALL_TABLES, *lake.model_tables()]:
        if table in RECORD_TABLES:
            views.append((f"{table}_history", _scan(lake, table, versions)))
        else:
            views.append((table, _scan(lake, table, versions)))
    views += [(name, DERIVED_VIEWS[name]) for name in ("record_versions", "current_records", "record_deletions")]
    views += [
        (t, f"SELECT h.* FROM {sql_identifier(t + '_history')} h SEMI JOIN current_records c "
            "ON h.record_id = c.record_id AND h.batch_id = c.batch_id")
        for t in RECORD_TABLES
    ]
    views.append(("current_clusters", DERIVED_VIEWS["current_clusters"]))
    return views


def _create_view(name: str, select: str) -> str:
    return f"CREATE OR REPLACE VIEW {sql_identifier(name)} AS {select.strip()}"


def register_views(con: duckdb.DuckDBPyConnection, lake: Lake, extra: Mapping[str, str] | None = None,
                   as_of: str | None = None) -> None:
    """Create the lake's views on any connection (an in-memory one for computing, the warehouse file for users).

    ``as_of`` (a table version or an ISO timestamp) pins every table to that version (``resolve_as_of``).
    An object-store lake's tables are registered as Arrow datasets of their snapshot (or pinned version).
    """
    lake.ensure_initialized()
    versions = resolve_as_of(lake, as_of) if as_of is not None else None
    if lake.remote:
        for table in [*ALL_TABLES, *lake.model_tables()]:
            t = lake._table(table, (versions or {}).get(table))
            if t is not None:
                con.register(arrow_view_name(table), t.to_pyarrow_dataset())
    else:
        delta_store.load_delta_extension(con)
    for name, select in view_statements(lake, versions):
        con.execute(_create_view(name, select))
    for name, sql in (extra or {}).items():
        con.execute(_create_view(name, sql))


def _view_script(lake: Lake) -> tuple[list[str], list[str], str]:
    """Every view's name, its ``CREATE OR REPLACE VIEW`` statement, and a fingerprint of all the statements."""
    views = view_statements(lake)
    statements = [_create_view(name, select) for name, select in views]
    return [name for name, _ in views], statements, hashlib.sha256("\n".join(statements).encode()).hexdigest()


def view_dependencies(views: list[tuple[str, str]]) -> dict[str, set[str]]:
    """Each view's name -> the other views its SELECT names (string literals, such as table paths, left out)."""
    names = {name for name, _ in views}
    deps = {}
    for name, select in views:
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r"'(?:[^']|'')*'", "''", select)))
        deps[name] = (words & names) - {name}
    return deps


#: per (process, lake uri): an in-memory DuckDB holding the lake's views, and each defined view's statement
_VIEW_DATABASES: dict[tuple[int, str], list] = {}
_VIEW_DATABASES_LOCK = threading.Lock()


def view_cursor(lake: Lake, needs: Iterable[str] | None = None) -> duckdb.DuckDBPyConnection:
    """A new cursor on this process's in-memory DuckDB with the views of a local lake: those named in ``needs``
    and the views they read (all of them when None; names that are no view are left to the query).

    ``delta_scan`` binds when a query runs, so every query through the cursor reads each table's newest
    committed snapshot, exactly as a fresh ``register_views`` connection would; what is kept is only the
    delta extension load and the view definitions (binding one reads its table's Delta log: the 51 views
    took 0.17 s at the first batch, 0.30 s at the 17th). Views are defined as they are first needed: the
    embedding cache lookups of a batch run need one view each; the SQL models about 16. A view whose statement
    changed (a new SQL model table) is defined again, with every defined view. Per process: a forked child
    never shares its parent's database. An object-store lake registers snapshots, not views that re-bind: use
    ``register_views`` there.
    """
    if lake.remote:
        raise ValueError("view_cursor serves a local lake; register_views an object-store lake's snapshots")
    lake.ensure_initialized()
    views = view_statements(lake)
    if needs is None:
        wanted = {name for name, _ in views}
    else:
        deps = view_dependencies(views)
        wanted, todo = set(), [n for n in needs if n in deps]
        while todo:
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo.extend(deps[name])
    with _VIEW_DATABASES_LOCK:
        key = (os.getpid(), lake.uri)
        db = _VIEW_DATABASES.get(key)
        if db is None:
            con = duckdb.connect()
            delta_store.load_delta_extension(con)
            db = _VIEW_DATABASES[key] = [con, {}]
        con, defined = db
        statements = {name: _create_view(name, select) for name, select in views}
        if any(defined.get(name, statements[name]) != statements[name] for name in statements):
            wanted |= set(defined)  # a changed view: define every defined one again, in dependency order
            defined.clear()
        for name, _ in views:  # dependency order
            if name in wanted and defined.get(name) != statements[name]:
                con.execute(statements[name])
                defined[name] = statements[name]
        return con.cursor()


def resolve_as_of(lake: Lake, as_of: str) -> dict[str, int]:
    """Each table's version for ``as_of``: an integer is a version of every table (a table with fewer
    versions is taken at its newest); anything else is an ISO-8601 time (UTC when no zone is given), and
    each table is taken at its newest version committed by then (its empty version 0 if it is younger)."""
    text = as_of.strip()
    tables = [*ALL_TABLES, *lake.model_tables()]
    if re.fullmatch(r"\d+", text):
        want = int(text)
        return {t: min(want, v) for t in tables if (v := lake.version(t)) is not None}
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"--as-of {as_of!r} is neither a version number nor an ISO-8601 time") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    out = {}
    for t in tables:
        v = delta_store.version_at(lake.table_uri(t), lake.storage_options, when)
        out[t] = 0 if v is None else v
    return out


class WarehouseBusy(RuntimeError):
    """The DuckDB file is held by another process (e.g. a user's open read-write session)."""


def refresh_warehouse(lake: Lake, duckdb_path: Path, timeout_s: float = 30.0) -> bool:
    """(Re)create the views in the warehouse file when the set of tables changed. Returns True if written.

    A fingerprint of the view definitions is kept next to the file so unchanged views cost no write (and
    never contend with a user holding the file). Raises ``WarehouseBusy`` after ``timeout_s`` of retries.
    """
    lake.ensure_initialized()
    if lake.remote:  # its views read Arrow datasets registered per connection: nothing to keep in the file
        return False
    tables, statements, fingerprint = _view_script(lake)
    stamp = duckdb_path.with_name(duckdb_path.name + ".views")
    if duckdb_path.exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return False
    deadline = time.monotonic() + timeout_s
    with _file_lock(duckdb_path.with_name(duckdb_path.name + ".lock"), timeout_s):
        while True:
            try:
                con = duckdb.connect(str(duckdb_path))
                break
            except duckdb.IOException as exc:  # another process holds the write lock
                if time.monotonic() > deadline:
                    raise WarehouseBusy(
                        f"DuckDB file {duckdb_path} is locked by another process ({exc}); "
                        "close other read-write sessions (open it read-only: duckdb -readonly)"
                    ) from exc
                time.sleep(0.25)
        try:
            delta_store.load_delta_extension(con)
            with contextlib.suppress(duckdb.Error, OSError):  # a read-only home: users LOAD it themselves
                delta_store.install_delta_extension(con)
            existing = {r[0] for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
            for stale in existing - set(tables):
                con.execute(f"DROP VIEW IF EXISTS {sql_identifier(stale)} CASCADE")
            for sql in statements:
                con.execute(sql)
        finally:
            con.close()
        stamp.write_text(fingerprint)
    return True


def connect_readonly(lake: Lake, duckdb_path: Path) -> duckdb.DuckDBPyConnection:
    """A connection for queries: the warehouse file read-only when it can be had, else in-memory views.

    Full DuckDB (any file on the machine can be read): for trusted local use only (``mm-platform sql
    --unsafe``, the demo). Anything that runs queries it did not write itself uses ``connect_restricted``.
    """
    try:
        if lake.remote:
            raise WarehouseBusy("an object-store lake's views are registered per connection")
        refresh_warehouse(lake, duckdb_path, timeout_s=5.0)
        con = duckdb.connect(str(duckdb_path), read_only=True)
        delta_store.load_delta_extension(con)
        return con
    except (WarehouseBusy, TimeoutError, duckdb.IOException):
        con = duckdb.connect()
        register_views(con, lake)
        return con
