"""One-time migration of a Parquet-layout lake (``<lake>/<table>/batch_id=<id>/part.parquet``, global and
SQL-model tables as ``<lake>/<table>/part.parquet``) to one Delta table per lake table.

Nothing is lost: each old table directory is first moved, whole, to ``<lake>/_legacy_parquet/<table>``
(a rename), then its rows are written to the Delta table in ONE commit (a crash midway leaves either no
Delta table or a complete one; the next start redoes an unfinished table), and only then marked done. The
old files stay under ``_legacy_parquet/`` for the user to delete once satisfied.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from mm_platform.lib.storage import delta as delta_store
from mm_platform.lib.storage.tables import (
    ALL_TABLES,
    LEGACY_DIR,
    MODEL_TABLES_DIR,
    PART,
    PARTITIONED_TABLES,
    _arrow_for,
    _file_lock,
    conform,
    empty_frame,
    read_parquet,
)

if TYPE_CHECKING:
    from mm_platform.lib.storage.lake import Lake

log = logging.getLogger("mm_platform.lake")
DONE = ".migrated"


def _legacy_files(table_dir: Path) -> list[Path]:
    return sorted([*table_dir.glob("batch_id=*/part.parquet"), *table_dir.glob("part.parquet")])


def legacy_tables(root: Path) -> list[Path]:
    """Table directories of the Parquet layout under ``root`` (no ``_delta_log``, Parquet files as written)."""
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir()
                  if d.is_dir() and not d.name.startswith(("_", ".")) and not (d / "_delta_log").exists()
                  and (_legacy_files(d) or (d / "_schema" / "part.parquet").exists()))


def migrate_parquet_layout(lake: Lake) -> list[str]:
    """Migrate what is left of a Parquet-layout lake under ``lake.root`` (once; cheap when nothing is)."""

    legacy = lake.root / LEGACY_DIR
    if not legacy_tables(lake.root) and not _unfinished(legacy):
        return []
    done: list[str] = []
    with _file_lock(lake.root / ".migrate.lock", timeout_s=600):
        legacy.mkdir(parents=True, exist_ok=True)
        for table_dir in legacy_tables(lake.root):
            os.replace(table_dir, legacy / table_dir.name)
        old_records = lake.root / "_files"
        if old_records.is_dir() and any(old_records.glob("*/*.json")):
            os.replace(old_records, legacy / "_files")
        for table_dir in _unfinished(legacy):
            rows = _migrate_table(lake, table_dir)
            (table_dir / DONE).write_text(str(rows))
            done.append(table_dir.name)
            log.warning("lake table %s migrated to Delta Lake (%d rows); the old files are kept in %s",
                        table_dir.name, rows, table_dir)
    return done


def _unfinished(legacy: Path) -> list[Path]:
    if not legacy.is_dir():
        return []
    return sorted(d for d in legacy.iterdir() if d.is_dir() and d.name != "_files" and not (d / DONE).exists())


def _migrate_table(lake: Lake, table_dir: Path) -> int:
    """All partitions of one old table into its Delta table: one overwrite commit. Returns the row count."""

    table = table_dir.name
    frames = []
    for f in _legacy_files(table_dir):
        df = read_parquet(f)
        # a partition written before a column existed (e.g. landed_at): that column is NULL, as the old
        # union_by_name views read it
        df = conform(table, df.with_columns(pl.lit(None).alias(c) for c in ALL_TABLES.get(table, {})
                                            if c not in df.columns))
        if f.parent.name.startswith("batch_id="):
            df = df.with_columns(pl.lit(f.parent.name.split("=", 1)[1], pl.String).alias(PART))
        frames.append(df)
    if table in ALL_TABLES:
        empty = empty_frame(table)
        frames.insert(0, empty.with_columns(pl.lit(None, pl.String).alias(PART)) if table in PARTITIONED_TABLES else empty)
    else:
        (lake.root / MODEL_TABLES_DIR).mkdir(parents=True, exist_ok=True)
        (lake.root / MODEL_TABLES_DIR / table).write_text(table)
    df = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    part = [PART] if table in PARTITIONED_TABLES else None
    delta_store.write_arrow(lake.table_uri(table), _arrow_for(df, None), lake.storage_options,
                            partition_by=part, schema_mode="overwrite")
    for batch_id in sorted(set(df[PART].to_list())) if part else [None]:
        lake._record(table, batch_id)
    return df.height
