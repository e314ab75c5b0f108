"""Chunked global-layer helpers give what the whole-matrix functions give."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from mm_platform.lib.analysis.clustering.stability import fit_projection
from mm_platform.lib.analysis.clustering import representatives
from mm_platform.lib.analysis.global_chunks import chunked_representatives, reduce_chunks, sample_rows


@pytest.fixture(scope="module")
def data():
    X, y = make_blobs(n_samples=500, centers=5, n_features=32, random_state=2)
    return X.astype(np.float32), y, [f"r{i:03d}" for i in range(500)]


def _chunks(X, ids, size):
    def gen():
        for s in range(0, len(X), size):
            yield ids[s : s + size], X[s : s + size]
    return gen


def test_representatives_match_the_whole_matrix_version(data):
    X, y, ids = data
    labels = y.copy()
    labels[:7] = -1  # outliers are never representatives
    expected = representatives(X, labels, ids, n=3)
    for size in (37, 500):
        assert chunked_representatives(_chunks(X, ids, size), labels, n=3) == expected
    assert chunked_representatives(_chunks(X, ids, 50), np.full(500, -1)) == {}


def test_reduce_chunks_equals_fit_projection(data):
    X, _, ids = data
    mean, comps, Z = fit_projection(X, 8, seed=0)
    np.testing.assert_allclose(reduce_chunks(_chunks(X, ids, 64), mean, comps), Z, atol=1e-5)
    unit = reduce_chunks(_chunks(X, ids, 64), None, None)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)


def test_sample_rows_is_seeded_and_checks_the_row_count(data):
    X, _, ids = data
    S = sample_rows(_chunks(X, ids, 64), 500, 120, seed=3)
    assert S.shape == (120, 32)
    np.testing.assert_array_equal(S, sample_rows(_chunks(X, ids, 100), 500, 120, seed=3))  # chunking-independent
    np.testing.assert_array_equal(sample_rows(_chunks(X, ids, 64), 500, 1000), X)
    with pytest.raises(ValueError, match="expected 600"):
        sample_rows(_chunks(X, ids, 64), 600, 10)
