"""Raw layer: read a landing batch, validate every line and its media, quarantine what is bad.

One partition per batch. Each stage writes its rows to the lake and its rejections to a per-stage file;
``rejected_records`` (``defs/quarantine``) gathers them and checks that every manifest line is accounted for.
The rows are built by :mod:`mm_platform.lib.features.raw_tables`.
"""


from datetime import UTC, datetime

import dagster as dg

from mm_platform.defs.metadata import counts, preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import LandingResource, WarehouseResource
from mm_platform.lib.landing.manifest import MANIFEST_NAME, parse_manifest
from mm_platform.lib.features.raw_tables import (
    audio_row,
    image_row,
    inspect_batch_media,
    raw_records_frame,
    raw_text_frame,
    rejection_frame,
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
    df = raw_records_frame(parsed, batch_id, landed_at)
    lake = warehouse.lake
    lake.write_partition("raw_records", batch_id, df)
    rej = rejection_frame(list(parsed.rejections), "raw_records")
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
    deps=["raw_records"],
    group_name="raw",
    kinds={"python", "parquet"},
    tags={"layer": "raw"},
)
def raw_text(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The validated text of each record (Unicode NFC, stripped, non-empty, UTF-8 safe) with its content hash."""
    batch_id = context.partition_key
    lake = warehouse.lake
    df = raw_text_frame(lake.read_partition("raw_records", batch_id))
    lake.write_partition("raw_text", batch_id, df)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "mean_chars": float(df["n_chars"].mean()) if df.height else 0.0,
            "distinct_texts": df["text_sha256"].n_unique() if df.height else 0,
            "preview": preview(df, ["record_id", "text", "n_chars"]),
        }
    )


@dg.asset(
    partitions_def=batches_partitions,
    deps=["raw_records"],
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
    batch_dir = landing.batch_dir(context.partition_key)
    df, rej = inspect_batch_media(warehouse.lake, context.partition_key, "raw_images", "image_path",
                                  lambda r: image_row(batch_dir, r))
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
    deps=["raw_records"],
    group_name="raw",
    kinds={"python", "parquet"},
    tags={"layer": "raw"},
)
def raw_audio(
    context: dg.AssetExecutionContext, landing: LandingResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Every audio clip a record points at (WAV, FLAC, OGG/Vorbis or MP3), fully decoded once through
    soundfile to prove it is usable, with format, sample rate, channels, duration, level and content hash.
    Missing, escaping, corrupt, truncated, empty, silent-only, non-finite, over-long and oversized files are
    quarantined; the mono mix and resampling to the encoder's rate happen when it is embedded."""
    batch_dir = landing.batch_dir(context.partition_key)
    max_s = float(landing.max_audio_seconds)
    df, rej = inspect_batch_media(warehouse.lake, context.partition_key, "raw_audio", "audio_path",
                                  lambda r: audio_row(batch_dir, r, max_s))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "rejections": rej.height,
            "rejections_by_reason": counts(rej["reason"]) if rej.height else {},
            "formats": counts(df["format"]) if df.height else {},
            "total_seconds": float(df["duration_s"].sum()) if df.height else 0.0,
            "preview": preview(df, ["record_id", "audio_path", "format", "sample_rate", "channels", "duration_s"]),
        }
    )
