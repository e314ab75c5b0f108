"""Aligned layer: each record's tabular modality (manifest fields plus the stream readings matched to it in
time) and one row per record with its valid modalities and stream readings (``aligned_records``). The rows are
built by :mod:`mm_platform.lib.features.raw_tables`; the stream as-of join is ``defs/streams``.
"""

import dagster as dg
import polars as pl

from mm_platform.defs.metadata import counts, preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import WarehouseResource
from mm_platform.lib.storage.lake import ALL_TABLES
from mm_platform.lib.features.raw_tables import aligned_frame, modality_combinations, rejection_frame, typed_tabular


@dg.asset(
    partitions_def=batches_partitions,
    deps=["raw_records", "stream_features"],
    group_name="aligned",  # it joins the stream readings matched in time to the fields
    kinds={"python", "parquet"},
    tags={"layer": "aligned"},
)
def raw_tabular(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The tabular modality of each record as typed columns: its manifest ``fields`` plus the stream readings
    matched to it (``<stream>.<column>``), typed by the fitted tabular encoder (numeric → DOUBLE, categorical
    → VARCHAR). The encoder is fitted on the first batch that has fields (standardisation, category lists)
    and stored versioned under ``lake/_models/tabular``, so every later batch is typed and encoded the same
    way. Unusable values (text in a numeric field) are quarantined and the field counts as missing; the
    record keeps its other fields."""
    batch_id = context.partition_key
    lake = warehouse.lake
    recs = lake.read_partition("raw_records", batch_id).filter(pl.col("op") == "upsert")
    streams = lake.read_partition("stream_features", batch_id)
    df, rejections, md_state = typed_tabular(lake, batch_id, recs, streams)
    lake.write_partition("raw_tabular", batch_id, df)
    rej = rejection_frame(rejections, "raw_tabular")
    lake.write_stage_rejections("raw_tabular", batch_id, rej)
    if md_state.get("unknown_fields"):
        context.log.warning(
            f"fields not known to tabular encoder {md_state['encoder_version']} are stored but not embedded: "
            f"{md_state['unknown_fields']} (to refit: delete lake/_models/tabular/current.json, then "
            "`mm-platform ingest --force`)"
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "rejections": rej.height,
            "rejections_by_reason": counts(rej["reason"]) if rej.height else {},
            **md_state,
            "preview": preview(df, ["record_id", *[c for c in df.columns if c not in ALL_TABLES["raw_tabular"]
                                                   and c != "values_json"][:6]]),
        }
    )


@dg.asset(
    partitions_def=batches_partitions,
    deps=["raw_records", "raw_text", "raw_images", "raw_audio", "raw_tabular", "stream_features"],
    group_name="aligned",
    kinds={"python", "parquet"},
    tags={"layer": "aligned"},
)
def aligned_records(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """One row per record with at least one valid modality: its timestamp, entity, label, which modalities
    it has (text, image, audio, tabular) with their content hashes, and the stream readings aligned to it
    (as-of join per entity within the configured tolerance: one ``<stream>__<column>`` column per value and
    ``<stream>__lag_s``; see ``alignment_report``). A record whose every modality was rejected is not here —
    its lines are in ``rejected_records``."""
    batch_id = context.partition_key
    lake = warehouse.lake
    recs = lake.read_partition("raw_records", batch_id).filter(pl.col("op") == "upsert")
    df = aligned_frame(recs, lake.read_partition("raw_text", batch_id), lake.read_partition("raw_images", batch_id),
                       lake.read_partition("raw_audio", batch_id), lake.read_partition("raw_tabular", batch_id),
                       lake.read_partition("stream_features", batch_id))
    lake.write_partition("aligned_records", batch_id, df)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            **{f"with_{m}": int(df[f"has_{m}"].sum()) for m in ("text", "image", "audio", "tabular")},
            "with_stream_match": int((df["streams_matched"] > 0).sum()),
            "modality_combinations": counts(modality_combinations(df)) if df.height else {},
            "labelled": int(df["label"].is_not_null().sum()),
            "preview": preview(df, ["record_id", "label", "has_text", "has_image", "has_audio", "has_tabular",
                                    "streams_matched"]),
        }
    )
