"""Tests for the early-fusion maths in mm_platform.lib.vectors.fusion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mm_platform.lib.vectors.fusion import (
    MODALITIES,
    FusionResult,
    align_blocks,
    early_fusion,
    fuse,
    l2_normalize,
    parse_weights,
)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- l2_normalize ---------------------------------------------------------------------------------------


def test_l2_normalize_rows_unit_zero_rows_stay_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1e-3, 0.0]])
    out = l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], atol=1e-6)
    assert not np.isnan(out).any()


def test_l2_normalize_1d_and_dtype() -> None:
    out = l2_normalize(np.array([0, 2], dtype=np.int64))
    assert out.shape == (2,) and out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 1.0])


# -- parse_weights --------------------------------------------------------------------------------------


def test_parse_weights_defaults_and_string() -> None:
    assert parse_weights(None) == {m: 1.0 for m in MODALITIES}
    assert parse_weights("  ") == {m: 1.0 for m in MODALITIES}
    w = parse_weights(" Text = 2 , image=0.5,audio=0")
    assert w == {"text": 2.0, "image": 0.5, "audio": 0.0, "tabular": 1.0}
    assert parse_weights({"image": 3})["image"] == 3.0


@pytest.mark.parametrize(
    "spec",
    [
        "text",
        "text=",
        "text=abc",
        "text=-1",
        "text=1,,image=1",
        "=1",
        "text=1,text=2",
        "text=nan",
        "text=inf",
        "te xt=1",
        {"text": -0.5},
        {"text": "x"},
        {"text": True},
        42,
    ],
)
def test_parse_weights_rejects_junk(spec: object) -> None:
    with pytest.raises(ValueError):
        parse_weights(spec)  # type: ignore[arg-type]


# -- align_blocks ---------------------------------------------------------------------------------------


def test_align_blocks_orders_and_fills_zeros() -> None:
    ids = ["r3", "r1", "r2", "r4"]
    text = (["r1", "r2", "r3"], np.array([[1, 0], [2, 0], [3, 0]], dtype=np.float32))
    image = (["r4", "r1", "zz"], np.array([[0, 0, 4], [0, 0, 1], [9, 9, 9]], dtype=np.float32))
    blocks, present = align_blocks(ids, {"text": text, "image": image})
    np.testing.assert_array_equal(blocks["text"], [[3, 0], [1, 0], [2, 0], [0, 0]])
    np.testing.assert_array_equal(present["text"], [True, True, True, False])
    np.testing.assert_array_equal(blocks["image"], [[0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 4]])
    np.testing.assert_array_equal(present["image"], [False, True, False, True])
    assert blocks["image"].dtype == np.float32


def test_align_blocks_errors() -> None:
    with pytest.raises(ValueError, match="ids for"):
        align_blocks(["a"], {"text": (["a", "b"], np.zeros((1, 2)))})
    with pytest.raises(ValueError, match="repeated"):
        align_blocks(["a"], {"text": (["a", "a"], np.zeros((2, 2)))})
    with pytest.raises(ValueError, match="2-D"):
        align_blocks(["a"], {"text": (["a"], np.zeros((1, 2, 2)))})


def test_align_blocks_empty_modality() -> None:
    blocks, present = align_blocks(["a", "b"], {"text": ([], np.zeros((0, 4)))})
    assert blocks["text"].shape == (2, 4) and not present["text"].any()


# -- early_fusion ---------------------------------------------------------------------------------------


@pytest.fixture()
def random_blocks() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    n = 40
    blocks = {
        "image": rng.normal(size=(n, 5)) * 10,
        "text": rng.normal(size=(n, 3)),
        "tabular": rng.normal(size=(n, 2)) + 3,
    }
    present = {m: rng.random(n) < 0.7 for m in blocks}
    present["text"][:5] = True  # guarantee some rows with every modality
    present["image"][:5] = True
    present["tabular"][:5] = True
    none = ~(present["text"] | present["image"] | present["tabular"])
    present["text"][none] = True
    return blocks, present


def test_unit_norm_order_and_spec(random_blocks) -> None:  # type: ignore[no-untyped-def]
    blocks, present = random_blocks
    res = early_fusion(blocks, present, {"text": 2, "image": 1, "tabular": 0.5})
    assert isinstance(res, FusionResult)
    assert res.modalities == ("text", "image", "tabular")  # MODALITIES order, not dict order
    assert res.dims == (3, 5, 2)
    assert res.vectors.shape == (40, 10) and res.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)
    assert res.spec == "early:text=2,image=1,tabular=0.5"
    assert res.mask.shape == (40, 3) and res.mask.dtype == bool
    np.testing.assert_array_equal(res.mask[:, 0], present["text"])
    sl = res.slices()
    assert not res.vectors[~present["image"], sl["image"]].any()  # absent block is zeros


def test_dot_product_is_weighted_cosine_mean(random_blocks) -> None:  # type: ignore[no-untyped-def]
    blocks, present = random_blocks
    weights = {"text": 2.0, "image": 1.0, "tabular": 0.5}
    res = early_fusion(blocks, present, weights)
    order = res.modalities
    checked_same = checked_diff = 0
    for i, j in itertools.combinations(range(40), 2):
        have_i = {m for m in order if present[m][i]}
        have_j = {m for m in order if present[m][j]}
        shared = have_i & have_j
        w_i = sum(weights[m] for m in have_i)
        w_j = sum(weights[m] for m in have_j)
        num = sum(weights[m] * _cos(blocks[m][i], blocks[m][j]) for m in shared)
        expected = num / np.sqrt(w_i * w_j)
        got = float(res.vectors[i] @ res.vectors[j])
        assert got == pytest.approx(expected, abs=1e-5)
        if have_i == have_j:
            # same modalities: exactly the weighted mean of per-modality cosines
            mean = num / sum(weights[m] for m in shared)
            assert got == pytest.approx(mean, abs=1e-5)
            checked_same += 1
        else:
            checked_diff += 1
    assert checked_same > 10 and checked_diff > 10


def test_weights_change_similarity() -> None:
    # two records: identical text, orthogonal images
    blocks = {"text": np.array([[1.0, 0.0], [2.0, 0.0]]), "image": np.array([[0.0, 1.0], [1.0, 0.0]])}
    present = {"text": np.array([True, True]), "image": np.array([True, True])}
    equal = early_fusion(blocks, present, {"text": 1, "image": 1})
    text_heavy = early_fusion(blocks, present, {"text": 3, "image": 1})
    assert float(equal.vectors[0] @ equal.vectors[1]) == pytest.approx(0.5, abs=1e-6)
    assert float(text_heavy.vectors[0] @ text_heavy.vectors[1]) == pytest.approx(0.75, abs=1e-6)


def test_zero_weight_modality_dropped() -> None:
    rng = np.random.default_rng(0)
    blocks = {"text": rng.normal(size=(4, 3)), "image": rng.normal(size=(4, 6))}
    present = {"text": np.ones(4, bool), "image": np.array([True, False, True, False])}
    res = early_fusion(blocks, present, {"text": 1, "image": 0})
    assert res.modalities == ("text",) and res.dims == (3,)
    assert res.vectors.shape == (4, 3)
    assert res.spec == "early:text=1"
    np.testing.assert_allclose(res.vectors, l2_normalize(blocks["text"]), atol=1e-6)


def test_missing_weight_defaults_to_one_and_single_modality_rows() -> None:
    blocks = {"text": np.array([[1.0, 1.0], [0.0, 0.0]]), "image": np.array([[0.0, 0.0], [5.0, 0.0]])}
    present = {"text": np.array([True, False]), "image": np.array([False, True])}
    res = early_fusion(blocks, present, {})
    assert res.weights == {"text": 1.0, "image": 1.0}
    # a row with only one modality is that modality's unit vector
    np.testing.assert_allclose(res.vectors[0], [2**-0.5, 2**-0.5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(res.vectors[1], [0, 0, 1, 0], atol=1e-6)
    assert float(res.vectors[0] @ res.vectors[1]) == 0.0


def test_zero_or_nan_vector_counts_as_absent() -> None:
    blocks = {"text": np.array([[0.0, 0.0], [np.nan, 1.0]]), "image": np.array([[1.0, 0.0], [0.0, 2.0]])}
    present = {"text": np.array([True, True]), "image": np.array([True, True])}
    res = early_fusion(blocks, present, {"text": 1, "image": 1})
    np.testing.assert_array_equal(res.mask, [[False, True], [False, True]])
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-6)
    assert not np.isnan(res.vectors).any()


def test_row_without_kept_modality_is_zero_and_flagged() -> None:
    blocks = {"text": np.ones((2, 2)), "image": np.ones((2, 2))}
    present = {"text": np.array([True, False]), "image": np.array([True, True])}
    res = early_fusion(blocks, present, {"text": 1, "image": 0})
    np.testing.assert_array_equal(res.has_any, [True, False])
    assert not res.vectors[1].any()


def test_early_fusion_errors() -> None:
    ok = {"text": np.ones((2, 2))}
    with pytest.raises(ValueError):
        early_fusion({}, {}, {})
    with pytest.raises(ValueError, match="all modality weights"):
        early_fusion(ok, {"text": np.ones(2, bool)}, {"text": 0})
    with pytest.raises(ValueError):
        early_fusion(ok, {"text": np.ones(2, bool)}, {"text": -1})
    with pytest.raises(ValueError, match="row counts"):
        early_fusion({"text": np.ones((2, 2)), "image": np.ones((3, 2))}, {}, {})
    with pytest.raises(ValueError, match="presence mask"):
        early_fusion(ok, {}, {})


def test_fuse_end_to_end_deterministic() -> None:
    rng = np.random.default_rng(3)
    ids = [f"r{i}" for i in range(6)]
    per = {
        "image": (ids[2:], rng.normal(size=(4, 4))),
        "text": (ids[:4], rng.normal(size=(4, 3))),
    }
    a = fuse(ids, per, "image=2")
    b = fuse(ids, dict(reversed(list(per.items()))), {"image": 2.0})
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.spec == b.spec == "early:text=1,image=2"
    np.testing.assert_array_equal(a.mask.sum(axis=1), [1, 1, 2, 2, 1, 1])
    assert a.present_modalities(0) == ["text"] and a.present_modalities(5) == ["image"]
