"""Quarantine layer: every problem found in a batch, gathered from every stage, and the check that every
manifest line is accounted for (``checks.py``)."""

import dagster as dg
import polars as pl

from mm_platform.defs.metadata import counts, preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.quarantine.checks import (
    EVERY_LINE_ACCOUNTED,
    EVERY_LINE_ACCOUNTED_DESCRIPTION,
    every_line_accounted,
)
from mm_platform.defs.resources import LandingResource, WarehouseResource


@dg.asset(
    partitions_def=batches_partitions,
    # the embedding assets quarantine media that fail inside a Ray task (MM_COMPUTE=ray): gather after them
    deps=["raw_records", "raw_text", "raw_images", "raw_audio", "raw_tabular", "stream_features", "aligned_records",
          "text_embeddings", "image_embeddings", "audio_embeddings"],
    group_name="quarantine",
    kinds={"python", "parquet"},
    tags={"layer": "quarantine"},
    check_specs=[dg.AssetCheckSpec(EVERY_LINE_ACCOUNTED, asset="rejected_records",
                                 description=EVERY_LINE_ACCOUNTED_DESCRIPTION)],
)
def rejected_records(
    context: dg.AssetExecutionContext, landing: LandingResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The quarantine: one row per problem found in a batch (line number, record_id when known, modality,
    reason code and a specific detail), gathered from every stage. A record kept with its valid modalities
    also appears here for the broken one. Problems of a batch's stream files (not of a manifest line) have
    line number 0 and modality ``stream``."""
    batch_id = context.partition_key
    lake = warehouse.lake
    df = lake.read_stage_rejections(batch_id).sort("line_number", "modality")
    lake.write_partition("rejected_records", batch_id, df)
    aligned = lake.read_partition("aligned_records", batch_id)
    deletes = lake.read_partition("raw_records", batch_id).filter(pl.col("op") == "delete")
    check = every_line_accounted(landing.batch_dir(batch_id), aligned, df, deletes, batch_id)
    lines = df.filter(pl.col("line_number") > 0)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "rejected_lines": lines["line_number"].n_unique() if lines.height else 0,
            "by_reason": counts(df["reason"]) if df.height else {},
            "by_modality": counts(df["modality"]) if df.height else {},
            "preview": preview(df, ["line_number", "record_id", "modality", "reason", "detail"], n=10),
        },
        check_results=[check],
    )
