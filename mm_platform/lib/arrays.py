"""Embedding columns as numpy matrices without Python lists.

The lake stores every vector as a ``List(Float32)`` column. ``np.asarray(col.to_list())`` builds one Python
float object per value (about 30x the bytes of the data: at 100k x 1,928 it passed 9 GB); the helpers here
flatten the column's Arrow buffer and reshape it instead, zero-copy when the column is float32, one chunk and
has no nulls, one cast otherwise.

:func:`embedding_matrix` is the one way vectors are read into numpy across the package;
:func:`iter_matrix_chunks` yields the same matrix in row slices for steps that do not need it all at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import polars as pl

__all__ = ["VectorColumnError", "embedding_matrix", "iter_matrix_chunks", "l2_normalize", "matrix_series", "unit_rows_f32"]


class VectorColumnError(ValueError):
    """The column is not a matrix: a null vector, null values inside vectors, or vectors of different lengths."""


def _as_series(col: Any, column: str) -> pl.Series:
    if isinstance(col, pl.DataFrame):
        return col.get_column(column)
    if isinstance(col, pl.Series):
        return col
    import pyarrow as pa

    if isinstance(col, pa.Table):
        col = col.column(column)
    if isinstance(col, pa.Array | pa.ChunkedArray):
        return pl.Series(column, col)
    raise TypeError(f"expected a polars DataFrame/Series or an Arrow array/table, got {type(col).__name__}")


def embedding_matrix(col: Any, dim: int | None = None, *, column: str = "embedding",
                     dtype: type = np.float32) -> np.ndarray:
    """The vectors of ``col`` as an ``(n, d)`` matrix of ``dtype`` (float32 by default).

    ``col`` is a polars DataFrame (its ``column``), a polars Series, or an Arrow array/chunked array/table
    of ``List``/``LargeList``/``FixedSizeList``/``Array`` of numbers. The values are flattened from the
    Arrow buffer and reshaped: no Python object per value; zero-copy when the data is already one float32
    chunk without nulls (the returned array may then be read-only: copy it before writing into it).

    An empty column gives ``(0, dim or 0)``. ``dim``, when given, must match the vectors' length.
    Raises :class:`VectorColumnError` for a null vector, a null value inside a vector, or ragged lengths
    (the message says how many rows and which lengths), and ``TypeError`` for a non-list column.
    """
    s = _as_series(col, column)
    n = s.len()
    if n == 0:
        return np.zeros((0, dim or 0), dtype=dtype)
    if isinstance(s.dtype, pl.Array):
        s = s.cast(pl.List(s.dtype.inner))
    if not isinstance(s.dtype, pl.List):
        raise TypeError(f"column {s.name!r} is {s.dtype}, not a list of numbers")
    if s.null_count():
        raise VectorColumnError(f"{s.null_count()} of {n} rows of {s.name!r} have no vector (null)")
    lengths = s.list.len()
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo != hi:
        raise VectorColumnError(f"vectors of {s.name!r} have different lengths ({lo}..{hi}), mixed dimensions")
    if dim is not None and lo != dim:
        raise VectorColumnError(f"vectors of {s.name!r} have {lo} dims, expected {dim}")
    if lo == 0:
        return np.zeros((n, 0), dtype=dtype)
    flat = s.explode()
    if flat.null_count():
        raise VectorColumnError(f"{flat.null_count()} null values inside the vectors of {s.name!r}")
    if not flat.dtype.is_numeric():
        raise TypeError(f"column {s.name!r} holds {flat.dtype}, not numbers")
    out = flat.to_numpy()
    if out.dtype != dtype:
        out = out.astype(dtype)
    return out.reshape(n, lo)


def iter_matrix_chunks(df: pl.DataFrame, chunk_rows: int = 50_000, *, column: str = "embedding",
                       dim: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start_row, matrix)`` for consecutive row slices of ``df`` (zero-copy slices, one matrix each), so a
    step that streams over the vectors holds one chunk's matrix at a time. Raises ValueError when
    ``chunk_rows < 1``."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    for start in range(0, df.height, chunk_rows):
        yield start, embedding_matrix(df.slice(start, chunk_rows), dim, column=column)


def unit_rows_f32(X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` scaled to unit L2 norm, as a new float32 matrix (zero rows stay zero)."""
    A = np.array(X, dtype=np.float32, copy=True)
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    np.divide(A, norms, out=A, where=norms > 1e-12)
    return A


def matrix_series(X: np.ndarray, name: str = "embedding") -> pl.Series:
    """The rows of ``X`` as a ``List(Float32)`` series (the lake's vector column type), built from the numpy
    buffer rather than from ``X.tolist()``."""
    A = np.ascontiguousarray(X, dtype=np.float32)
    if A.ndim != 2:
        raise ValueError(f"expected an (n, d) matrix, got shape {A.shape}")
    if A.shape[0] == 0 or A.shape[1] == 0:
        return pl.Series(name, [[] for _ in range(A.shape[0])], dtype=pl.List(pl.Float32))
    return pl.Series(name, A).cast(pl.List(pl.Float32))

def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation, returned as float32.

    Rows whose norm is ``<= eps`` (zero rows) stay zero. A 1-D input is treated as a single row and
    returned 1-D.
    """
    arr = np.asarray(x, dtype=np.float64)
    one_d = arr.ndim == 1
    if one_d:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"l2_normalize expects a 1-D or 2-D array, got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    safe = np.where(norms > eps, norms, 1.0)
    out = np.where(norms > eps, arr / safe, 0.0).astype(np.float32)
    return out[0] if one_d else out


def presence_mask(name: str, present: Mapping[str, Any], n: int, *, rows: str = "blocks") -> np.ndarray:
    """``present[name]`` as a boolean vector of ``n`` rows: the one check of a modality's presence mask used by
    fusion, the shared space and the classifiers (``rows`` names what ``n`` counts in the error)."""
    if name not in present:
        raise ValueError(f"no presence mask for modality {name!r}")
    mask = np.asarray(present[name], dtype=bool).reshape(-1)
    if mask.shape[0] != n:
        raise ValueError(f"{name}: presence mask has {mask.shape[0]} rows, {rows} have {n}")
    return mask


def zero_nonfinite_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``block`` (2-D) with every row that holds a NaN or an infinity set to 0 (same dtype), and the finite-row mask."""
    finite = np.isfinite(block).all(axis=1)
    return np.where(finite[:, None], block, 0).astype(block.dtype, copy=False), finite
