"""Restricted SQL: what `mm-platform sql` and the explorer let a user run (one SELECT, no file access outside
the lake, no extensions, no settings changes)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from mm_platform.lib.storage.sqlquote import glob_escape
from mm_platform.lib.storage.views import connect_readonly, register_views  # noqa: F401

if TYPE_CHECKING:
    from mm_platform.lib.storage.lake import Lake


class RestrictedSQLError(ValueError):
    """A statement that a restricted connection does not run (it writes, attaches, loads, configures …)."""


#: Statement types a restricted connection runs: queries only (``DESCRIBE``/``SHOW``/``SUMMARIZE`` parse as
#: SELECT). ``EXPLAIN [ANALYZE]`` is allowed when what it explains is itself allowed.
RESTRICTED_STATEMENT_TYPES = frozenset({duckdb.StatementType.SELECT})
_EXPLAIN = re.compile(r"^\s*explain(\s+analyze)?\s+", re.IGNORECASE)


def check_restricted_sql(sql: str) -> None:
    """Raise ``RestrictedSQLError`` unless every statement in ``sql`` is a plain query.

    Defense in depth: DuckDB itself (``connect_restricted``) already refuses files outside the lake,
    extensions and configuration changes; this also refuses what the lake's own allowance would let
    through (``COPY … TO`` a lake file, ``CREATE``, ``PRAGMA``, ``CALL``, ``SET``, ``ATTACH``, ``EXPORT`` …).
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise RestrictedSQLError(f"SQL does not parse: {exc}") from exc
    if not statements:
        raise RestrictedSQLError("no SQL statement given")
    for stmt in statements:
        if stmt.type in RESTRICTED_STATEMENT_TYPES:
            continue
        inner = _EXPLAIN.sub("", stmt.query, count=1)
        if stmt.type == duckdb.StatementType.EXPLAIN and inner != stmt.query:
            check_restricted_sql(inner)
            continue
        raise RestrictedSQLError(
            f"only read-only queries (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) are allowed here; "
            f"refused a {stmt.type.name} statement"
        )


def _dir_prefixes(root: Path) -> list[str]:
    """The lake root as DuckDB allowed-directory prefixes: as given, with symlinks resolved, and each as the
    glob-escaped spelling the views use (DuckDB checks a glob pattern's text before expanding it)."""
    out: list[str] = []
    for p in (Path(os.path.abspath(root)), root.resolve()):
        prefix = str(p).rstrip(os.sep) + os.sep
        for spelling in (prefix, glob_escape(prefix)):
            if spelling not in out:
                out.append(spelling)
    return out


def restrict_connection(con: duckdb.DuckDBPyConnection, allowed_dirs: list[Path]) -> duckdb.DuckDBPyConnection:
    """Lock ``con`` down: files only under ``allowed_dirs``, no extension install/auto-load, no external
    access otherwise, and the configuration locked so no later ``SET``/``RESET`` can undo it."""
    prefixes = [p for d in allowed_dirs for p in _dir_prefixes(Path(d))]
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET allow_community_extensions = false")
    con.execute("SET allowed_directories = ?", [prefixes])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def connect_restricted(lake: Lake, duckdb_path: Path | None = None, as_of: str | None = None) -> duckdb.DuckDBPyConnection:
    """A query connection for SQL from anyone (``mm-platform sql``, the web service): the warehouse views,
    with DuckDB reading files only under the lake, nothing installed or loaded, and settings locked.

    The views live in a private in-memory database, never the warehouse file (``duckdb_path`` is accepted
    for symmetry with ``connect_readonly`` and not opened): DuckDB's access settings belong to a database
    instance, and a process shares one instance per file, so locking the file's instance would also lock
    every other connection to it in the process (and the file's writer could not reopen it).
    Run the caller's SQL through ``execute_restricted`` (or call ``check_restricted_sql`` first): DuckDB
    still lets a query write *inside* the lake (``COPY … TO``), which only the statement check refuses.
    Cursors (``con.cursor()``) share the restrictions, for one connection per thread.
    """
    del duckdb_path
    con = duckdb.connect(":memory:")
    try:
        register_views(con, lake, as_of=as_of)
        return restrict_connection(con, [lake.root])
    except BaseException:
        con.close()
        raise


def execute_restricted(con: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> duckdb.DuckDBPyConnection:
    """``check_restricted_sql(sql)`` then ``con.execute(sql, params)`` (a ``connect_restricted`` connection)."""
    check_restricted_sql(sql)
    return con.execute(sql, params) if params is not None else con.execute(sql)
