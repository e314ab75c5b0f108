"""Evidence weights (mutual kNN agreement) and unsupervised strategy selection on synthetic data."""

import numpy as np
import pytest

from mm_platform.lib.vectors.fusion import early_fusion
from mm_platform.lib.analysis.modality_weights import (
    evidence_weights,
    knn_indices,
    knn_overlap,
    select_strategy,
    weights_for_strategies,
)


def _clusters(n_per: int, k: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 3
    y = np.repeat(np.arange(k), n_per)
    return centers[y] + rng.normal(scale=spread, size=(k * n_per, dim)), y


def _three_views(seed: int = 0):
    img, y = _clusters(30, 4, 16, 0.5, seed)
    rng = np.random.default_rng(seed + 1)
    centers = rng.normal(size=(4, 12)) * 3
    txt = centers[y] + rng.normal(scale=0.8, size=(len(y), 12))
    noise = rng.normal(size=(len(y), 8))
    return {"image": img, "text": txt, "tabular": noise}, y


def test_informative_modalities_outweigh_noise_and_noise_is_zeroed():
    blocks, _ = _three_views()
    ev = evidence_weights(blocks, k=10)
    assert ev.weights["image"] > 0.5 and ev.weights["text"] > 0.5
    assert ev.weights["tabular"] == 0.0
    assert ev.zeroed == ["tabular"]
    assert "tabular" in ev.reason and "weight 0" in ev.reason
    assert ev.pair_overlap["text|image"] > ev.pair_overlap["image|tabular"]
    assert sum(ev.weights.values()) == pytest.approx(2.0, abs=1e-3)


def test_overlap_of_identical_views_is_one_and_random_is_near_chance():
    X, _ = _clusters(20, 3, 8, 0.3, 2)
    assert knn_overlap(X, X.copy(), 5) == pytest.approx(1.0)
    R = np.random.default_rng(3).normal(size=X.shape)
    assert knn_overlap(X, R, 5) < 0.2


def test_single_modality_and_all_noise_fall_back_to_uniform_with_reason():
    X, _ = _clusters(10, 2, 4, 0.3, 4)
    one = evidence_weights({"image": X})
    assert one.weights == {"image": 1.0} and "single" in one.reason
    rng = np.random.default_rng(5)
    noise = evidence_weights({"image": rng.normal(size=(60, 6)), "text": rng.normal(size=(60, 6))})
    assert noise.weights == {"text": 1.0, "image": 1.0} and "uniform" in noise.reason


def test_absent_rows_are_ignored_per_pair():
    blocks, _ = _three_views(7)
    blocks["text"][::3] = 0.0  # a third of records have no text
    ev = evidence_weights(blocks, k=8)
    assert ev.weights["text"] > 0 and ev.weights["tabular"] == 0.0


def test_selection_picks_evidence_fusion_over_uniform_with_noise():
    from sklearn.metrics import normalized_mutual_info_score as nmi
    from sklearn.cluster import KMeans

    blocks, y = _three_views(11)
    names = list(blocks)
    present = {m: np.ones(len(y), bool) for m in names}
    ev = evidence_weights(blocks)
    cands = {
        name: early_fusion(blocks, present, w).vectors
        for name, w in weights_for_strategies(names, ev).items()
    }
    choice = select_strategy(cands, n_clusters=4)
    assert choice.best != "single_tabular"
    assert choice.scores["early_evidence"] > choice.scores["early_uniform"]
    assert choice.scores["early_evidence"] > choice.scores["single_tabular"]
    # labels only for reporting: the chosen embedding clusters the truth at least as well as uniform fusion
    def score(X):
        return nmi(y, KMeans(4, n_init=4, random_state=0).fit_predict(X))
    assert score(cands[choice.best]) >= score(cands["early_uniform"]) - 1e-9


def test_mismatched_rows_raise():
    with pytest.raises(ValueError):
        evidence_weights({"image": np.ones((5, 2)), "text": np.ones((6, 2))})


def _four_views(seed: int = 0, n: int = 240):
    """A clean image view, text with a third of its rows pure noise, a weak audio view, and a noise view."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)

    def view(dim, spread):
        return rng.normal(size=(4, dim))[y] + rng.normal(scale=spread, size=(n, dim))

    blocks = {"image": view(64, 1.2), "text": view(32, 1.0), "audio": view(16, 2.5),
              "tabular": rng.normal(size=(n, 8))}
    silent = rng.random(n) < 1 / 3
    blocks["text"][silent] = rng.normal(size=(int(silent.sum()), 32))
    return blocks, y


def test_triads_rank_the_cleaner_view_above_the_noisier_one():
    blocks, _ = _four_views(1)
    ev = evidence_weights(blocks)
    assert ev.reliability["image"] > ev.reliability["text"] > ev.reliability["audio"] >= 0
    assert ev.weights["image"] > ev.weights["text"] > ev.weights["tabular"] == 0.0
    assert ev.zeroed == ["tabular"] and "triad" in ev.reason
    assert set(ev.graphs) == {"text", "image", "audio", "tabular"}


def test_evidence_is_computed_on_a_bounded_sample():
    blocks, _ = _four_views(2, n=300)
    ev = evidence_weights(blocks, max_rows=120)
    assert ev.sample_rows == 120
    assert all(g.rows.size == 120 and g.rows.max() < 300 for g in ev.graphs.values())


def test_modularity_is_high_for_the_true_partition_and_near_zero_for_a_random_one():
    from mm_platform.lib.analysis.modality_weights import Graph, graph_modularity

    X, y = _clusters(25, 4, 8, 0.3, 3)
    g = Graph(np.arange(len(y)), knn_indices(X, 8))
    assert graph_modularity(y, g) > 0.6
    rand = np.random.default_rng(0).integers(0, 4, size=len(y))
    assert abs(graph_modularity(rand, g)) < 0.1
    # records a partition leaves out count as singletons: covering half the records scores lower
    half = np.where(np.arange(len(y)) % 2 == 0, y, -1)
    assert graph_modularity(half, g) < graph_modularity(y, g)


def test_partition_selection_prefers_the_partition_the_informative_modalities_agree_on():
    from mm_platform.lib.analysis.modality_weights import select_partition

    blocks, y = _four_views(3)
    ev = evidence_weights(blocks)
    rng = np.random.default_rng(4)
    noisy = np.where(rng.random(len(y)) < 0.4, rng.integers(0, 4, size=len(y)), y)
    parts = {"uniform": noisy, "evidence": y.copy(), "single_tabular": rng.integers(0, 4, size=len(y))}
    choice = select_partition(parts, ev)
    assert choice.best == "evidence" and "modularity" in choice.reason
    assert choice.scores["evidence"] > choice.scores["uniform"] > choice.scores["single_tabular"]
    assert set(choice.per_modality["evidence"]) == {"text", "image", "audio"}  # tabular has weight 0
    # with enough labels the choice is by NMI on them, and says so
    labels = [str(v) if i % 2 else None for i, v in enumerate(y)]
    by_labels = select_partition({"uniform": noisy, "evidence": y.copy()}, ev, labels=labels)
    assert by_labels.best == "evidence" and by_labels.label_scores["evidence"] == 1.0
    assert by_labels.reason.startswith("labels")
    few = select_partition({"uniform": noisy, "evidence": y.copy()}, ev, labels=[None] * (len(y) - 5) + ["a"] * 5)
    assert few.label_scores == {} and "modularity" in few.reason
