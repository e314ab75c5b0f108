"""Embeddings layer: one vector per record and modality, from the encoder of the active model profile."""


from collections.abc import Callable

import dagster as dg
import numpy as np
import polars as pl

from mm_platform.defs.embeddings.checks import VECTORS_VALID, vectors_valid
from mm_platform.defs.ingest.assets import raw_images, raw_text
from mm_platform.defs.metadata import preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import EncodersResource, WarehouseResource
from mm_platform.lib.encoders.base import ModelInfo


def _progress(context: dg.AssetExecutionContext, what: str) -> Callable[[int, int], None]:
    """A progress callback that logs about every 10% (and the end)."""
    state = {"next": 0.0}

    def report(done: int, total: int) -> None:
        if total and (done / total >= state["next"] or done == total):
            context.log.info(f"{what}: {done}/{total}")
            state["next"] = done / total + 0.1

    return report


def embedding_frame(src: pl.DataFrame, content_col: str, vectors: np.ndarray, info: ModelInfo) -> pl.DataFrame:
    """The embedding rows of ``src`` (record_id, batch_id, content hash) with the model that made them."""
    n = src.height
    return pl.DataFrame(
        {
            "record_id": src["record_id"],
            "batch_id": src["batch_id"],
            "model": [info.model_id] * n,
            "model_version": [info.model_version] * n,
            "space": [info.space] * n,
            "dim": [info.dim] * n,
            "content_sha256": src[content_col],
            "embedding": pl.Series(vectors.astype(np.float32).tolist(), dtype=pl.List(pl.Float32)),
        }
    )


def _result(df: pl.DataFrame, info: ModelInfo, check: dg.AssetCheckResult, profile: str) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "model": info.model_id,
            "model_version": info.model_version,
            "space": info.space,
            "dim": info.dim,
            "profile": profile,
            "preview": preview(df, ["record_id", "model", "dim", "content_sha256"]),
        },
        check_results=[check],
    )


@dg.asset(
    partitions_def=batches_partitions,
    deps=[raw_text],
    group_name="embeddings",
    kinds={"pytorch", "parquet"},
    tags={"layer": "embeddings"},
    check_specs=[dg.AssetCheckSpec(VECTORS_VALID, asset="text_embeddings")],
)
def text_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, encoders: EncodersResource
) -> dg.MaterializeResult:
    """A unit-norm vector per record text, from the text encoder of the active profile (MiniLM offline, the
    CLIP text tower with ``clip``); every row names its model, version and embedding space."""
    batch_id = context.partition_key
    lake = warehouse.lake
    src = lake.read_partition("raw_text", batch_id)
    encoder = encoders.encoders.text()
    vectors = encoder.encode(src["text"].to_list(), progress=_progress(context, "texts encoded"))
    df = embedding_frame(src, "text_sha256", vectors, encoder.info)
    lake.write_partition("text_embeddings", batch_id, df)
    check = vectors_valid(df, set(src["record_id"].to_list()), "text_embeddings")
    return _result(df, encoder.info, check, encoders.encoders.profile)


@dg.asset(
    partitions_def=batches_partitions,
    deps=[raw_images],
    group_name="embeddings",
    kinds={"pytorch", "parquet"},
    tags={"layer": "embeddings"},
    check_specs=[dg.AssetCheckSpec(VECTORS_VALID, asset="image_embeddings")],
)
def image_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, encoders: EncodersResource
) -> dg.MaterializeResult:
    """A unit-norm vector per record image (EfficientNet-Lite0 offline, the CLIP image tower with ``clip``).
    Images are decoded in DataLoader workers so decoding overlaps inference."""
    batch_id = context.partition_key
    lake = warehouse.lake
    src = lake.read_partition("raw_images", batch_id)
    encoder = encoders.encoders.image()
    vectors = encoder.encode_paths(src["uri"].to_list(), progress=_progress(context, "images encoded"))
    df = embedding_frame(src, "sha256", vectors, encoder.info)
    lake.write_partition("image_embeddings", batch_id, df)
    check = vectors_valid(df, set(src["record_id"].to_list()), "image_embeddings")
    return _result(df, encoder.info, check, encoders.encoders.profile)
