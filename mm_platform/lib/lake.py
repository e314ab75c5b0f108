"""The Parquet lake and the DuckDB warehouse of views over it.

Every asset writes its batch partition as one Parquet file,
``<lake>/<table>/batch_id=<id>/part.parquet`` (global tables: ``<lake>/<table>/part.parquet``), through a
temporary file and an atomic ``os.replace``. The DuckDB file holds only *views* over those files (globs),
so users can query while runs write, readers never see half-written files, and no pipeline step ever
needs DuckDB's single write lock while computing. The only writes to the DuckDB file are (re)creating
views, done under an inter-process file lock, with retries, and skipped when nothing changed.

Each partitioned table also has a zero-row ``_schema/part.parquet`` so that its view is valid (and typed)
before the first batch lands.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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

from mm_platform.lib.sqlquote import sql_identifier, sql_literal
from mm_platform.lib.streams import ALIGNMENT_REPORT_SCHEMA

F32_LIST = pl.List(pl.Float32)
TS = pl.Datetime("us", "UTC")

#: Every ``<modality>_embeddings`` table: one vector per record, with the model that made it.
EMBEDDING_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String, "batch_id": pl.String, "model": pl.String, "model_version": pl.String,
    "space": pl.String, "dim": pl.Int32, "content_sha256": pl.String, "embedding": F32_LIST,
    "cache_hit": pl.Boolean,
}

#: Tables written one partition per landing batch, with their fixed column types.
PARTITIONED_TABLES: dict[str, dict[str, pl.DataType]] = {
    "raw_records": {
        "batch_id": pl.String, "line_number": pl.Int32, "record_id": pl.String, "op": pl.String,
        "timestamp": TS, "label": pl.String, "text_declared": pl.Boolean, "image_path": pl.String,
        "audio_path": pl.String, "fields_json": pl.String, "manifest_sha256": pl.String, "ingested_at": TS, "landed_at": TS,
        "entity_id": pl.String,
    },
    "raw_text": {
        "record_id": pl.String, "batch_id": pl.String, "line_number": pl.Int32, "text": pl.String,
        "text_sha256": pl.String, "n_chars": pl.Int32,
    },
    "raw_images": {
        "record_id": pl.String, "batch_id": pl.String, "line_number": pl.Int32, "image_path": pl.String,
        "uri": pl.String, "sha256": pl.String, "width": pl.Int32, "height": pl.Int32, "format": pl.String,
        "mode": pl.String, "n_bytes": pl.Int64,
    },
    "raw_audio": {
        "record_id": pl.String, "batch_id": pl.String, "line_number": pl.Int32, "audio_path": pl.String,
        "uri": pl.String, "sha256": pl.String, "format": pl.String, "subtype": pl.String,
        "sample_rate": pl.Int32, "channels": pl.Int32, "duration_s": pl.Float64, "n_bytes": pl.Int64,
        "rms": pl.Float64, "peak": pl.Float64,
    },
    # one typed column per field follows these (Float64 for numeric fields, String otherwise)
    "raw_tabular": {
        "record_id": pl.String, "batch_id": pl.String, "line_number": pl.Int32, "fields_sha256": pl.String,
        "n_fields": pl.Int32, "n_missing": pl.Int32, "n_invalid": pl.Int32, "encoder_version": pl.String,
        "values_json": pl.String,
    },
    # one column per matched stream value (``<stream>__<column>``) and lag (``<stream>__lag_s``) follows
    "stream_features": {
        "record_id": pl.String, "batch_id": pl.String, "entity_id": pl.String, "timestamp": TS,
        "streams_matched": pl.Int32, "stream_features_json": pl.String,
    },
    "alignment_report": ALIGNMENT_REPORT_SCHEMA,
    "rejected_records": {
        "batch_id": pl.String, "line_number": pl.Int32, "record_id": pl.String, "modality": pl.String,
        "reason": pl.String, "detail": pl.String, "stage": pl.String, "rejected_at": TS,
    },
    "aligned_records": {
        "record_id": pl.String, "batch_id": pl.String, "line_number": pl.Int32, "timestamp": TS,
        "label": pl.String, "has_text": pl.Boolean, "has_image": pl.Boolean, "has_audio": pl.Boolean,
        "has_tabular": pl.Boolean, "text_sha256": pl.String, "image_sha256": pl.String, "audio_sha256": pl.String,
        "fields_sha256": pl.String, "entity_id": pl.String, "streams_matched": pl.Int32,
        "stream_features_json": pl.String,
    },
    "text_embeddings": EMBEDDING_SCHEMA,
    "image_embeddings": EMBEDDING_SCHEMA,
    "audio_embeddings": EMBEDDING_SCHEMA,
    "tabular_embeddings": EMBEDDING_SCHEMA,
    "fused_vectors": {
        "record_id": pl.String, "batch_id": pl.String, "fusion": pl.String, "modalities": pl.List(pl.String),
        "dim": pl.Int32, "embedding": F32_LIST, "weights_json": pl.String, "weights_source": pl.String,
    },
    "batches": {
        "batch_id": pl.String, "manifest_sha256": pl.String, "manifest_lines": pl.Int32,
        "aligned_records": pl.Int32, "rejected_lines": pl.Int32, "points": pl.Int32, "deletes": pl.Int32,
        "completed_at": TS, "profile_key": pl.String, "profile_request": pl.String,
    },
    "vector_points": {
        "record_id": pl.String, "batch_id": pl.String, "point_id": pl.String, "vectors": pl.List(pl.String),
        "collection": pl.String, "manifest_sha256": pl.String, "upserted_at": TS,
    },
}

#: One cluster assignment per record: written whole by a full re-cluster (``recluster_assignments``) and
#: per batch by the eager assignment of new records to the existing clusters (``cluster_assignments``).
CLUSTER_ASSIGNMENT_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String, "batch_id": pl.String, "cluster_id": pl.Int32, "algorithm": pl.String,
    "distance_to_centroid": pl.Float64, "is_outlier": pl.Boolean, "run_id": pl.String, "clustered_at": TS,
}
PARTITIONED_TABLES["cluster_assignments"] = CLUSTER_ASSIGNMENT_SCHEMA

#: Tables recomputed whole over all batches.
GLOBAL_TABLES: dict[str, dict[str, pl.DataType]] = {
    "recluster_assignments": CLUSTER_ASSIGNMENT_SCHEMA,
    "cluster_summary": {
        "cluster_id": pl.Int32, "name": pl.String, "size": pl.Int32,
        "representative_record_ids": pl.List(pl.String), "top_terms": pl.List(pl.String),
        "label_counts_json": pl.String, "text_coverage": pl.Float64, "image_coverage": pl.Float64,
        "algorithm": pl.String, "run_id": pl.String, "audio_coverage": pl.Float64, "tabular_coverage": pl.Float64,
        "name_source": pl.String, "agreement_json": pl.String, "n_outliers": pl.Int32,
    },
    "shared_embeddings": {
        "record_id": pl.String, "batch_id": pl.String, "modality": pl.String, "head_version": pl.String,
        "embedding": F32_LIST,
    },
    # the single-modality clustering of each record, next to the fused one (per-modality agreement)
    "modality_assignments": {
        "record_id": pl.String, "modality": pl.String, "cluster_id": pl.Int32, "run_id": pl.String,
    },
    "embedding_map": {
        "record_id": pl.String, "batch_id": pl.String, "x": pl.Float64, "y": pl.Float64, "cluster_id": pl.Int32,
        "label": pl.String, "method": pl.String, "space": pl.String, "run_id": pl.String,
    },
    "classifier_metrics": {
        "run_id": pl.String, "created_at": TS, "strategy": pl.String, "modalities": pl.List(pl.String),
        "macro_f1": pl.Float64, "macro_f1_std": pl.Float64, "accuracy": pl.Float64, "n_labelled": pl.Int32,
        "n_classes": pl.Int32, "folds": pl.Int32, "weights_json": pl.String,
    },
    "predictions": {
        "record_id": pl.String, "batch_id": pl.String, "strategy": pl.String, "predicted_label": pl.String,
        "probability": pl.Float64, "run_id": pl.String,
    },
    "cluster_metrics": {
        "run_id": pl.String, "created_at": TS, "algorithm": pl.String, "space": pl.String, "k": pl.Int32,
        "n_records": pl.Int32, "n_outliers": pl.Int32, "silhouette": pl.Float64, "nmi": pl.Float64,
        "ari": pl.Float64, "n_labelled": pl.Int32, "input_fingerprint": pl.String, "params_json": pl.String,
        "moved": pl.Int32, "common": pl.Int32, "new_clusters": pl.Int32, "retired_clusters": pl.Int32,
        "agreement_nmi": pl.Float64, "fusion_strategy": pl.String, "weights_json": pl.String,
        "selection_score": pl.Float64, "selection_json": pl.String,
    },
}

#: Per-record tables: the lake keeps every version (view ``<table>_history``); the view ``<table>`` shows
#: the current version of each record only (its latest landed batch, unless that was a delete).
RECORD_TABLES = (
    "raw_text", "raw_images", "raw_audio", "raw_tabular", "stream_features", "aligned_records",
    "text_embeddings", "image_embeddings", "audio_embeddings", "tabular_embeddings", "fused_vectors",
    "vector_points",
)

ALL_TABLES: dict[str, dict[str, pl.DataType]] = {**PARTITIONED_TABLES, **GLOBAL_TABLES}
SCHEMA_DIR = "_schema"


def empty_frame(table: str) -> pl.DataFrame:
    return pl.DataFrame(schema=ALL_TABLES[table])


def conform(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """Cast ``df`` to the table's declared schema: declared columns first, in order, extra columns kept after.

    Raises ``KeyError`` naming the missing columns, so a contract break fails loudly at write time.
    """
    schema = ALL_TABLES.get(table)
    if schema is None:
        return df
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise KeyError(f"table {table!r} is missing columns {missing}")
    declared = [pl.col(c).cast(t, strict=False) for c, t in schema.items()]
    extra = [c for c in df.columns if c not in schema]
    return df.select(declared + extra)


def read_parquet(path: Path) -> pl.DataFrame:
    """Read one Parquet file through a single open handle, so a concurrent atomic replace of the path can
    never mix two versions (polars may open a path more than once per read)."""
    with open(path, "rb") as fh:
        return pl.read_parquet(fh)


#: errno values that mean "the data dir cannot take this write" (not a bug): reported as ``LakeWriteError``.
_WRITE_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EFBIG: "file too large"}


class LakeWriteError(OSError):
    """A lake write failed for lack of space or permission; nothing half-written is left visible."""

    def __init__(self, what: str, path: Path, cause: OSError):
        super().__init__(cause.errno, f"{what} writing {path}: {cause.strerror or cause} "
                                      "(nothing was half-written; free space or fix permissions, then run again)")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def _write_parquet_file(df: pl.DataFrame, path: Path) -> None:
    """The one place lake Parquet bytes hit the disk (tests replace it to simulate a full disk)."""
    df.write_parquet(path, compression="zstd", statistics=True)


def _guard_write(path: Path) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except LakeWriteError:
            raise
        except OSError as exc:
            what = _WRITE_ERRNOS.get(exc.errno or 0)
            if what is None:
                raise
            raise LakeWriteError(what, path, exc) from exc
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
    """Write ``df`` to ``path`` through a temp file in the same directory and an atomic rename.

    The temp file is removed whatever happens; a full disk or read-only data dir raises ``LakeWriteError``
    (an ``OSError`` naming the path) and leaves the previous file, if any, in place.
    """
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


#: The lake's record of what it wrote: ``<lake>/_files/<table>/<batch_id=…|_global>.json`` holds the size,
#: mtime and SHA-256 of each partition (or global) file as written, so a file changed behind the platform's
#: back (truncated, overwritten by a ``COPY … TO``, deleted) is noticed and rewritten, not trusted.
FILES_DIR = "_files"
#: Where damaged files are moved before their batch is re-run (kept for inspection, never deleted).
QUARANTINE_DIR = "_quarantine"


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


class Lake:
    """Parquet files, one per (table, batch partition), under ``root``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # -- layout -------------------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        return self.root / table

    def partition_path(self, table: str, batch_id: str) -> Path:
        return self.table_dir(table) / f"batch_id={batch_id}" / "part.parquet"

    def global_path(self, table: str) -> Path:
        return self.table_dir(table) / "part.parquet"

    def glob(self, table: str) -> str:
        """The DuckDB file pattern of a table; glob characters in the lake's own path match literally."""
        if table in PARTITIONED_TABLES:
            return glob_escape(str(self.table_dir(table))) + "/*/part.parquet"
        return str(self.global_path(table))

    def ensure_initialized(self) -> None:
        """Create zero-row schema files so every view is valid before data arrives."""
        for table in PARTITIONED_TABLES:
            path = self.table_dir(table) / SCHEMA_DIR / "part.parquet"
            if not path.exists():
                atomic_write_parquet(empty_frame(table), path)
        for table in GLOBAL_TABLES:
            if not self.global_path(table).exists():
                atomic_write_parquet(empty_frame(table), self.global_path(table))

    # -- writes -------------------------------------------------------------------------------------
    def write_partition(self, table: str, batch_id: str, df: pl.DataFrame) -> Path:
        self.ensure_initialized()
        path = atomic_write_parquet(conform(table, df), self.partition_path(table, batch_id))
        self._record(table, batch_id, path)
        return path

    def write_global(self, table: str, df: pl.DataFrame) -> Path:
        self.ensure_initialized()
        path = atomic_write_parquet(conform(table, df), self.global_path(table))
        self._record(table, None, path)
        return path

    # -- verification -------------------------------------------------------------------------------
    def file_record_path(self, table: str, batch_id: str | None) -> Path:
        name = f"batch_id={batch_id}.json" if batch_id is not None else "_global.json"
        return self.root / FILES_DIR / table / name

    def _record(self, table: str, batch_id: str | None, path: Path) -> None:
        st = path.stat()
        _atomic_write_text(json.dumps({"path": str(path.relative_to(self.root)), "size": st.st_size,
                                       "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}),
                           self.file_record_path(table, batch_id))

    def verify(self, settle_s: float = 0.5) -> list[LakeDamage]:
        """Every recorded lake file that is missing or differs from what was written.

        Cheap: a ``stat`` per file; the SHA-256 is computed only when size or mtime differ (a file whose
        bytes are unchanged, e.g. copied back, is accepted and its record refreshed). A mismatch is checked
        again after ``settle_s``: a writer records a file just after renaming it into place, so a check
        racing a write would otherwise take a fresh file for a damaged one.
        """
        base = self.root / FILES_DIR
        if not base.is_dir():
            return []
        suspects = [d for rec_path in sorted(base.glob("*/*.json")) if (d := self._check(rec_path))]
        if not suspects:
            return []
        time.sleep(settle_s)
        return [d for d in suspects if self._check(self.file_record_path(d.table, d.batch_id))]

    def _check(self, rec_path: Path) -> LakeDamage | None:
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            return None  # removed meanwhile (a delete), or being replaced
        table = rec_path.parent.name
        batch_id = rec_path.stem.split("=", 1)[1] if rec_path.stem.startswith("batch_id=") else None
        path = self.root / rec["path"]
        try:
            st = path.stat()
        except FileNotFoundError:
            return LakeDamage(table, batch_id, path, "missing")
        if st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime_ns"]:
            return None
        if st.st_size == rec["size"] and _sha256(path) == rec["sha256"]:
            with contextlib.suppress(OSError):
                self._record(table, batch_id, path)
            return None
        return LakeDamage(table, batch_id, path, f"changed since it was written (size {st.st_size}, written {rec['size']})")

    def quarantine(self, damage: LakeDamage) -> Path | None:
        """Move a damaged file out of the views to ``_quarantine/`` (kept for inspection); returns where."""
        if not damage.path.exists():
            return None
        dest = self.root / QUARANTINE_DIR / damage.path.relative_to(self.root).parent / \
            f"{damage.path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{uuid.uuid4().hex[:6]}"
        with _guard_write(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(damage.path, dest)
        return dest

    def forget(self, table: str, batch_id: str | None) -> None:
        """Drop the record of a file the platform itself removed (or whose table is recomputed whole)."""
        self.file_record_path(table, batch_id).unlink(missing_ok=True)

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
        shutil.rmtree(self.partition_path(table, batch_id).parent, ignore_errors=True)
        self.forget(table, batch_id)

    # -- reads --------------------------------------------------------------------------------------
    def has_partition(self, table: str, batch_id: str) -> bool:
        return self.partition_path(table, batch_id).exists()

    def read_partition(self, table: str, batch_id: str) -> pl.DataFrame:
        path = self.partition_path(table, batch_id)
        if not path.exists():
            return empty_frame(table) if table in ALL_TABLES else pl.DataFrame()
        return read_parquet(path)

    def partitions(self, table: str) -> list[str]:
        base = self.table_dir(table)
        if not base.is_dir():
            return []
        return sorted(
            p.name.split("=", 1)[1]
            for p in base.iterdir()
            if p.name.startswith("batch_id=") and (p / "part.parquet").exists()
        )

    def read_table(self, table: str) -> pl.DataFrame:
        """All partitions of a table (or the global file), typed; empty frame when nothing is written."""
        if table in PARTITIONED_TABLES:
            files = [self.partition_path(table, b) for b in self.partitions(table)]
            if not files:
                return empty_frame(table)
            return pl.concat([read_parquet(f) for f in files], how="diagonal_relaxed")
        path = self.global_path(table)
        if not path.exists():
            return empty_frame(table) if table in ALL_TABLES else pl.DataFrame()
        return read_parquet(path)

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
        """Tables written by SQL models (a global ``part.parquet`` under a name no Python asset owns)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if p.is_dir() and p.name not in ALL_TABLES and (p / "part.parquet").exists()
        )


# -- the DuckDB warehouse (views only) --------------------------------------------------------------

def _scan(lake: Lake, table: str) -> str:
    path = lake.glob(table) if table in ALL_TABLES else str(lake.global_path(table))
    return f"SELECT * FROM read_parquet({sql_literal(path)}, union_by_name=true)"


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
    "clusters": """
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
    "clusters": ("recluster_assignments", "cluster_assignments", "raw_records", "aligned_records"),
    **{f"{t}_history": (t,) for t in RECORD_TABLES},
    **{t: (t, "raw_records", "aligned_records") for t in RECORD_TABLES},
}


def view_statements(lake: Lake) -> list[tuple[str, str]]:
    """Every warehouse view as (name, SELECT), in dependency order."""
    views: list[tuple[str, str]] = []
    for table in [*ALL_TABLES, *lake.model_tables()]:
        if table in RECORD_TABLES:
            views.append((f"{table}_history", _scan(lake, table)))
        else:
            views.append((table, _scan(lake, table)))
    views += [(name, DERIVED_VIEWS[name]) for name in ("record_versions", "current_records", "record_deletions")]
    views += [
        (t, f"SELECT h.* FROM {sql_identifier(t + '_history')} h SEMI JOIN current_records c "
            "ON h.record_id = c.record_id AND h.batch_id = c.batch_id")
        for t in RECORD_TABLES
    ]
    views.append(("clusters", DERIVED_VIEWS["clusters"]))
    return views


def _create_view(name: str, select: str) -> str:
    return f"CREATE OR REPLACE VIEW {sql_identifier(name)} AS {select.strip()}"


def register_views(con: duckdb.DuckDBPyConnection, lake: Lake, extra: Mapping[str, str] | None = None) -> None:
    """Create the lake's views on any connection (an in-memory one for computing, the warehouse file for users)."""
    lake.ensure_initialized()
    for name, select in view_statements(lake):
        con.execute(_create_view(name, select))
    for name, sql in (extra or {}).items():
        con.execute(_create_view(name, sql))


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out waiting for lock {path}") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class WarehouseBusy(RuntimeError):
    """The DuckDB file is held by another process (e.g. a user's open read-write session)."""


def refresh_warehouse(lake: Lake, duckdb_path: Path, timeout_s: float = 30.0) -> bool:
    """(Re)create the views in the warehouse file when the set of tables changed. Returns True if written.

    A fingerprint of the view definitions is kept next to the file so unchanged views cost no write (and
    never contend with a user holding the file). Raises ``WarehouseBusy`` after ``timeout_s`` of retries.
    """
    lake.ensure_initialized()
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
        refresh_warehouse(lake, duckdb_path, timeout_s=5.0)
        return duckdb.connect(str(duckdb_path), read_only=True)
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


def connect_restricted(lake: Lake, duckdb_path: Path | None = None) -> duckdb.DuckDBPyConnection:
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
        register_views(con, lake)
        return restrict_connection(con, [lake.root])
    except BaseException:
        con.close()
        raise


def execute_restricted(con: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> duckdb.DuckDBPyConnection:
    """``check_restricted_sql(sql)`` then ``con.execute(sql, params)`` (a ``connect_restricted`` connection)."""
    check_restricted_sql(sql)
    return con.execute(sql, params) if params is not None else con.execute(sql)
