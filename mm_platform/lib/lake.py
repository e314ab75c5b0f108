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
import datetime as dt
import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from mm_platform.lib import delta_store
from mm_platform.lib.lake_tables import (  # noqa: F401  (re-exported: the lake's public schema names)
    ALL_TABLES,
    CLUSTER_ASSIGNMENT_SCHEMA,
    EMBEDDING_SCHEMA,
    F32_LIST,
    GLOBAL_TABLES,
    PARTITIONED_TABLES,
    RECORD_TABLES,
    SCHEMA_DIR,
    LEGACY_DIR,
    MODEL_TABLES_DIR,
    PART,
    TS,
    _arrow_for,
    _file_lock,
    conform,
    empty_frame,
    read_parquet,
)
from mm_platform.lib.settings import setting
from mm_platform.lib.sqlquote import sql_identifier, sql_literal


#: errno values that mean "the data dir cannot take this write" (not a bug): reported as ``LakeWriteError``.
_WRITE_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EFBIG: "file too large"}


class LakeWriteError(OSError):
    """A lake write failed for lack of space or permission; nothing half-written is left visible."""

    def __init__(self, what: str, path: Path | str, cause: OSError):
        super().__init__(cause.errno, f"{what} writing {path}: {cause.strerror or cause} "
                                      "(nothing was half-written; free space or fix permissions, then run again)")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def _write_parquet_file(df: pl.DataFrame, path: Path) -> None:
    """The one place side-file Parquet bytes hit the disk (tests replace it to simulate a full disk)."""
    df.write_parquet(path, compression="zstd", statistics=True)


def _commit_delta(uri: str, data: pa.Table, opts: dict[str, str] | None, predicate: str | None,
                  partition_by: list[str] | None, schema_mode: str) -> None:
    """The one place lake table bytes are written: one Delta commit (tests replace it to simulate a full disk)."""
    delta_store.write_arrow(uri, data, opts, predicate=predicate, partition_by=partition_by, schema_mode=schema_mode)


def _as_os_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write: itself, or one named in a ``deltalake`` error's message."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    for code in _WRITE_ERRNOS:
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code))
    return None


def _guard_write(path: Path | str) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except LakeWriteError:
            raise
        except Exception as exc:
            cause = _as_os_error(exc)
            what = _WRITE_ERRNOS.get(cause.errno or 0) if cause is not None else None
            if what is None or cause is None:
                raise
            raise LakeWriteError(what, path, cause) from exc
    return guard()


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` into a temp file beside ``path``, then an atomic rename onto ``path``. The temp file is
    removed whatever happens; a full disk or read-only data dir raises ``LakeWriteError``."""
    with _guard_write(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def atomic_write_parquet(df: pl.DataFrame, path: Path) -> Path:
    """Write ``df`` to ``path`` through a temp file in the same directory and an atomic rename (side files:
    per-stage rejections, SQL model scratch). A full disk raises ``LakeWriteError`` and leaves the old file."""
    _atomic_write(path, lambda tmp: _write_parquet_file(df, tmp))
    return path


def _atomic_write_text(text: str, path: Path) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def glob_escape(path: str) -> str:
    """``path`` as a DuckDB glob matching only itself: ``[``, ``]``, ``*``, ``?`` become one-character classes."""
    return re.sub(r"([\[\]*?])", r"[\1]", path)


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
        from mm_platform.lib.lake_migrate import migrate_parquet_layout

        migrate_parquet_layout(self)
        for table, schema in ALL_TABLES.items():
            if not self.has_table(table):
                self._create_empty(table, pl.DataFrame(schema=schema))
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
        return None if t is None else dict(pl.from_arrow(t.to_pyarrow_dataset().schema.empty_table()).schema)

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
            t = self._table(damage.table)
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
        ds = t.to_pyarrow_dataset(partitions=[(PART, "=", batch_id)])
        return _typed(table, pl.from_arrow(ds.to_table()))

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
        return _typed(table, pl.from_arrow(t.to_pyarrow_dataset().to_table()))

    # -- current state ------------------------------------------------------------------------------
    def record_versions(self) -> pl.DataFrame:
        """Every record version (one per raw_records row), newest first per record, with ``is_current``.

        A record's versions are ordered by the time their batch landed (manifest mtime), then batch id; the
        newest is current. A current ``delete`` removes the record from every current view. An upsert whose
        every modality was rejected is no version (it is in ``rejected_records``): a broken resend never
        hides the last good version.
        """
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

# -- the DuckDB warehouse (views only) --------------------------------------------------------------

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
    views = view_statements(lake)
    tables = [name for name, _ in views]
    statements = [_create_view(name, select) for name, select in views]
    fingerprint = hashlib.sha256("\n".join(statements).encode()).hexdigest()
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
