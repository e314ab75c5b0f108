"""The per-modality vector sizes of a batch, and its embedding columns as matrices (shared by the fusion and
the vector index assets; moved from ``defs/fusion/assets.py``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from mm_platform.lib.features.tabular import TABULAR_DIM
from mm_platform.lib.arrays import embedding_matrix as vector_matrix


def embedding_matrix(df: pl.DataFrame, dim: int) -> np.ndarray:
    """The embedding column as a float32 matrix; ``(0, dim)`` for an empty frame."""
    return vector_matrix(df, None if df.height else dim)


def modality_dims(frames: dict[str, pl.DataFrame], encoder_dim: Callable[[str], int]) -> dict[str, int]:
    """The vector size of each modality: from the rows when there are any, else from the encoder
    (``encoder_dim(modality)``, so a batch without images or audio still fuses to the same layout as every
    other batch). Tabular vectors always have :data:`TABULAR_DIM` dimensions, whatever the fields."""
    dims: dict[str, int] = {}
    for modality, df in frames.items():
        if df.height:
            dims[modality] = int(df["dim"][0])
        elif modality == "tabular":
            dims[modality] = TABULAR_DIM
        else:
            dims[modality] = encoder_dim(modality)
    return dims
