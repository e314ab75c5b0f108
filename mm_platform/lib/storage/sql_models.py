"""dbt-style SQL models run against DuckDB.

A model is one ``SELECT`` in ``<root>/<layer>/<name>.sql`` (layers: staging, intermediate, marts). Its
dependencies are *parsed* from the SQL, never listed by hand:

1. DuckDB's own parser (``json_serialize_sql``) gives the statement's AST, parsed without binding. Every
   ``BASE_TABLE`` reference is collected, minus references to CTEs that are in scope at that point
   (a CTE is visible in the query node declaring it and to the CTEs declared after it, to itself only
   when recursive -- a plain CTE naming itself reads the table, as DuckDB resolves it; a schema- or
   catalog-qualified name is never a CTE). Schema/catalog qualification is stripped and
   names are lower-cased (DuckDB matches identifiers case-insensitively, quoted or not). Table functions
   such as ``read_parquet('x')`` are not dependencies.
2. Statements DuckDB cannot serialise (anything but a SELECT, e.g. ``CREATE ... AS``) fall back to
   ``duckdb.get_table_names`` (which binds, so it can fail on a table function over missing files), and
   if that fails too, to a small scope-blind tokenizer that drops comments and string literals and reads
   the name after each FROM/JOIN, minus ``name AS (`` CTE declarations.

A SQL syntax error raises ``ValueError`` with DuckDB's message.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from mm_platform.lib.storage import lake as _lake
from mm_platform.lib.storage.sqlquote import sql_identifier, sql_literal
from mm_platform.lib.storage.writes import atomic_write_parquet

LAYERS: tuple[str, ...] = ("staging", "intermediate", "marts")

#: Warehouse tables (views over the Parquet lake) that models may read: every lake table, the ``<t>_history``
#: view of each per-record table, and the derived views -- the names ``lake.view_statements`` creates for an
#: empty lake (SQL model outputs aside), derived from the lake's declarations rather than listed by hand.
WAREHOUSE_TABLES: frozenset[str] = frozenset(
    {
        *_lake.ALL_TABLES,
        *(f"{table}_history" for table in _lake.RECORD_TABLES),
        *_lake.DERIVED_VIEWS,
    }
)


@dataclass(frozen=True)
class SqlModel:
    """One SQL model file."""

    name: str  #: file stem, e.g. "stg_raw_records"
    path: Path
    layer: str  #: "staging" | "intermediate" | "marts" (folder name)
    sql: str  #: the SELECT statement (file content, comments kept)
    deps: frozenset[str]  #: tables the SQL reads (parsed), CTE names excluded, schema stripped
    description: str  #: the leading ``--`` comment block

    def model_deps(self, models: Mapping[str, SqlModel]) -> frozenset[str]:
        """Dependencies that are other models."""
        return frozenset(d for d in self.deps if d in models)

    def source_deps(self, models: Mapping[str, SqlModel]) -> frozenset[str]:
        """Dependencies that are not models (warehouse tables)."""
        return frozenset(d for d in self.deps if d not in models)


# -- dependency parsing ----------------------------------------------------------------------------------

_PARSER_CON: duckdb.DuckDBPyConnection | None = None
_PARSER_LOCK = threading.Lock()


def _parser_connection() -> duckdb.DuckDBPyConnection:
    global _PARSER_CON
    if _PARSER_CON is None:
        _PARSER_CON = duckdb.connect(":memory:")
    return _PARSER_CON


def _norm(name: str) -> str:
    return name.lower()


def _walk_ast(node: Any, scope: frozenset[str], out: set[str]) -> None:
    """Collect BASE_TABLE names under ``node``, skipping CTE names visible in ``scope``."""
    if isinstance(node, list):
        for item in node:
            _walk_ast(item, scope, out)
        return
    if not isinstance(node, dict):
        return
    cte_map = node.get("cte_map")
    if isinstance(cte_map, dict) and cte_map.get("map"):
        entries = cte_map["map"]
        names = [_norm(str(e.get("key", ""))) for e in entries]
        # each CTE body sees the CTEs declared before it, and itself only when recursive (a plain CTE
        # naming itself reads the outer table of that name, as DuckDB resolves it)
        for i, entry in enumerate(entries):
            value = entry.get("value") or {}
            # the recursive node sits under "query_node" (DuckDB 2) or "query" -> "node" (DuckDB 1.x)
            body = value.get("query_node") or (value.get("query") or {}).get("node") or {}
            recursive = body.get("type") == "RECURSIVE_CTE_NODE"
            visible = names[: i + 1] if recursive else names[:i]
            _walk_ast(value, scope | frozenset(visible), out)
        scope = scope | frozenset(names)
    if node.get("type") == "BASE_TABLE" and "table_name" in node:
        name = _norm(str(node["table_name"]))
        qualified = bool(node.get("schema_name")) or bool(node.get("catalog_name"))
        if qualified or name not in scope:
            out.add(name)
    for key, value in node.items():
        if key == "cte_map":
            continue
        if isinstance(value, (dict, list)):
            _walk_ast(value, scope, out)


_COMMENT_OR_STRING = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\$\$.*?\$\$", re.DOTALL)
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = rf"{_IDENT}(?:\s*\.\s*{_IDENT})*"


def _unquote(ident: str) -> str:
    ident = ident.strip()
    if ident.startswith('"') and ident.endswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident


def _tokenizer_table_names(sql: str) -> set[str]:
    """Last-resort dependency scan, scope-blind: the (last part of the) name right after each FROM/JOIN,
    minus every ``name AS (`` CTE declared anywhere. Misses the 2nd+ table of ``FROM a, b`` lists."""
    text = _COMMENT_OR_STRING.sub(" ", sql)
    ctes = {
        _norm(_unquote(m.group(1)))
        for m in re.finditer(
            rf"({_IDENT})\s*(?:\([^()]*\)\s*)?as\s+(?:not\s+)?(?:materialized\s+)?\(", text, re.IGNORECASE
        )
    }
    out: set[str] = set()
    pattern = re.compile(rf"\b(?:from|join)\s+({_QUALIFIED})(\s*\()?", re.IGNORECASE)
    for m in pattern.finditer(text):
        if m.group(2):  # table function call, e.g. read_parquet(...)
            continue
        parts = re.findall(_IDENT, m.group(1))
        name = _norm(_unquote(parts[-1]))
        if name in {"select", "lateral", "unnest"}:
            continue
        if len(parts) > 1 or name not in ctes:
            out.add(name)
    return out


def parse_dependencies(sql: str) -> frozenset[str]:
    """Tables a SQL statement reads: CTE names excluded, schema/catalog stripped, lower-cased.

    Raises:
        ValueError: the SQL does not parse.
    """
    with _PARSER_LOCK:
        # a literal, not a parameter: binding a parameter makes the duckdb module import pandas (0.3 s)
        raw = _parser_connection().execute(f"SELECT json_serialize_sql({sql_literal(sql)})").fetchone()
    doc = json.loads(raw[0]) if raw and raw[0] else {"error": True, "error_type": "unknown"}
    if not doc.get("error"):
        out: set[str] = set()
        _walk_ast(doc.get("statements", []), frozenset(), out)
        return frozenset(out)
    if doc.get("error_type") == "parser":
        raise ValueError(f"SQL does not parse: {doc.get('error_message')}")
    try:
        names = duckdb.get_table_names(sql, qualified=False)
        return frozenset(_norm(n) for n in names)
    except Exception:  # noqa: BLE001 - fall back to the tokenizer on any binder/IO error
        return frozenset(_tokenizer_table_names(sql))


# -- discovery and ordering --------------------------------------------------------------------------------


def leading_description(sql: str) -> str:
    """The leading ``--`` comment block (blank lines before it skipped), without the ``--`` markers."""
    lines: list[str] = []
    started = False
    for line in sql.splitlines():
        stripped = line.strip()
        if stripped.startswith("--"):
            started = True
            lines.append(stripped[2:].strip())
        elif not stripped and not started:
            continue
        else:
            break
    return "\n".join(lines).strip()


def discover_models(root: Path) -> dict[str, SqlModel]:
    """Every ``*.sql`` under ``root/{staging,intermediate,marts}`` (recursively), keyed by file stem.

    Raises:
        ValueError: two files with the same stem, a model that does not parse, or a dependency cycle.
    """
    root = Path(root)
    models: dict[str, SqlModel] = {}
    for layer in LAYERS:
        folder = root / layer
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.sql")):
            name = path.stem.lower()
            if name in models:
                raise ValueError(f"duplicate SQL model name {name!r}: {models[name].path} and {path}")
            sql = path.read_text(encoding="utf-8")
            try:
                deps = parse_dependencies(sql)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc
            models[name] = SqlModel(
                name=name,
                path=path,
                layer=layer,
                sql=sql,
                deps=deps,
                description=leading_description(sql),
            )
    topo_order(models)  # raises on cycles
    return dict(sorted(models.items()))


def topo_order(models: Mapping[str, SqlModel]) -> list[str]:
    """Model names, upstream first (ties broken by layer then name). Raises ValueError on a cycle."""
    layer_rank = {layer: i for i, layer in enumerate(LAYERS)}

    def key(name: str) -> tuple[int, str]:
        return (layer_rank.get(models[name].layer, len(LAYERS)), name)

    upstream = {name: {d for d in m.deps if d in models} for name, m in models.items()}
    downstream: dict[str, set[str]] = {name: set() for name in models}
    for name, ups in upstream.items():
        for u in ups:
            downstream[u].add(name)
    remaining = {name: len(ups) for name, ups in upstream.items()}
    ready = sorted((n for n, c in remaining.items() if c == 0), key=key)
    order: list[str] = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for d in downstream[current]:
            remaining[d] -= 1
            if remaining[d] == 0:
                ready.append(d)
        ready.sort(key=key)
    if len(order) != len(models):
        stuck = sorted(n for n in models if n not in order)
        raise ValueError(f"dependency cycle among SQL models: {stuck}")
    return order


# -- running -----------------------------------------------------------------------------------------------


def _select_body(sql: str) -> str:
    """The statement without trailing semicolons/whitespace; refuses multi-statement files."""
    body = sql.strip()
    while body.endswith(";"):
        body = body[:-1].rstrip()
    try:
        statements = duckdb.extract_statements(body)
    except Exception as exc:
        raise ValueError(f"SQL does not parse: {exc}") from exc
    if len(statements) != 1:
        raise ValueError(f"a SQL model must hold exactly one statement, found {len(statements)}")
    return body


def select_body(sql: str) -> str:
    """The model's one SELECT, without a trailing semicolon (raises ``ValueError`` otherwise)."""
    return _select_body(sql)


#: Persists one model's result and makes it visible to the models after it: ``write(con, name, frame)``.
ModelWriter = Callable[[duckdb.DuckDBPyConnection, str, pl.DataFrame], None]


def ensure_upstream_views(con: duckdb.DuckDBPyConnection, model: SqlModel, models: Mapping[str, SqlModel],
                          materialized: Callable[[str], bool]) -> None:
    """Upstream models that were never materialized are defined as plain views, so a model can always run."""
    for dep in sorted(model.deps):
        upstream = models.get(dep)
        if upstream is None or materialized(dep):
            continue
        ensure_upstream_views(con, upstream, models, materialized)
        con.execute(f"CREATE OR REPLACE VIEW {sql_identifier(dep)} AS {select_body(upstream.sql)}")


def run_models(
    con: duckdb.DuckDBPyConnection,
    models: Mapping[str, SqlModel],
    write: ModelWriter,
    select: Iterable[str] | None = None,
    materialized: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, pl.DataFrame]]:
    """The one SQL model runner (the Dagster asset and the tests both use it).

    Models run in topological order; ``select`` limits which (an upstream model outside it is defined as a
    plain view unless ``materialized(name)`` says its result already exists). Each model's single SELECT runs
    on ``con``, ``write`` persists the frame and re-registers the name, and ``(name, frame)`` is yielded.
    """
    wanted = set(select) if select is not None else None
    done: set[str] = set()
    exists = materialized or (lambda name: False)
    for name in topo_order(models):
        if wanted is not None and name not in wanted:
            continue
        model = models[name]
        ensure_upstream_views(con, model, models, lambda dep: dep in done or exists(dep))
        df = con.execute(select_body(model.sql)).pl()
        write(con, name, df)
        done.add(name)
        yield name, df


def run_model(con: duckdb.DuckDBPyConnection, model: SqlModel, out_path: Path) -> int:
    """Run one model to ``out_path`` (Parquet, written atomically: on any error the previous file stays and no
    temp file is left). Returns the row count."""
    df = con.execute(select_body(model.sql)).pl()
    atomic_write_parquet(df, Path(out_path))
    return df.height


def register_view(con: duckdb.DuckDBPyConnection, name: str, parquet_path: Path) -> None:
    """``CREATE OR REPLACE VIEW name AS SELECT * FROM read_parquet(path)``."""
    con.execute(
        f"CREATE OR REPLACE VIEW {sql_identifier(name)} AS SELECT * FROM read_parquet({sql_literal(str(parquet_path))})"
    )


def parquet_writer(out_dir: Path) -> ModelWriter:
    """A :data:`ModelWriter` writing ``out_dir/<name>.parquet`` atomically and registering it as a view."""

    def write(con: duckdb.DuckDBPyConnection, name: str, df: pl.DataFrame) -> None:
        path = atomic_write_parquet(df, Path(out_dir) / f"{name}.parquet")
        register_view(con, name, path)

    return write


def run_all(
    con: duckdb.DuckDBPyConnection,
    models: Mapping[str, SqlModel],
    out_dir: Path,
    select: Iterable[str] | None = None,
) -> dict[str, int]:
    """Run models (see :func:`run_models`) each to ``out_dir/<name>.parquet``, registered as views on ``con``.
    Returns rows written per model."""
    return {name: df.height for name, df in run_models(con, models, parquet_writer(out_dir), select)}
