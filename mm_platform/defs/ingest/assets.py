"""Raw layer: read a landing batch, validate every line and its media, quarantine what is bad.

One partition per batch. Each stage writes its rows to the lake and its rejections to a per-stage file;
``rejected_records`` gathers them and checks that every manifest line is accounted for.
"""


import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from mm_platform.defs.ingest.checks import EVERY_LINE_ACCOUNTED, EVERY_LINE_ACCOUNTED_DESCRIPTION, every_line_accounted
from mm_platform.defs.metadata import counts, preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import LandingResource, WarehouseResource
from mm_platform.lib.audio import load_audio
from mm_platform.lib.lake import ALL_TABLES
from mm_platform.lib.manifest import MANIFEST_NAME, Rejection, parse_manifest
from mm_platform.lib.model_files import tabular_state_dir
from mm_platform.lib.media import MediaError, inspect_image, resolve_media_path, text_sha256
from mm_platform.lib.tabular import fit_or_load, type_rows, typed_frame

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
            "entity_id": [r.entity_id for r in recs],
            "text": [r.text for r in recs],
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC"), "label": pl.String, "image_path": pl.String,
                          "audio_path": pl.String, "fields_json": pl.String, "text": pl.String,
                          "entity_id": pl.String},
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


def inspect_batch_media(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, table: str, path_col: str,
    inspect: Callable[[dict], tuple[dict | None, Rejection | None]],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Inspect every media file the batch's upserts declare in ``path_col`` (4 threads), write the good ones
    to ``table`` and the failures to that stage's rejections; returns (rows, rejections)."""
    batch_id = context.partition_key
    lake = warehouse.lake
    src = lake.read_partition("raw_records", batch_id).filter(
        (pl.col("op") == "upsert") & pl.col(path_col).is_not_null()
    )
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(inspect, src.iter_rows(named=True)))
    df = pl.DataFrame([r for r, _ in results if r is not None], schema=ALL_TABLES[table])
    lake.write_partition(table, batch_id, df)
    rej = _rejection_frame([j for _, j in results if j is not None], table)
    lake.write_stage_rejections(table, batch_id, rej)
    return df, rej


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
    batch_dir = landing.batch_dir(context.partition_key)
    df, rej = inspect_batch_media(context, warehouse, "raw_images", "image_path",
                                  lambda r: _inspect_one(batch_dir, r))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "rejections": rej.height,
            "rejections_by_reason": counts(rej["reason"]) if rej.height else {},
            "formats": counts(df["format"]) if df.height else {},
            "preview": preview(df, ["record_id", "image_path", "width", "height", "format"]),
        }
    )


def _inspect_audio_one(batch_dir, row: dict, max_seconds: float) -> tuple[dict | None, Rejection | None]:
    try:
        path = resolve_media_path(batch_dir, row["audio_path"])
        audio = load_audio(path, None, max_seconds=max_seconds)
    except MediaError as exc:
        return None, Rejection(row["batch_id"], row["line_number"], row["record_id"], "audio", exc.reason, exc.detail)
    meta = audio.meta
    return {
        "record_id": row["record_id"], "batch_id": row["batch_id"], "line_number": row["line_number"],
        "audio_path": row["audio_path"], "uri": str(path), "sha256": meta.sha256, "format": meta.format,
        "subtype": meta.subtype, "sample_rate": meta.sample_rate, "channels": meta.channels,
        "duration_s": meta.duration_s, "n_bytes": meta.n_bytes, "rms": audio.rms, "peak": audio.peak,
    }, None


@dg.asset(
    partitions_def=batches_partitions,
    deps=[raw_records],
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
    df, rej = inspect_batch_media(context, warehouse, "raw_audio", "audio_path",
                                  lambda r: _inspect_audio_one(batch_dir, r, max_s))
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


def _tabular_rows(recs: pl.DataFrame, streams: pl.DataFrame) -> tuple[list[str], list[int], list[dict], list[int]]:
    """(record ids, line numbers, feature dicts, number of manifest fields) of the records with manifest fields
    or matched stream readings: the manifest ``fields`` plus every matched stream value as
    ``<stream>.<column>``."""
    matched = dict(streams.select("record_id", "stream_features_json").iter_rows()) if streams.height else {}
    ids, lines, rows, n_fields = [], [], [], []
    for rid, line, fields_json in recs.select("record_id", "line_number", "fields_json").iter_rows():
        fields = json.loads(fields_json) if fields_json else {}
        extra = json.loads(matched[rid]) if matched.get(rid) else {}
        if not fields and not extra:
            continue
        ids.append(rid)
        lines.append(line)
        rows.append({**fields, **extra})
        n_fields.append(len(fields))
    return ids, lines, rows, n_fields


@dg.asset(
    partitions_def=batches_partitions,
    deps=[raw_records, dg.AssetKey("stream_features")],
    group_name="aligned",  # it joins the stream readings matched in time (the aligned layer) to the fields
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
    ids, lines, rows, n_fields = _tabular_rows(recs, streams)
    rejections: list[Rejection] = []
    if rows:
        state, fitted_now = fit_or_load(tabular_state_dir(lake), rows)
        typed = type_rows(state, rows)
        invalid = [0] * len(ids)
        for prob in typed.problems:
            rejections.append(Rejection(batch_id, lines[prob.row], ids[prob.row], "fields", prob.reason,
                                        prob.detail))
            invalid[prob.row] += 1
        frame = typed_frame(ids, typed, state)
        values_json = [json.dumps(v, sort_keys=True, default=str) for v in typed.values]
        df = frame.with_columns(
            pl.lit(batch_id).alias("batch_id"),
            pl.Series("line_number", lines, dtype=pl.Int32),
            pl.Series("fields_sha256", [text_sha256(v) for v in values_json]),
            pl.Series("n_fields", n_fields, dtype=pl.Int32),
            pl.Series("n_missing", [sum(x is None for x in v.values()) for v in typed.values], dtype=pl.Int32),
            pl.Series("n_invalid", invalid, dtype=pl.Int32),
            pl.lit(state.version).alias("encoder_version"),
            pl.Series("values_json", values_json),
        )
        md_state: dict[str, object] = {
            "encoder_version": state.version, "encoder_fitted_now": fitted_now,
            "encoder_fields": {f.name: f.kind for f in state.fields},
            "unknown_fields": typed.unknown_fields,
        }
    else:
        df = pl.DataFrame(schema=ALL_TABLES["raw_tabular"])
        md_state = {}
    lake.write_partition("raw_tabular", batch_id, df)
    rej = _rejection_frame(rejections, "raw_tabular")
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
    deps=[raw_records, raw_text, raw_images, raw_audio, raw_tabular, dg.AssetKey("stream_features")],
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
    text = lake.read_partition("raw_text", batch_id).select("record_id", "text_sha256")
    images = lake.read_partition("raw_images", batch_id).select("record_id", pl.col("sha256").alias("image_sha256"))
    audio = lake.read_partition("raw_audio", batch_id).select("record_id", pl.col("sha256").alias("audio_sha256"))
    tabular = lake.read_partition("raw_tabular", batch_id).select("record_id", "fields_sha256")
    streams = lake.read_partition("stream_features", batch_id)
    stream_cols = [c for c in streams.columns if c not in ("batch_id", "entity_id", "timestamp")]
    df = (
        recs.select("record_id", "batch_id", "line_number", "timestamp", "label", "entity_id")
        .join(text, on="record_id", how="left")
        .join(images, on="record_id", how="left")
        .join(audio, on="record_id", how="left")
        .join(tabular, on="record_id", how="left")
        .join(streams.select(stream_cols), on="record_id", how="left")
        .with_columns(
            pl.col("text_sha256").is_not_null().alias("has_text"),
            pl.col("image_sha256").is_not_null().alias("has_image"),
            pl.col("audio_sha256").is_not_null().alias("has_audio"),
            pl.col("fields_sha256").is_not_null().alias("has_tabular"),
            pl.col("streams_matched").fill_null(0),
        )
        .filter(pl.col("has_text") | pl.col("has_image") | pl.col("has_audio") | pl.col("has_tabular"))
        .sort("line_number")
    )
    lake.write_partition("aligned_records", batch_id, df)
    combos = pl.concat_str(
        [pl.when(pl.col(f"has_{m}")).then(pl.lit(m)) for m in ("text", "image", "audio", "tabular")],
        separator="+", ignore_nulls=True,
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            **{f"with_{m}": int(df[f"has_{m}"].sum()) for m in ("text", "image", "audio", "tabular")},
            "with_stream_match": int((df["streams_matched"] > 0).sum()),
            "modality_combinations": counts(df.select(combos.alias("m"))["m"]) if df.height else {},
            "labelled": int(df["label"].is_not_null().sum()),
            "preview": preview(df, ["record_id", "label", "has_text", "has_image", "has_audio", "has_tabular",
                                    "streams_matched"]),
        }
    )


@dg.asset(
    partitions_def=batches_partitions,
    # the embedding assets quarantine media that fail inside a Ray task (MM_COMPUTE=ray): gather after them
    deps=[raw_records, raw_text, raw_images, raw_audio, raw_tabular, dg.AssetKey("stream_features"),
          aligned_records, dg.AssetKey("text_embeddings"), dg.AssetKey("image_embeddings"),
          dg.AssetKey("audio_embeddings")],
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
