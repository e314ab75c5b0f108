"""The rows of the raw and aligned tables of one landing batch, without Dagster (moved from the raw/ingest
asset module): the ``raw_records`` frame of a parsed manifest, each media file checked into a row or a
rejection, the tabular modality's feature rows, the ``aligned_records`` join, and rejections as quarantine
rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import polars as pl

from mm_platform.lib.media.audio import load_audio
from mm_platform.lib.storage.lake import ALL_TABLES, Lake, empty_frame
from mm_platform.lib.landing.manifest import Rejection
from mm_platform.lib.media import MediaError, inspect_image, resolve_media_path, text_sha256
from mm_platform.lib.storage.model_files import tabular_state_dir
from mm_platform.lib.features.tabular import fit_or_load, type_rows, typed_frame

MODALITIES = ("text", "image", "audio", "tabular")


def rejection_frame(rows: list[Rejection], stage: str) -> pl.DataFrame:
    """Quarantine rows (``rejected_records`` columns) of ``rows`` found by ``stage``."""
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


def inspect_batch_media(
    lake: Lake, batch_id: str, table: str, path_col: str,
    inspect: Callable[[dict], tuple[dict | None, Rejection | None]],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Inspect every media file the batch's upserts declare in ``path_col`` (4 threads), write the good ones
    to ``table`` and the failures to that stage's rejections; returns (rows, rejections)."""
    src = lake.read_partition("raw_records", batch_id).filter(
        (pl.col("op") == "upsert") & pl.col(path_col).is_not_null()
    )
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(inspect, src.iter_rows(named=True)))
    df = pl.DataFrame([r for r, _ in results if r is not None], schema=ALL_TABLES[table])
    lake.write_partition(table, batch_id, df)
    rej = rejection_frame([j for _, j in results if j is not None], table)
    lake.write_stage_rejections(table, batch_id, rej)
    return df, rej


def image_row(batch_dir, row: dict) -> tuple[dict | None, Rejection | None]:
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


def audio_row(batch_dir, row: dict, max_seconds: float) -> tuple[dict | None, Rejection | None]:
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


def tabular_rows(recs: pl.DataFrame, streams: pl.DataFrame) -> tuple[list[str], list[int], list[dict], list[int]]:
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




def raw_records_frame(parsed, batch_id: str, landed_at: datetime) -> pl.DataFrame:
    """One ``raw_records`` row per valid line of a parsed manifest (:func:`mm_platform.lib.landing.manifest.parse_manifest`)."""
    now = datetime.now(UTC)
    recs = parsed.records
    return pl.DataFrame(
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


def raw_text_frame(records: pl.DataFrame) -> pl.DataFrame:
    """The ``raw_text`` rows of a batch's ``raw_records``: each upsert's text with its content hash."""
    src = records.filter((pl.col("op") == "upsert") & pl.col("text").is_not_null())
    return src.select(
        "record_id", "batch_id", "line_number", "text",
        pl.col("text").map_elements(text_sha256, return_dtype=pl.String).alias("text_sha256"),
        pl.col("text").str.len_chars().cast(pl.Int32).alias("n_chars"),
    )


def aligned_frame(recs: pl.DataFrame, text: pl.DataFrame, images: pl.DataFrame, audio: pl.DataFrame,
                  tabular: pl.DataFrame, streams: pl.DataFrame) -> pl.DataFrame:
    """The ``aligned_records`` rows: every upsert joined to its valid modalities (content hashes) and to its
    matched stream readings; records with no valid modality are left out (they are in the quarantine)."""
    stream_cols = [c for c in streams.columns if c not in ("batch_id", "entity_id", "timestamp")]
    return (
        recs.select("record_id", "batch_id", "line_number", "timestamp", "label", "entity_id")
        .join(text.select("record_id", "text_sha256"), on="record_id", how="left")
        .join(images.select("record_id", pl.col("sha256").alias("image_sha256")), on="record_id", how="left")
        .join(audio.select("record_id", pl.col("sha256").alias("audio_sha256")), on="record_id", how="left")
        .join(tabular.select("record_id", "fields_sha256"), on="record_id", how="left")
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


def modality_combinations(df: pl.DataFrame) -> pl.Series:
    """``text+image``-style names of the modalities each aligned record has."""
    combos = pl.concat_str([pl.when(pl.col(f"has_{m}")).then(pl.lit(m)) for m in MODALITIES],
                           separator="+", ignore_nulls=True)
    return df.select(combos.alias("m"))["m"]


def typed_tabular(lake: Lake, batch_id: str, recs: pl.DataFrame,
                  streams: pl.DataFrame) -> tuple[pl.DataFrame, list[Rejection], dict[str, object]]:
    """The ``raw_tabular`` rows of a batch (manifest fields plus matched stream values, typed by the fitted
    tabular encoder, fitted here on the first batch with fields), the unusable values as rejections, and what
    to report about the encoder state (empty without tabular rows)."""
    ids, lines, rows, n_fields = tabular_rows(recs, streams)
    rejections: list[Rejection] = []
    if not rows:
        return empty_frame("raw_tabular"), rejections, {}
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
    return df, rejections, md_state
