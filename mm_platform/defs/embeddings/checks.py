"""Checks on embedding partitions: every input row embedded once, vectors finite and unit-norm."""

from __future__ import annotations

import dagster as dg
import numpy as np
import polars as pl

from mm_platform.lib.arrays import VectorColumnError, embedding_matrix

VECTORS_VALID = "vectors_valid"
VECTORS_VALID_DESCRIPTION = (
    "One embedding row per input record of the batch, no duplicates, finite values, unit L2 norm and a "
    "single dimension."
)


def vectors_valid(
    df: pl.DataFrame, expected_ids: set[str], asset: str, batch_id: str | None = None
) -> dg.AssetCheckResult:
    """One row per expected record, no duplicates, finite values, unit L2 norm, one dimension."""
    ids = df["record_id"].to_list()
    problems: list[str] = []
    if len(ids) != len(set(ids)):
        problems.append(f"{len(ids) - len(set(ids))} duplicate record_ids")
    missing = expected_ids - set(ids)
    if missing:
        problems.append(f"{len(missing)} records without a vector, e.g. {sorted(missing)[:5]}")
    dims: list[int] = []
    if df.height:
        try:
            mat = embedding_matrix(df)
        except VectorColumnError as exc:
            problems.append(str(exc))
        else:
            if not np.isfinite(mat).all():
                problems.append("non-finite values")
            norms = np.linalg.norm(mat, axis=1)
            bad = int((np.abs(norms - 1.0) > 1e-3).sum())
            if bad:
                problems.append(f"{bad} vectors not unit-norm")
        dims = sorted(set(df["dim"].to_list()))
        if len(dims) > 1:
            problems.append(f"mixed dimensions {dims}")
    return dg.AssetCheckResult(
        check_name=VECTORS_VALID,
        asset_key=asset,
        passed=not problems,
        description=f"batch {batch_id}: one unit-norm, finite vector per record of {asset}"
        if batch_id else f"one unit-norm, finite vector per record of {asset}",
        metadata={"batch_id": batch_id or "", "rows": df.height, "expected": len(expected_ids), "dims": dims,
                  "problems": problems},
    )
