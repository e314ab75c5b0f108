"""Raw layer: read a landing batch, validate every line and its media, quarantine what is bad.

One partition per batch. Each stage writes its rows to the lake and its rejections to a per-stage file;
``rejected_records`` gathers them and checks that every manifest line is accounted for.
"""


import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from mm_platform.defs.ingest.checks import EVERY_LINE_ACCOUNTED, every_line_accounted
from mm_platform.defs.metadata import counts, preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import LandingResource, WarehouseResource
from mm_platform.lib.lake import ALL_TABLES
from mm_platform.lib.manifest import MANIFEST_NAME, Rejection, parse_manifest
from mm_platform.lib.media import MediaError, inspect_image, resolve_media_path, text_sha256

#: Modalities the manifest may carry that this version does not process yet: they are quarantined with a
#: clear reason (the record keeps its other modalities), never silently dropped.
UNSUPPORTED_MODALITIES = ("audio", "fields")


def _rejection_frame(rows: list[Rejection], stage: str) -> pl.DataFrame:
    now = datetime.now(UTC)
    return pl.DataFrame(
        {
            "batch_id": [r.batch_id for r in rows],
            "line_number": [r.line_number for r in rows],
            "record_id": [r.record_id for r in rows],
            "modality": [r.modality for r in rows],
            "reason": [r.reason for r in rows],
            "detail": [r.detail for r in rows],
            "stage": [stage] * len(rows),
            "rejected_at": [now] * len(rows),
        },
        schema_overrides={"record_id": pl.String, "line_number": pl.Int32},
    )


@dg.asset(
    partitions_def=batches_partitions,
    group_name="raw",
    kinds={"python", "parquet"},
    tags={"layer": "raw"},
)
def raw_records(
    context: dg.AssetExecutionContext, landing: LandingResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Every valid manifest line of a landing batch, one row per record (with its op, declared media,
    manifest hash and ``landed_at``, the manifest's mtime, which orders record versions across batches).
    Malformed lines and broken optional fields are quarantined with a reason."""
    batch_id = context.partition_key
    batch_dir = landing.batch_dir(batch_id)
    if not (batch_dir / MANIFEST_NAME).exists():
        raise dg.Failure(
            f"batch {batch_id!r} has no {MANIFEST_NAME} in {batch_dir} (moved or deleted after it was registered?)"
        )
    landed_at = datetime.fromtimestamp((batch_dir / MANIFEST_NAME).stat().st_mtime, UTC)
    parsed = parse_manifest(batch_dir, batch_id)
    rejections = list(parsed.rejections)
    for rec in parsed.records:
        for modality in UNSUPPORTED_MODALITIES:
            if rec.op == "upsert" and getattr(rec, modality) is not None:
                rejections.append(Rejection(
                    batch_id, rec.line_number, rec.record_id, modality, "unsupported_modality",
                    f"{modality} is not processed by this version of mm_platform; the record is kept "
                    "with its other modalities",
                ))
    now = datetime.now(UTC)
    recs = parsed.records
    df = pl.DataFrame(
        {
            "batch_id": [batch_id] * len(recs),
            "line_number": [r.line_number for r in recs],
            "record_id": [r.record_id for r in recs],
            "op": [r.op for r in recs],
            "timestamp": [r.timestamp for r in recs],
            "label": [r.label for r in recs],
            "text_declared": [r.text is not None for r in recs],
            "image_path": [r.image for r in recs],
            "audio_path": [r.audio for r in recs],
            "fields_json": [json.dumps(r.fields, sort_keys=True) if r.fields is not None else None for r in recs],
            "manifest_sha256": [parsed.manifest_sha256] * len(recs),
            "ingested_at": [now] * len(recs),
            "landed_at": [landed_at] * len(recs),
            "text": [r.text for r in recs],
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC"), "label": pl.String, "image_path": pl.String,
                          "audio_path": pl.String, "fields_json": pl.String, "text": pl.String},
    )
    lake = warehouse.lake
    lake.write_partition("raw_records", batch_id, df)
    rej = _rejection_frame(rejections, "raw_records")
    lake.write_stage_rejections("raw_records", batch_id, rej)
    context.log.info(f"batch {batch_id}: {parsed.n_lines} lines, {df.height} records, {rej.height} rejections")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "manifest_lines": parsed.n_lines,
            "manifest_sha256": parsed.manifest_sha256,
            "rejections": rej.height,
            "rejections_by_reason": counts(rej["reason"]) if rej.height else {},
            "ops": counts(df["op"]) if df.height else {},
            "preview": preview(df, ["record_id", "op", "label", "text", "image_path", "timestamp"]),
        }
    )


@dg.asset(
    partitions_def=batches_partitions,
    deps=[raw_records],
    group_name="raw",
    kinds={"python", "parquet"},
    tags={"layer": "raw"},
)
def raw_text(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The validated text of each record (Unicode NFC, stripped, non-empty, UTF-8 safe) with its content hash."""
    batch_id = context.partition_key
    lake = warehouse.lake
    src = lake.read_partition("raw_records", batch_id).filter(
        (pl.col("op") == "upsert") & pl.col("text").is_not_null()
    )
    df = src.select(
        "record_id", "batch_id", "line_number", "text",
        pl.col("text").map_elements(text_sha256, return_dtype=pl.String).alias("text_sha256"),
        pl.col("text").str.len_chars().cast(pl.Int32).alias("n_chars"),
    )
    lake.write_partition("raw_text", batch_id, df)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "mean_chars": float(df["n_chars"].mean()) if df.height else 0.0,
            "distinct_texts": df["text_sha256"].n_unique() if df.height else 0,
            "preview": preview(df, ["record_id", "text", "n_chars"]),
        }
    )


def _inspect_one(batch_dir, row: dict) -> tuple[dict | None, Rejection | None]:
    try:
        path = resolve_media_path(batch_dir, row["image_path"])
        info = inspect_image(path)
    except MediaError as exc:
        return None, Rejection(row["batch_id"], row["line_number"], row["record_id"], "image", exc.reason, exc.detail)
    return {
        "record_id": row["record_id"], "batch_id": row["batch_id"], "line_number": row["line_number"],
        "image_path": row["image_path"], "uri": info.path, "sha256": info.sha256, "width": info.width,
        "height": info.height, "format": info.format, "mode": info.mode, "n_bytes": info.n_bytes,
    }, None


@dg.asset(
    partitions_def=batches_partitions,
    deps=[raw_records],
    group_name="raw",
    kinds={"python", "parquet"},
    tags={"layer": "raw"},
)
def raw_images(
    context: dg.AssetExecutionContext, landing: LandingResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Every image a record points at, fully decoded once to prove it is readable, with size, format and
    content hash. Missing, escaping, truncated, undecodable and oversized (decompression-bomb) files are
    quarantined."""
    batch_id = context.partition_key
    batch_dir = landing.batch_dir(batch_id)
    lake = warehouse.lake
    src = lake.read_partition("raw_records", batch_id).filter(
        (pl.col("op") == "upsert") & pl.col("image_path").is_not_null()
    )
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda r: _inspect_one(batch_dir, r), src.iter_rows(named=True)))
    rows = [r for r, _ in results if r is not None]
    rejections = [j for _, j in results if j is not None]
    df = pl.DataFrame(rows, schema=ALL_TABLES["raw_images"])
    lake.write_partition("raw_images", batch_id, df)
    rej = _rejection_frame(rejections, "raw_images")
    lake.write_stage_rejections("raw_images", batch_id, rej)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "rejections": rej.height,
            "rejections_by_reason": counts(rej["reason"]) if rej.height else {},
            "formats": counts(df["format"]) if df.height else {},
            "preview": preview(df, ["record_id", "image_path", "width", "height", "format"]),
        }
    )


@dg.asset(
    partitions_def=batches_partitions,
    deps=[raw_records, raw_text, raw_images],
    group_name="aligned",
    kinds={"python", "parquet"},
    tags={"layer": "aligned"},
)
def aligned_records(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """One row per record with at least one valid modality: its timestamp, label and which modalities it has
    (text, image; audio and tabular arrive later). A record whose every modality was rejected is not here —
    its lines are in ``rejected_records``."""
    batch_id = context.partition_key
    lake = warehouse.lake
    recs = lake.read_partition("raw_records", batch_id).filter(pl.col("op") == "upsert")
    text = lake.read_partition("raw_text", batch_id).select("record_id", "text_sha256")
    images = lake.read_partition("raw_images", batch_id).select("record_id", pl.col("sha256").alias("image_sha256"))
    df = (
        recs.select("record_id", "batch_id", "line_number", "timestamp", "label")
        .join(text, on="record_id", how="left")
        .join(images, on="record_id", how="left")
        .with_columns(
            pl.col("text_sha256").is_not_null().alias("has_text"),
            pl.col("image_sha256").is_not_null().alias("has_image"),
            pl.lit(False).alias("has_audio"),
            pl.lit(False).alias("has_tabular"),
        )
        .filter(pl.col("has_text") | pl.col("has_image"))
        .sort("line_number")
    )
    lake.write_partition("aligned_records", batch_id, df)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "with_text": int(df["has_text"].sum()),
            "with_image": int(df["has_image"].sum()),
            "with_both": int((df["has_text"] & df["has_image"]).sum()),
            "labelled": int(df["label"].is_not_null().sum()),
            "preview": preview(df, ["record_id", "label", "has_text", "has_image", "timestamp"]),
        }
    )


@dg.asset(
    partitions_def=batches_partitions,
    deps=[raw_records, raw_text, raw_images, aligned_records],
    group_name="raw",
    kinds={"python", "parquet"},
    tags={"layer": "raw"},
    check_specs=[dg.AssetCheckSpec(EVERY_LINE_ACCOUNTED, asset="rejected_records")],
)
def rejected_records(
    context: dg.AssetExecutionContext, landing: LandingResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The quarantine: one row per problem found in a batch (line number, record_id when known, modality,
    reason code and a specific detail), gathered from every stage. A record kept with its valid modalities
    also appears here for the broken one."""
    batch_id = context.partition_key
    lake = warehouse.lake
    df = lake.read_stage_rejections(batch_id).sort("line_number", "modality")
    lake.write_partition("rejected_records", batch_id, df)
    aligned = lake.read_partition("aligned_records", batch_id)
    deletes = lake.read_partition("raw_records", batch_id).filter(pl.col("op") == "delete")
    check = every_line_accounted(landing.batch_dir(batch_id), aligned, df, deletes)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "rejected_lines": df["line_number"].n_unique() if df.height else 0,
            "by_reason": counts(df["reason"]) if df.height else {},
            "by_modality": counts(df["modality"]) if df.height else {},
            "preview": preview(df, ["line_number", "record_id", "modality", "reason", "detail"], n=10),
        },
        check_results=[check],
    )
