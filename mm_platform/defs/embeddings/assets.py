"""Embeddings layer: one vector per record and modality, from the encoder of the active model profile."""


import json
from collections.abc import Callable

import dagster as dg
import numpy as np
import polars as pl

from mm_platform.defs.embeddings.checks import VECTORS_VALID, VECTORS_VALID_DESCRIPTION, vectors_valid
from mm_platform.defs.metadata import preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import ComputeResource, EncodersResource, LandingResource, WarehouseResource
from mm_platform.lib.encoders.base import ModelInfo
from mm_platform.lib.storage.model_files import tabular_state_dir
from mm_platform.lib.encoders.embedding_rows import (
    embedding_frame,
    local_embedder,
    lookup_cached,
    merge_with_cache,
    quarantine_failures,
)
from mm_platform.lib.features.tabular import TABULAR_DIM, TabularEncoderState, encode_tabular, load_state
from mm_platform.lib.storage.tables import empty_frame

#: Identity of the tabular encoder; its version is the fitted state's version.
TABULAR_MODEL_ID = "mm_platform/tabular-standardise-onehot"


def _progress(context: dg.AssetExecutionContext, what: str) -> Callable[[int, int], None]:
    """A progress callback that logs about every 10% (and the end)."""
    state = {"next": 0.0}

    def report(done: int, total: int) -> None:
        if total and (done / total >= state["next"] or done == total):
            context.log.info(f"{what}: {done}/{total}")
            state["next"] = done / total + 0.1

    return report


def cached_vectors(warehouse: WarehouseResource, table: str, info: ModelInfo, hashes: list[str]) -> dict[str, list]:
    """Vectors this exact model (id + weights version) already made for these contents, in any batch."""
    if not hashes:
        return {}
    with warehouse.compute_connection(needs=[f"{table}_history"]) as con:
        return lookup_cached(con, table, info.model_id, info.model_version, hashes)


def embed_with_cache(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, table: str, info: ModelInfo,
    hashes: list[str], encode: Callable[[list[int]], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Vectors for every row: from the cache keyed by (content hash, model, version) where this model has
    seen the content before, else from ``encode(row indices)`` (each distinct content encoded once).
    Returns (vectors, cache_hit per row)."""
    cache = cached_vectors(warehouse, table, info, hashes)
    vectors, hit, todo = merge_with_cache(cache, hashes, info.dim, encode)
    context.log.info(f"{table}: {int(hit.sum())} of {len(hashes)} from the embedding cache, {todo} encoded")
    return vectors, hit


def _result(df: pl.DataFrame, info: ModelInfo, check: dg.AssetCheckResult, profile: str) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "model": info.model_id,
            "model_version": info.model_version,
            "space": info.space,
            "dim": info.dim,
            "profile": profile,
            "cache_hits": int(df["cache_hit"].sum()) if df.height else 0,
            "cache_hit_rate": float(df["cache_hit"].mean()) if df.height else 0.0,
            "preview": preview(df, ["record_id", "model", "dim", "content_sha256"]),
        },
        check_results=[check],
    )


def embed_partition(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, encoders: EncodersResource, *,
    table: str, source: str, content_col: str, identity: Callable[[], ModelInfo],
    encode: Callable[[pl.DataFrame, list[int]], np.ndarray],
    failures: dict[int, tuple[str, str]] | None = None,
) -> dg.MaterializeResult:
    """Embed one batch of ``source`` into ``table`` through the cache, write it, check it, describe it.

    ``identity()`` is the encoder's identity, known without loading it; ``encode`` builds the encoder on its
    first call, which only happens when some content is not in the cache: a batch whose contents are all
    cached never loads a model. When the loaded encoder turns out to be another one than its files said
    (CLAP falling back to log-mel), the batch goes through the cache again under the real identity.
    ``failures`` (ray mode) is filled by ``encode`` with the rows whose media failed inside a Ray task: those
    rows get no vector and a quarantine row (this stage's rejections) instead, never a retry loop."""
    batch_id = context.partition_key
    lake = warehouse.lake
    src = lake.read_partition(source, batch_id)
    info = identity()
    vectors, hit = embed_with_cache(context, warehouse, table, info, src[content_col].to_list(),
                                    lambda rows: encode(src, rows))
    if identity() != info:
        context.log.warning(f"{table}: the encoder loaded as {identity().model_id}, not {info.model_id}")
        info = identity()
        vectors, hit = embed_with_cache(context, warehouse, table, info, src[content_col].to_list(),
                                        lambda rows: encode(src, rows))
    df = embedding_frame(src, content_col, vectors, info, hit)
    if failures is not None:
        keep, rej = quarantine_failures(src, content_col, failures, table, info.modality)
        df, src = df.filter(keep), src.filter(keep)
        lake.write_stage_rejections(table, batch_id, rej)
        if rej.height:
            context.log.warning(f"{table}: {rej.height} rows quarantined by the Ray pipeline: "
                                f"{rej['detail'].head(3).to_list()}")
    lake.write_partition(table, batch_id, df)
    check = vectors_valid(df, set(src["record_id"].to_list()), table, batch_id)
    return _result(df, info, check, encoders.encoders.profile)


def ray_embedder(
    context: dg.AssetExecutionContext, compute: ComputeResource, encoders: EncodersResource, modality: str,
    item_col: str, max_audio_seconds: float | None = None,
) -> tuple[object, Callable[[pl.DataFrame, list[int]], np.ndarray], dict[int, tuple[str, str]]]:
    """(encoder, encode, failures) for ray mode: the warm actor's identity, a Ray Data run over the rows to
    encode, and the failures that run reports (filled in by ``encode``)."""
    encoder = compute.ray_encoder(modality, encoders)
    encoder.max_audio_seconds = max_audio_seconds
    failures: dict[int, tuple[str, str]] = {}

    def encode(src: pl.DataFrame, rows: list[int]) -> np.ndarray:
        result = encoder.run([src[item_col][i] for i in rows], on_batch=_progress(context, f"{modality} on Ray"))
        failures.update({rows[k]: why for k, why in result.failures.items()})
        return result.vectors

    return encoder, encode, failures


def embed_modality(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, encoders: EncodersResource,
    compute: ComputeResource, *, modality: str, source: str, content_col: str, ray_column: str,
    local: Callable[[], tuple[Callable[[pl.DataFrame, list[int]], np.ndarray], dict[int, tuple[str, str]] | None]],
    max_audio_seconds: float | None = None,
) -> dg.MaterializeResult:
    """One modality's batch into ``<modality>_embeddings`` through the cache: on the warm Ray actor with
    ``MM_COMPUTE=ray``, else in process (``local() -> (encode, failures)``)."""
    if compute.is_ray:
        encoder, encode, failures = ray_embedder(context, compute, encoders, modality, ray_column,
                                                 max_audio_seconds=max_audio_seconds)
        identity: Callable[[], ModelInfo] = lambda: encoder.info  # noqa: E731
    else:
        encode, failures = local()
        identity = lambda: encoders.encoders.model_info(modality)  # noqa: E731
    return embed_partition(context, warehouse, encoders, table=f"{modality}_embeddings", source=source,
                           content_col=content_col, identity=identity, encode=encode, failures=failures)


@dg.asset(
    partitions_def=batches_partitions,
    deps=["raw_text"],
    group_name="embeddings",
    kinds={"pytorch", "parquet"},
    tags={"layer": "embeddings"},
    check_specs=[dg.AssetCheckSpec(VECTORS_VALID, description=VECTORS_VALID_DESCRIPTION, asset="text_embeddings")],
)
def text_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, encoders: EncodersResource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """A unit-norm vector per record text, from the text encoder of the active profile (MiniLM offline, the
    CLIP text tower with ``clip``); every row names its model, version and embedding space. Content this
    model already embedded (same text hash, same model and weights version, any batch) comes from the
    cache instead of being encoded again (``cache_hit``). With ``MM_COMPUTE=ray`` the encoding runs on Ray."""
    def local() -> tuple[Callable[[pl.DataFrame, list[int]], np.ndarray], None]:
        es = encoders.encoders
        return (lambda src, rows: es.text().encode([src["text"][i] for i in rows],
                                                   progress=_progress(context, "texts encoded"))), None

    return embed_modality(context, warehouse, encoders, compute, modality="text", source="raw_text",
                          content_col="text_sha256", ray_column="text", local=local)


@dg.asset(
    partitions_def=batches_partitions,
    deps=["raw_images"],
    group_name="embeddings",
    kinds={"pytorch", "parquet"},
    tags={"layer": "embeddings"},
    check_specs=[dg.AssetCheckSpec(VECTORS_VALID, description=VECTORS_VALID_DESCRIPTION, asset="image_embeddings")],
)
def image_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, encoders: EncodersResource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """A unit-norm vector per record image (EfficientNet-Lite0 offline, the CLIP image tower with ``clip``).
    Images are decoded in DataLoader workers so decoding overlaps inference; image bytes this model already
    embedded come from the cache (``cache_hit``). With ``MM_COMPUTE=ray``, decoding runs in Ray CPU tasks and
    encoding in the model's warm actor; a file failing there is quarantined."""
    es = encoders.encoders
    local = lambda: local_embedder(  # noqa: E731
        lambda paths: es.image().encode_paths(paths, progress=_progress(context, "images encoded")),
        lambda: es.model_info("image").dim)
    return embed_modality(context, warehouse, encoders, compute, modality="image", source="raw_images",
                          content_col="sha256", ray_column="uri", local=local)


@dg.asset(
    partitions_def=batches_partitions,
    deps=["raw_audio"],
    group_name="embeddings",
    kinds={"pytorch", "parquet"},
    tags={"layer": "embeddings"},
    check_specs=[dg.AssetCheckSpec(VECTORS_VALID, description=VECTORS_VALID_DESCRIPTION, asset="audio_embeddings")],
)
def audio_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, encoders: EncodersResource,
    landing: LandingResource, compute: ComputeResource,
) -> dg.MaterializeResult:
    """A unit-norm vector per record audio clip, mixed to mono and resampled to the encoder's rate: CLAP's
    audio tower in the ``clip`` profile when its weights can be had, else (and in ``offline``) log-mel and
    MFCC statistics computed with torch. Clips this model already embedded come from the cache."""
    es = encoders.encoders

    def encode_paths(paths: list[str]) -> np.ndarray:
        encoder = es.audio()
        # the clips passed raw_audio's limit; the encoder must not refuse what ingest accepted
        encoder.max_audio_seconds = max(encoder.max_audio_seconds, float(landing.max_audio_seconds))
        return encoder.encode_paths(paths, progress=_progress(context, "audio clips encoded"))

    return embed_modality(context, warehouse, encoders, compute, modality="audio", source="raw_audio",
                          content_col="sha256", ray_column="uri",
                          local=lambda: local_embedder(encode_paths, lambda: es.model_info("audio").dim),
                          max_audio_seconds=float(landing.max_audio_seconds))


class TabularEncoder:
    """The fitted tabular encoder of one state version, shaped like the other encoders (``info``)."""

    def __init__(self, state: TabularEncoderState):
        self.state = state
        self.info = ModelInfo(model_id=TABULAR_MODEL_ID, model_version=state.version, dim=TABULAR_DIM,
                              space=f"tabular:{state.version}", modality="tabular")

    def encode(self, values: list[dict]) -> np.ndarray:
        return encode_tabular(self.state, values)


@dg.asset(
    partitions_def=batches_partitions,
    deps=["raw_tabular"],
    group_name="embeddings",
    kinds={"numpy", "parquet"},
    tags={"layer": "embeddings"},
    check_specs=[dg.AssetCheckSpec(VECTORS_VALID, description=VECTORS_VALID_DESCRIPTION, asset="tabular_embeddings")],
)
def tabular_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, encoders: EncodersResource
) -> dg.MaterializeResult:
    """A unit-norm 64-d vector per record's fields and aligned stream readings, from the fitted tabular
    encoder the batch was typed with: numeric values standardised (clipped z-scores, missing → 0 plus a
    missing flag), categories one-hot (unseen ones → "other"), each field weighted equally; the version of
    the fitted state is the model version."""
    lake = warehouse.lake
    src = lake.read_partition("raw_tabular", context.partition_key)
    versions = sorted(set(src["encoder_version"].to_list())) if src.height else []
    if len(versions) > 1:
        raise dg.Failure(f"batch {context.partition_key} was typed by several tabular encoders {versions}")
    state = load_state(tabular_state_dir(lake), version=versions[0] if versions else None)
    if state is None or state.raw_dim == 0:
        # nothing to embed: no record of the batch has fields, or no field carries information
        df = empty_frame("tabular_embeddings")
        lake.write_partition("tabular_embeddings", context.partition_key, df)
        why = "no fitted tabular encoder" if state is None else "the tabular encoder has no usable field"
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, "note": why},
                                    check_results=[vectors_valid(df, set(src["record_id"].to_list()),
                                                                "tabular_embeddings", context.partition_key)])
    encoder = TabularEncoder(state)
    return embed_partition(
        context, warehouse, encoders, table="tabular_embeddings", source="raw_tabular",
        content_col="fields_sha256", identity=lambda: encoder.info,
        encode=lambda src, rows: encoder.encode([json.loads(src["values_json"][i]) for i in rows]),
    )
