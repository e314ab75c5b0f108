"""Small helpers that turn results into Dagster materialization metadata (previews, counts)."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import polars as pl


def _cell(value: object, width: int = 48) -> str:
    if isinstance(value, list | tuple):
        text = f"[{len(value)} items]" if len(value) > 6 else ", ".join(map(str, value))
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def preview(df: pl.DataFrame, columns: Sequence[str] | None = None, n: int = 5) -> dg.MetadataValue:
    """A markdown table of the first ``n`` rows (vectors shown as their length)."""
    cols = [c for c in (columns or df.columns) if c in df.columns]
    head = df.select(cols).head(n)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    if df.height > n:
        lines.append(f"\n… {df.height - n} more rows")
    return dg.MetadataValue.md("\n".join(lines))


def counts(series: pl.Series) -> dict[str, int]:
    vc = series.value_counts(sort=True)
    return {str(r[0]): int(r[1]) for r in vc.iter_rows()}
