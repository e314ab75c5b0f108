"""Data-quality checks of the ingest layer (pure functions; the assets emit them as AssetCheckResults)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl

from mm_platform.lib.landing.manifest import MANIFEST_NAME

EVERY_LINE_ACCOUNTED = "every_line_accounted"
EVERY_LINE_ACCOUNTED_DESCRIPTION = (
    "Every non-blank line of the batch manifest ends up in aligned_records, in rejected_records (with a "
    "reason), or is a delete: nothing a producer sent disappears silently."
)


def manifest_line_numbers(batch_dir: Path) -> set[int]:
    """1-based numbers of the non-blank lines of a batch manifest."""
    with open(batch_dir / MANIFEST_NAME, "rb") as fh:
        return {i for i, line in enumerate(fh, start=1) if line.strip()}


def every_line_accounted(
    batch_dir: Path, aligned: pl.DataFrame, rejected: pl.DataFrame, deletes: pl.DataFrame, batch_id: str | None = None
) -> dg.AssetCheckResult:
    """Every non-blank manifest line is in ``aligned_records``, in ``rejected_records``, or is a delete."""
    lines = manifest_line_numbers(batch_dir)
    seen = (
        set(aligned["line_number"].to_list())
        | set(rejected["line_number"].to_list())
        | set(deletes["line_number"].to_list())
    )
    missing = sorted(lines - seen)
    batch_id = batch_id or batch_dir.name
    return dg.AssetCheckResult(
        check_name=EVERY_LINE_ACCOUNTED,
        passed=not missing,
        metadata={
            "batch_id": batch_id,
            "manifest_lines": len(lines),
            "aligned_lines": aligned.height,
            "rejected_lines": len(set(rejected["line_number"].to_list())),
            "delete_lines": deletes.height,
            "unaccounted_lines": missing[:50],
        },
        description=f"batch {batch_id}: every manifest line ends up aligned, rejected (with a reason), or is a delete",
    )
