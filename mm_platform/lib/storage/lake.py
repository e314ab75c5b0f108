"""The lake (one Delta Lake table per lake table) and the DuckDB warehouse of views over it.

Every partitioned table is one Delta table partitioned by ``batch_id`` at ``<lake uri>/<table>``; writing a
batch's partition is one commit that replaces exactly that partition (``predicate="batch_id = '…'"``); a
global table is overwritten whole in one commit. Readers (polars, DuckDB's ``delta_scan``, Ray workers)
resolve one committed version and read only its immutable files, so a query racing any number of writes
sees one complete version of every partition. The lake URI is a local directory (default ``<lake_dir>``) or
``s3://bucket/prefix`` (``MM_LAKE_URI``); the lake's own bookkeeping (stamps, models, per-stage
rejections, the file records, quarantine) stays under the local ``root``.

The DuckDB file holds only *views* over ``delta_scan``, so users can query while runs write and no
pipeline step ever needs DuckDB's single write lock while computing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mm_platform.lib.settings import setting
from mm_platform.lib.storage import delta as delta_store
from mm_platform.lib.storage.sqlquote import sql_literal
from mm_platform.lib.storage.tables import (  # noqa: F401  (re-exported: the lake's public schema names)
    ALL_TABLES,
    CLUSTER_ASSIGNMENT_SCHEMA,
    EMBEDDING_SCHEMA,
    F32_LIST,
    GLOBAL_TABLES,
    LEGACY_DIR,
    MODEL_TABLES_DIR,
    PART,
    PARTITIONED_TABLES,
    RECORD_TABLES,
    SCHEMA_DIR,
    TS,
    _arrow_for,
    _file_lock,
    conform,
    empty_frame,
    read_parquet,
)
from mm_platform.lib.storage.writes import (  # noqa: F401  (LakeWriteError, atomic_write_parquet: public)
    LakeWriteError,
    _atomic_write,
    _atomic_write_text,
    _commit_delta,
    _guard_write,
    _sha256,
    _write_parquet_file,
    atomic_write_parquet,
)

#: The lake's record of what it wrote: ``<root>/_files/<table>/<batch_id=…|_global>/<data file>.json`` holds
#: the size, mtime and SHA-256 of each data file of the current snapshot as written. Delta's log already
#: says which files make a version (a stray file in a table dir is simply not part of it, and a missing one
#: is named), but not their bytes: a file changed behind the platform's back (``COPY … TO`` over it,
#: truncated) is noticed through these records and its partition rewritten, not trusted.
FILES_DIR = "_files"
#: Where damaged files are moved before their batch is re-run (kept for inspection, never deleted).
QUARANTINE_DIR = "_quarantine"
#: The record of a quarantined partition: reported ``missing`` until the partition is rewritten.
OWED = "_owed"


@dataclass(frozen=True)
class LakeDamage:
    """A lake file that is not what the platform wrote."""

    table: str
    batch_id: str | None  # None: a global table
    path: Path
    problem: str  # "missing" or "changed (…)"

    def describe(self) -> str:
        where = f"batch {self.batch_id}" if self.batch_id is not None else "global table"
        return f"lake file {self.path} ({self.table}, {where}) is {self.problem}"




def lake_uri_from_env(root: Path, env: Mapping[str, str] | None = None) -> str:
    """Where lake tables live: ``MM_LAKE_URI`` when it is an object-store URI, else the local ``root``."""
    uri = setting("MM_LAKE_URI", env)
    return uri.rstrip("/") if uri and delta_store.is_remote(uri) else str(root)


def _partition_predicate(batch_id: str) -> str:
    return f"{PART} = {sql_literal(batch_id)}"


def _typed(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """A frame read back from Delta with the table's declared types and column order (extras kept after)."""
    schema = ALL_TABLES.get(table)
    if schema is None:
        return df
    if PART in df.columns:
        df = df.drop(PART)
    if df.width == 0:
        return empty_frame(table)
    return conform(table, df.with_columns(pl.lit(None).alias(c) for c in schema if c not in df.columns))


class Lake:
    """One Delta table per lake table under ``uri`` (local or ``s3://``); bookkeeping under the local ``root``."""

    def __init__(self, root: Path | str, uri: str | None = None):
        self.root = Path(root)
        self.uri = (uri or lake_uri_from_env(self.root)).rstrip("/")
        self.remote = delta_store.is_remote(self.uri)
        if not self.remote and re.search(r"[\[\]]", self.uri):
            raise ValueError(f"the lake path {self.uri!r} holds '[' or ']', which deltalake cannot open as a "
                             "table location; choose a data dir (MM_DATA_DIR / MM_LAKE_URI) without them")
        self.storage_options = delta_store.storage_options(self.uri)
        self._ready = False
        self._record_versions: tuple[tuple, pl.DataFrame] | None = None

    # -- layout -------------------------------------------------------------------------------------
    def table_uri(self, table: str) -> str:
        return f"{self.uri}/{table}"

    def table_dir(self, table: str) -> Path:
        """The table's local directory (a local lake; for an object-store lake, a path that does not exist)."""
        return self.root / table

    def _table(self, table: str, version: int | None = None):
        return delta_store.open_table(self.table_uri(table), self.storage_options, version)

    def _files_of(self, table: str, batch_id: str | None) -> list[Path]:
        t = self._table(table)
        if t is None or self.remote:
            return []
        return [self.table_dir(table) / a["path"] for a in delta_store.add_actions(t)
                if batch_id is None or a.get(f"partition.{PART}") == batch_id]

    def partition_path(self, table: str, batch_id: str) -> Path:
        """The data file holding the partition now (its nominal ``batch_id=…/part.parquet`` when none)."""
        files = self._files_of(table, batch_id)
        return files[0] if files else self.table_dir(table) / f"{PART}={batch_id}" / "part.parquet"

    def global_path(self, table: str) -> Path:
        """The data file holding a global table now (its nominal ``part.parquet`` when none)."""
        files = self._files_of(table, None)
        return files[0] if files else self.table_dir(table) / "part.parquet"

    def has_table(self, table: str) -> bool:
        return self._table(table) is not None

    def version(self, table: str) -> int | None:
        """The table's current Delta version (None: no such table)."""
        t = self._table(table)
        return None if t is None else t.version()

    def data_version(self, table: str) -> int | None:
        """The table's newest version that changed rows (compaction commits do not)."""
        t = self._table(table)
        if t is None:
            return None
        for limit in (20, None):  # the newest commits first; all of them only when those were all compactions
            found = [h["version"] for h in t.history(limit) if h.get("operation") != "OPTIMIZE"]
            if found:
                return max(found)
        return None

    def ensure_initialized(self) -> None:
        """Migrate a Parquet-layout lake once, then create empty (typed) Delta tables so every view is valid
        before data arrives."""
        if self._ready:
            return
        from mm_platform.lib.storage.migrate import migrate_parquet_layout

        migrate_parquet_layout(self)
        for table in [*ALL_TABLES, *self.model_tables()]:
            t = self._table(table)
            if t is None and table in ALL_TABLES:
                self._create_empty(table, pl.DataFrame(schema=ALL_TABLES[table]))
            elif t is not None:  # a table of an older lake gets today's properties (checkpoints every 10 commits)
                delta_store.ensure_properties(t, self.table_uri(table), self.storage_options)
        self._ready = True

    def _create_empty(self, table: str, df: pl.DataFrame) -> None:
        part = [PART] if table in PARTITIONED_TABLES else None
        if part:
            df = df.with_columns(pl.lit(None, pl.String).alias(PART))
        try:
            with _guard_write(self.table_dir(table) if not self.remote else self.table_uri(table)):
                delta_store.write_arrow(self.table_uri(table), _arrow_for(df, None), self.storage_options,
                                        partition_by=part)
        except Exception:
            if not self.has_table(table):  # a lost race is fine (another process created it); nothing else is
                raise

    # -- writes -------------------------------------------------------------------------------------
    def _schema_of(self, table: str) -> dict[str, pl.DataType] | None:
        t = self._table(table)
        return None if t is None else dict(delta_store.schema_frame(t).schema)

    def write_partition(self, table: str, batch_id: str, df: pl.DataFrame) -> Path:
        """Replace the batch's partition of ``table`` with ``df``: one commit; readers see old or new, whole."""
        df = conform(table, df).with_columns(pl.lit(batch_id, pl.String).alias(PART))
        self.ensure_initialized()
        uri = self.table_uri(table)
        with _guard_write(self.table_dir(table) / f"{PART}={batch_id}" if not self.remote else uri):
            _commit_delta(uri, _arrow_for(df, self._schema_of(table)), self.storage_options,
                          _partition_predicate(batch_id), [PART], "merge")
        self._record(table, batch_id)
        return self.partition_path(table, batch_id)

    def write_global(self, table: str, df: pl.DataFrame) -> Path:
        """Overwrite a global (or SQL model) table whole: one commit."""
        df = conform(table, df)
        self.ensure_initialized()
        if table not in ALL_TABLES:
            _atomic_write_text(table, self.root / MODEL_TABLES_DIR / table)
        with _guard_write(self.table_dir(table) if not self.remote else self.table_uri(table)):
            _commit_delta(self.table_uri(table), _arrow_for(df, None), self.storage_options, None, None, "overwrite")
        self._record(table, None)
        return self.global_path(table)

    # -- verification -------------------------------------------------------------------------------
    def _record_dir(self, table: str, batch_id: str | None) -> Path:
        return self.root / FILES_DIR / table / (f"batch_id={batch_id}" if batch_id is not None else "_global")

    def file_record_path(self, table: str, batch_id: str | None, name: str = OWED) -> Path:
        return self._record_dir(table, batch_id) / f"{name}.json"

    def _record(self, table: str, batch_id: str | None) -> None:
        """Record size, mtime and SHA-256 of the partition's data files in the snapshot just committed."""
        if self.remote:
            return
        files = self._files_of(table, batch_id)
        for path in files:
            self._record_file(table, batch_id, path)
        keep = {f"{p.name}.json" for p in files}
        rec_dir = self._record_dir(table, batch_id)
        for old in rec_dir.glob("*.json") if rec_dir.is_dir() else []:
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def _record_file(self, table: str, batch_id: str | None, path: Path) -> None:
        st = path.stat()
        _atomic_write_text(json.dumps({"path": str(path.relative_to(self.root)), "size": st.st_size,
                                       "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}),
                           self.file_record_path(table, batch_id, path.name))

    def verify(self, settle_s: float = 0.5) -> list[LakeDamage]:
        """Every data file of the current snapshots that is missing or differs from what was written, and
        every partition quarantined and not yet rewritten (reported ``missing``).

        Cheap: one log read per table and a ``stat`` per file; the SHA-256 is computed only when size or mtime
        differ. A mismatch is checked again after ``settle_s`` (a write records its files just after its
        commit). An object-store lake is not checked here: nothing rewrites its objects in place.
        """
        if self.remote:
            return []
        suspects = self._suspects()
        if not suspects:
            return []
        time.sleep(settle_s)
        again = {(d.table, d.batch_id, d.path) for d in self._suspects()}
        return [d for d in suspects if (d.table, d.batch_id, d.path) in again]

    def _suspects(self) -> list[LakeDamage]:
        out: list[LakeDamage] = []
        for owed in sorted((self.root / FILES_DIR).glob(f"*/*/{OWED}.json")):
            with contextlib.suppress(OSError, ValueError, KeyError):
                rec = json.loads(owed.read_text())
                out.append(LakeDamage(owed.parent.parent.name, rec["batch_id"], self.root / rec["path"], "missing"))
        for table in [*ALL_TABLES, *self.model_tables()]:
            t = self._table(table)
            for act in delta_store.add_actions(t) if t is not None else []:
                batch_id = act.get(f"partition.{PART}") if table in PARTITIONED_TABLES else None
                d = self._check(table, batch_id, self.table_dir(table) / act["path"], act["size_bytes"])
                if d is not None:
                    out.append(d)
        return out

    def _check(self, table: str, batch_id: str | None, path: Path, logged_size: int) -> LakeDamage | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return LakeDamage(table, batch_id, path, "missing")
        rec_path = self.file_record_path(table, batch_id, path.name)
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            rec = None
        if rec is not None and st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime_ns"]:
            return None
        if st.st_size == logged_size and (rec is None or _sha256(path) == rec["sha256"]):
            with contextlib.suppress(OSError):  # written by the platform (compaction) or the same bytes back
                self._record_file(table, batch_id, path)
            return None
        return LakeDamage(table, batch_id, path, f"changed since it was written (size {st.st_size}, "
                                                 f"written {rec['size'] if rec else logged_size})")

    def quarantine(self, damage: LakeDamage) -> Path | None:
        """Take a damaged partition (or global table) out of the current version in one commit and move its
        file to ``_quarantine/`` (kept for inspection); returns where. A partition stays reported ``missing``
        until it is rewritten."""
        uri = self.table_uri(damage.table)
        if damage.batch_id is not None:
            delta_store.delete_where(uri, self.storage_options, _partition_predicate(damage.batch_id))
            _atomic_write_text(json.dumps({"batch_id": damage.batch_id, "path": str(damage.path.relative_to(self.root))}),
                               self.file_record_path(damage.table, damage.batch_id))
        else:
            t = delta_store.open_for_write(self.table_uri(damage.table), self.storage_options)
            if t is not None:
                t.delete()
        if not damage.path.exists():
            return None
        dest = self.root / QUARANTINE_DIR / damage.path.relative_to(self.root).parent / \
            f"{damage.path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{uuid.uuid4().hex[:6]}"
        with _guard_write(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(damage.path, dest)
        return dest

    def forget(self, table: str, batch_id: str | None) -> None:
        """Drop the records of a partition the platform itself removed (or whose table is recomputed whole)."""
        shutil.rmtree(self._record_dir(table, batch_id), ignore_errors=True)

    def stage_rejections_path(self, stage: str, batch_id: str) -> Path:
        return self.root / "_rejections" / stage / f"batch_id={batch_id}" / "part.parquet"

    def write_stage_rejections(self, stage: str, batch_id: str, df: pl.DataFrame) -> Path:
        """Rejections found by one stage for one batch; ``rejected_records`` gathers all stages."""
        df = df.with_columns(pl.lit(stage).alias("stage")) if "stage" not in df.columns else df
        return atomic_write_parquet(conform("rejected_records", df), self.stage_rejections_path(stage, batch_id))

    def read_stage_rejections(self, batch_id: str) -> pl.DataFrame:
        base = self.root / "_rejections"
        files = sorted(base.glob(f"*/batch_id={batch_id}/part.parquet")) if base.is_dir() else []
        if not files:
            return empty_frame("rejected_records")
        return pl.concat([read_parquet(f) for f in files], how="diagonal_relaxed")

    def delete_partition(self, table: str, batch_id: str) -> None:
        delta_store.delete_where(self.table_uri(table), self.storage_options, _partition_predicate(batch_id))
        self.forget(table, batch_id)

    # -- housekeeping -------------------------------------------------------------------------------
    def housekeeping(self, retention_hours: float) -> dict[str, dict[str, int]]:
        """Compact small files (a commit that changes no row) and vacuum files that no version younger than
        ``retention_hours`` references, table by table. Files of any current version are never removed, so
        readers of the current state are safe at any retention; a reader pinned to an older version (``--as-of``)
        is safe while that version is younger than the retention."""
        out: dict[str, dict[str, int]] = {}
        for table in [*ALL_TABLES, *self.model_tables()]:
            out[table] = delta_store.compact_and_vacuum(self.table_uri(table), self.storage_options, retention_hours)
            if out[table]["files_added"]:
                for batch_id in self.partitions(table) if table in PARTITIONED_TABLES else [None]:
                    self._record(table, batch_id)
        return out

    # -- reads --------------------------------------------------------------------------------------
    def has_partition(self, table: str, batch_id: str) -> bool:
        return batch_id in self.partitions(table)

    def read_partition(self, table: str, batch_id: str) -> pl.DataFrame:
        t = self._table(table)
        if t is None:
            return empty_frame(table) if table in ALL_TABLES else pl.DataFrame()
        return _typed(table, delta_store.read_frame(t, PART, batch_id))

    def partitions(self, table: str) -> list[str]:
        t = self._table(table)
        if t is None:
            return []
        return sorted({a[f"partition.{PART}"] for a in delta_store.add_actions(t) if a.get(f"partition.{PART}")})

    def read_table(self, table: str, version: int | None = None) -> pl.DataFrame:
        """All partitions of a table (or the global table) at one version, typed; empty frame when none."""
        t = self._table(table, version)
        if t is None:
            return empty_frame(table) if table in ALL_TABLES else pl.DataFrame()
        return _typed(table, delta_store.read_frame(t))

    # -- current state ------------------------------------------------------------------------------
    def record_versions(self) -> pl.DataFrame:
        """Every record version (one per raw_records row), newest first per record, with ``is_current``.

        A record's versions are ordered by the time their batch landed (manifest mtime), then batch id; the
        newest is current. A current ``delete`` removes the record from every current view. An upsert whose
        every modality was rejected is no version (it is in ``rejected_records``): a broken resend never
        hides the last good version.
        """
        # the steps of one run ask for it ~20 times: kept until either table gets a commit (local lake)
        key = tuple(delta_store.newest_commit(self.table_uri(t)) if not self.remote else None
                    for t in ("raw_records", "aligned_records"))
        if None not in key and self._record_versions is not None and self._record_versions[0] == key:
            return self._record_versions[1]
        out = self._read_record_versions()
        if None not in key:
            self._record_versions = (key, out)
        return out

    def _read_record_versions(self) -> pl.DataFrame:
        raw = self.read_table("raw_records").select("record_id", "batch_id", "line_number", "op", "landed_at")
        aligned = self.read_table("aligned_records").select("record_id", "batch_id")
        raw = pl.concat([
            raw.filter(pl.col("op") == "delete"),
            raw.filter(pl.col("op") != "delete").join(aligned, on=["record_id", "batch_id"], how="semi"),
        ])
        raw = raw.sort(["record_id", "landed_at", "batch_id"], descending=[False, True, True], nulls_last=True)
        return raw.with_columns((pl.int_range(pl.len()).over("record_id") == 0).alias("is_current"))

    def current_records(self) -> pl.DataFrame:
        """(record_id, batch_id) of every current, non-deleted record."""
        v = self.record_versions()
        return v.filter(pl.col("is_current") & (pl.col("op") == "upsert")).select("record_id", "batch_id")

    def read_current(self, table: str) -> pl.DataFrame:
        """The rows of a per-record table that belong to current record versions."""
        return self.read_table(table).join(self.current_records(), on=["record_id", "batch_id"], how="semi")

    def current_clusters(self) -> pl.DataFrame:
        """The current cluster of every current record: the latest of its full re-cluster and eager assignment."""
        full = self.read_table("recluster_assignments").with_columns(pl.lit("recluster").alias("source"))
        inc = self.read_table("cluster_assignments").with_columns(pl.lit("incremental").alias("source"))
        both = pl.concat([full, inc], how="diagonal_relaxed")
        both = both.join(self.current_records(), on=["record_id", "batch_id"], how="semi")
        return (
            both.sort(["record_id", "clustered_at", "source"], descending=[False, True, False], nulls_last=True)
            .unique("record_id", keep="first", maintain_order=True)
        )

    def model_tables(self) -> list[str]:
        """Tables written by SQL models (a global table under a name no Python asset owns)."""
        base = self.root / MODEL_TABLES_DIR
        return sorted(p.name for p in base.iterdir() if p.name not in ALL_TABLES) if base.is_dir() else []



# The warehouse views and restricted SQL live in their own modules; their names stay importable from here.
from mm_platform.lib.storage.safe_sql import (  # noqa: E402, F401
    RESTRICTED_STATEMENT_TYPES,
    RestrictedSQLError,
    check_restricted_sql,
    connect_restricted,
    execute_restricted,
    restrict_connection,
)
from mm_platform.lib.storage.views import (  # noqa: E402, F401
    DERIVED_VIEWS,
    VIEW_SOURCES,
    WarehouseBusy,
    arrow_view_name,
    connect_readonly,
    refresh_warehouse,
    register_table_view,
    register_views,
    resolve_as_of,
    view_statements,
)
