"""The lake's tables and their fixed column types (which are partitioned per batch, which are global,
which hold one row per record version), and ``conform``, which casts a frame to its table's schema."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa

#: One row per stream and batch: how the stream aligned to the batch's records (see features.streams).
ALIGNMENT_REPORT_SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String(),
    "stream": pl.String(),
    "path": pl.String(),
    "rows": pl.Int64(),
    "entities": pl.Int64(),
    "bad_rows": pl.Int64(),
    "bad_cells": pl.Int64(),
    "duplicates": pl.Int64(),
    "records": pl.Int64(),
    "records_with_timestamp": pl.Int64(),
    "matched": pl.Int64(),
    "unmatched": pl.Int64(),
    "no_timestamp": pl.Int64(),
    "no_entity": pl.Int64(),
    "coverage": pl.Float64(),
    "lag_median_s": pl.Float64(),
    "lag_p95_s": pl.Float64(),
    "lag_max_s": pl.Float64(),
    "tolerance_s": pl.Float64(),
    "strategy": pl.String(),
}


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


# ---- shared by lake.py and lake_migrate.py (kept here so neither imports the other)

def read_parquet(path: Path) -> pl.DataFrame:
    """Read one Parquet file through a single open handle, so a concurrent atomic replace of the path can
    never mix two versions (polars may open a path more than once per read)."""
    with open(path, "rb") as fh:
        return pl.read_parquet(fh)


#: Where a Parquet-layout lake is moved, kept as it was, when it is migrated to Delta on first start.
LEGACY_DIR = "_legacy_parquet"
#: One empty file per SQL model table (its name), so the views list them wherever the lake lives.
MODEL_TABLES_DIR = "_model_tables"
#: The Delta partition column: the batch whose run wrote the rows (a row's own ``batch_id`` may differ, e.g.
#: an eager cluster assignment of an older record). Never shown: the views and reads drop it.
PART = "_lake_batch"


def _arrow_for(df: pl.DataFrame, current: dict[str, pl.DataType] | None) -> pa.Table:
    """``df`` as Arrow for a Delta write: all-null columns get a real type, and extra columns that the
    table already holds with another type are cast to it (Delta keeps one type per column)."""
    fixes = []
    for name, dtype in df.schema.items():
        want = (current or {}).get(name)
        if want is not None and want != dtype:
            fixes.append(pl.col(name).cast(want, strict=False))
        elif dtype == pl.Null:
            fixes.append(pl.col(name).cast(pl.String))
    return (df.with_columns(fixes) if fixes else df).to_arrow()


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
