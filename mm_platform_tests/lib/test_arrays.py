"""The one reader of embedding columns: exact values, shapes, zero-copy, clear errors on bad columns."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from mm_platform.lib.arrays import (
    VectorColumnError,
    embedding_matrix,
    iter_matrix_chunks,
    matrix_series,
    unit_rows_f32,
)


def _frame(X: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"record_id": [f"r{i}" for i in range(len(X))], "embedding": matrix_series(X)})


def test_matrix_equals_the_list_path_and_is_float32():
    X = np.random.default_rng(0).standard_normal((37, 19)).astype(np.float32)
    df = _frame(X)
    M = embedding_matrix(df)
    assert M.dtype == np.float32 and M.shape == (37, 19)
    np.testing.assert_array_equal(M, np.asarray(df["embedding"].to_list(), dtype=np.float32))
    np.testing.assert_array_equal(M, X)


def test_single_chunk_float32_is_zero_copy():
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    df = _frame(X)
    M = embedding_matrix(df)
    assert not M.flags.owndata  # a view of the Arrow buffer, no copy


def test_slices_and_multiple_chunks_keep_row_order():
    X = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    df = _frame(X)
    np.testing.assert_array_equal(embedding_matrix(df.slice(7, 13)), X[7:20])
    two_chunks = pl.concat([_frame(X[:20]), _frame(X[20:])], rechunk=False)
    assert two_chunks["embedding"].n_chunks() == 2
    np.testing.assert_array_equal(embedding_matrix(two_chunks), X)


@pytest.mark.parametrize("inner", [pl.Float64, pl.Float16, pl.Int32])
def test_other_number_types_are_cast(inner):
    s = pl.Series("embedding", [[1, 2], [3, 4]], dtype=pl.List(inner))
    M = embedding_matrix(s)
    assert M.dtype == np.float32
    np.testing.assert_array_equal(M, [[1, 2], [3, 4]])


def test_arrow_inputs_list_large_list_fixed_size_and_table():
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    for typ in (pa.list_(pa.float32()), pa.large_list(pa.float32()), pa.list_(pa.float32(), 3)):
        arr = pa.array(rows, type=typ)
        np.testing.assert_array_equal(embedding_matrix(arr), rows)
        np.testing.assert_array_equal(embedding_matrix(pa.chunked_array([arr[:1], arr[1:]])), rows)
    table = pa.table({"embedding": pa.array(rows, type=pa.list_(pa.float32()))})
    np.testing.assert_array_equal(embedding_matrix(table), rows)
    np.testing.assert_array_equal(embedding_matrix(pl.Series("e", np.array(rows, np.float32))), rows)  # Array


def test_empty_column_gives_zero_rows_with_the_asked_width():
    empty = pl.DataFrame({"embedding": pl.Series([], dtype=pl.List(pl.Float32))})
    assert embedding_matrix(empty).shape == (0, 0)
    assert embedding_matrix(empty, 384).shape == (0, 384)


def test_bad_columns_raise_clear_errors():
    with pytest.raises(VectorColumnError, match="different lengths"):
        embedding_matrix(pl.Series("embedding", [[1.0, 2.0], [1.0]]))
    with pytest.raises(VectorColumnError, match="no vector"):
        embedding_matrix(pl.Series("embedding", [[1.0, 2.0], None]))
    with pytest.raises(VectorColumnError, match="null values inside"):
        embedding_matrix(pl.Series("embedding", [[1.0, None], [1.0, 2.0]]))
    with pytest.raises(VectorColumnError, match="expected 3"):
        embedding_matrix(pl.Series("embedding", [[1.0, 2.0]]), 3)
    with pytest.raises(TypeError, match="not a list"):
        embedding_matrix(pl.Series("embedding", [1.0, 2.0]))
    with pytest.raises(TypeError):
        embedding_matrix([[1.0, 2.0]])


def test_chunks_cover_every_row_once():
    X = np.random.default_rng(2).standard_normal((23, 4)).astype(np.float32)
    chunks = list(iter_matrix_chunks(_frame(X), chunk_rows=5))
    assert [s for s, _ in chunks] == [0, 5, 10, 15, 20]
    np.testing.assert_array_equal(np.vstack([m for _, m in chunks]), X)
    with pytest.raises(ValueError):
        list(iter_matrix_chunks(_frame(X), chunk_rows=0))


def test_matrix_series_round_trip_and_unit_rows():
    X = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float64)
    s = matrix_series(X)
    assert s.dtype == pl.List(pl.Float32)
    np.testing.assert_array_equal(embedding_matrix(s), X)
    assert matrix_series(np.zeros((0, 5))).len() == 0
    U = unit_rows_f32(X)
    np.testing.assert_allclose(U, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert X[0, 0] == 3.0  # input untouched
