"""Metadata of the classifier assets."""

import dagster as dg
import polars as pl

from mm_platform.defs.metadata import table


def confusion_table(metric: dict) -> dg.MetadataValue:
    """The cross-validated confusion matrix of one strategy as a table: a row per true class, a column per
    predicted class (counts), so the UI shows which classes the classifier mixes up."""
    classes = [str(c) for c in metric["classes"]]
    rows = [{"true_label": c, **{f"→ {p}": int(v) for p, v in zip(classes, counts, strict=True)}}
            for c, counts in zip(classes, metric["confusion"], strict=True)]
    return table(pl.DataFrame(rows), n=len(rows))
