"""Tie-aware kNN agreement: a discrete modality's groups of identical rows count as equally near."""

import numpy as np
import pytest

from mm_platform.lib.vectors.fusion import l2_normalize
from mm_platform.lib.analysis.knn_ties import tie_neighbourhoods, tie_overlap
from mm_platform.lib.analysis.modality_weights import evidence_weights


def test_without_ties_it_is_the_plain_knn_overlap():
    rng = np.random.default_rng(0)
    U = l2_normalize(rng.normal(size=(40, 8)))
    M = tie_neighbourhoods(U @ U.T, 5)
    assert (M.sum(axis=1) == 5).all() and not M.diagonal().any()
    ov, chance, size = tie_overlap(M, M)
    assert ov == pytest.approx(1.0) and size == pytest.approx(5.0) and chance == pytest.approx(5 / 39)


def test_a_tied_group_that_holds_the_other_modalitys_neighbours_counts_fully():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 30)
    fine = l2_normalize(rng.normal(size=(4, 16))[y] * 3 + rng.normal(size=(120, 16)))  # neighbours within class
    coarse = l2_normalize(np.eye(4)[y] + 1e-9)  # a discrete field: 4 groups of 30 identical rows
    Mf, Mc = tie_neighbourhoods(fine @ fine.T, 10), tie_neighbourhoods(coarse @ coarse.T, 10)
    assert (Mc.sum(axis=1) == 29).all()  # the whole group is tied with the 10th neighbour
    ov, chance, size = tie_overlap(Mf, Mc)
    assert size == pytest.approx(np.sqrt(10 * 29)) and ov > 0.5
    # the plain measure picks an arbitrary 10 of the 29: about 10/29 of a perfect agreement
    blocks = {"text": fine, "tabular": coarse}
    plain, tied = evidence_weights(blocks, k=10, ties=False), evidence_weights(blocks, k=10)
    assert tied.pair_overlap["text|tabular"] > plain.pair_overlap["text|tabular"] + 0.2
