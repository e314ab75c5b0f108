"""Fusion layer: per-modality L2 normalisation and weighted concatenation into one vector per record."""

import json

import dagster as dg
import numpy as np
import polars as pl

from mm_platform.defs.metadata import counts, preview
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import EncodersResource, PipelineConfigResource, WarehouseResource
from mm_platform.lib.vectors.fusion import fuse
from mm_platform.lib.analysis.fusion_choice import load_choice, save_layout, zeroed
from mm_platform.lib.vectors.corpus import EMBEDDING_TABLES
from mm_platform.lib.vectors.batch_vectors import embedding_matrix, modality_dims
from mm_platform.lib.arrays import matrix_series

@dg.asset(
    partitions_def=batches_partitions,
    deps=["aligned_records", "text_embeddings", "image_embeddings", "audio_embeddings", "tabular_embeddings"],
    group_name="fusion",
    kinds={"numpy", "parquet"},
    tags={"layer": "fusion"},
)
def fused_vectors(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    encoders: EncodersResource,
    pipeline: PipelineConfigResource,
) -> dg.MaterializeResult:
    """One unit-norm vector per aligned record: each modality (text, image, audio, tabular) L2-normalised,
    scaled by the square root of its weight share among the modalities the record has, and concatenated (a
    missing modality is an explicit zero block and the mask in ``modalities``). The dot product of two fused vectors is the weighted mean
    of the per-modality cosines they share. The weights are the ones the last re-cluster chose by evidence
    (``MM_FUSION_SELECT``, default ``auto``), else ``MM_FUSION_WEIGHTS``; each row records the weights it was
    fused with (``weights_json``) and where they came from (``weights_source``)."""
    batch_id = context.partition_key
    lake = warehouse.lake
    aligned = lake.read_partition("aligned_records", batch_id)
    frames = {m: lake.read_partition(t, batch_id) for m, t in EMBEDDING_TABLES.items()}
    dims = modality_dims(frames, lambda m: encoders.encoders.model_info(m).dim)
    by_evidence = pipeline.fusion_select != "fixed"
    choice = load_choice(lake.root) if by_evidence else None
    weights = {**pipeline.weights(), **choice.weights} if choice else pipeline.weights()
    source = choice.source if choice else "MM_FUSION_WEIGHTS"
    result = fuse(
        aligned["record_id"].to_list(),
        {m: (df["record_id"].to_list(), embedding_matrix(df, dims[m])) for m, df in frames.items()},
        weights, keep_layout=by_evidence,
    )
    save_layout(lake.root, result.modalities, result.dims)
    keep = result.has_any
    ids = aligned["record_id"].filter(pl.Series(keep))
    modalities = [result.present_modalities(i) for i in np.flatnonzero(keep)]
    df = pl.DataFrame(
        {
            "record_id": ids,
            "batch_id": [batch_id] * len(ids),
            "fusion": [result.spec] * len(ids),
            "modalities": pl.Series(modalities, dtype=pl.List(pl.String)),
            "dim": [result.dim] * len(ids),
            "embedding": matrix_series(result.vectors[keep]),
            "weights_json": [json.dumps(result.row_weights(int(i)), sort_keys=True) for i in np.flatnonzero(keep)],
            "weights_source": [source] * len(ids),
        }
    )
    lake.write_partition("fused_vectors", batch_id, df)
    combos = df["modalities"].list.join("+") if df.height else pl.Series([], dtype=pl.String)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "fusion": result.spec,
            "weights": {m: w for m, w in result.weights.items()},
            "weights_source": source,
            "weights_reason": choice.reason if choice else "configured (MM_FUSION_WEIGHTS)",
            **({"modalities_weighted_zero": ", ".join(zeroed(result.weights))} if zeroed(result.weights) else {}),
            "records_fused_uniformly": int(result.fallback[keep].sum()) if result.fallback is not None else 0,
            "dim": result.dim,
            "modality_dims": dict(zip(result.modalities, result.dims, strict=True)),
            "modality_combinations": counts(combos) if df.height else {},
            "records_without_vectors": int((~keep).sum()),
            "preview": preview(df, ["record_id", "fusion", "modalities", "dim"]),
        }
    )
