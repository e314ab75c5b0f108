"""A comparison space's clustering reused for the chosen fusion in the fused layout (no second clustering)."""

import numpy as np

from mm_platform.lib.analysis.clustering.stability import build_model, fit_projection
from mm_platform.lib.analysis.clustering import kmeans_auto
from mm_platform.lib.vectors.fusion import early_fusion, l2_normalize
from mm_platform.lib.analysis.fusion_choice import layout_matrix
from mm_platform.lib.analysis.fusion_reuse import lift_fit, reuse_compared_fit, space_of

LAYOUT = {"text": 12, "image": 20, "audio": 6}


def _corpus(n: int = 90, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    blocks = {m: l2_normalize(rng.normal(size=(3, d))[y] * 2 + rng.normal(size=(n, d))) for m, d in LAYOUT.items()}
    present = {m: np.ones(n, dtype=bool) for m in LAYOUT}
    return blocks, present, [f"r{i:03d}" for i in range(n)]


def _fit(X: np.ndarray) -> tuple:
    mean, comps, Z = fit_projection(X, 4, seed=0)
    return kmeans_auto(Z, k_max=5, seed=0), Z, (mean, comps)


def test_a_single_modality_clustering_is_the_clustering_of_its_layout_matrix():
    blocks, present, ids = _corpus()
    compared = {"text": (ids, blocks["text"])}
    fits = {"text": _fit(blocks["text"])}
    X = layout_matrix(blocks, present, LAYOUT, {"text": 1.0, "image": 0.0, "audio": 0.0})
    lifted = reuse_compared_fit("single_text", ids, X, LAYOUT, compared, fits)
    assert lifted is not None
    res, Z, (mean, comps) = lifted
    assert comps.shape == (Z.shape[1], sum(LAYOUT.values())) and not comps[:, 12:].any()
    model = build_model("r", "kmeans", Z, res.labels, mean, comps, X.shape[1])
    assert np.allclose(model.project(X), Z, atol=1e-5)  # new fused rows are placed exactly as the compared ones
    assert np.array_equal(model.assign(X)[0], res.labels)


def test_text_and_image_and_the_full_layout_are_lifted_too():
    blocks, present, ids = _corpus(seed=1)
    pair = early_fusion({m: blocks[m] for m in ("text", "image")}, present, {"text": 1, "image": 1}).vectors
    X = layout_matrix(blocks, present, LAYOUT, {"text": 1.0, "image": 1.0, "audio": 0.0})
    assert reuse_compared_fit("text+image", ids, X, LAYOUT, {"fused:text+image": (ids, pair)},
                              {"fused:text+image": _fit(pair)}) is not None
    full = layout_matrix(blocks, present, LAYOUT, {"text": 1.0, "image": 2.0, "audio": 0.5})
    fit = _fit(full)
    got = reuse_compared_fit("early_evidence", ids, full, LAYOUT, {"fused:early_evidence": (ids, full)},
                             {"fused:early_evidence": fit})
    assert got is not None and np.array_equal(got[2][1], fit[2][1])
    assert space_of("single_audio") == "audio" and space_of("early_uniform") == "fused:early"


def test_no_reuse_when_rows_values_or_projection_differ():
    blocks, present, ids = _corpus(seed=2)
    present["text"][:5] = False  # 5 records without text are fused uniformly over what they have
    blocks["text"][:5] = 0.0
    X = layout_matrix(blocks, present, LAYOUT, {"text": 1.0, "image": 0.0, "audio": 0.0})
    rows = np.flatnonzero(present["text"])
    fit = _fit(blocks["text"][rows])
    assert reuse_compared_fit("single_text", ids, X, LAYOUT, {"text": ([ids[i] for i in rows], blocks["text"][rows])},
                              {"text": fit}) is None
    # same rows, other values (another weighting of the pair): not the same matrix
    pair = early_fusion({m: blocks[m] for m in ("text", "image")}, present, {"text": 1, "image": 3}).vectors
    X2 = layout_matrix(blocks, present, LAYOUT, {"text": 1.0, "image": 1.0, "audio": 0.0})
    assert lift_fit(_fit(pair), pair, X2, LAYOUT, ["text", "image"]) is None
    # no PCA fitted (nothing to lift), unknown modality, no layout recorded
    res, Z, _ = fit
    assert lift_fit((res, Z, (None, None)), blocks["text"][rows], X[rows], LAYOUT, ["text"]) is None
    assert lift_fit(fit, blocks["text"][rows], X[rows], LAYOUT, ["video"]) is None
    assert reuse_compared_fit("single_text", ids, X, None, {}, {}) is None
