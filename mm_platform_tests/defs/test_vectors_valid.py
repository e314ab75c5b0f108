"""The vectors_valid check reads vectors through the zero-copy reader: bad columns fail the check, never crash."""

import numpy as np
import polars as pl

from mm_platform.defs.embeddings.checks import vectors_valid


def _df(vectors, dims):
    return pl.DataFrame({"record_id": [f"r{i}" for i in range(len(vectors))], "dim": dims,
                         "embedding": pl.Series(vectors, dtype=pl.List(pl.Float32))})


def test_unit_vectors_pass():
    v = (np.eye(3, dtype=np.float32)).tolist()
    assert vectors_valid(_df(v, [3, 3, 3]), {"r0", "r1", "r2"}, "text_embeddings").passed


def test_ragged_and_null_vectors_fail_with_a_reason():
    ragged = vectors_valid(_df([[1.0, 0.0], [1.0]], [2, 1]), {"r0", "r1"}, "text_embeddings")
    assert not ragged.passed and "different lengths" in str(ragged.metadata)
    nulls = vectors_valid(_df([[1.0, 0.0], None], [2, 2]), {"r0", "r1"}, "text_embeddings")
    assert not nulls.passed and "no vector" in str(nulls.metadata)
    not_unit = vectors_valid(_df([[2.0, 0.0]], [2]), {"r0"}, "text_embeddings")
    assert not not_unit.passed and "not unit-norm" in str(not_unit.metadata)
