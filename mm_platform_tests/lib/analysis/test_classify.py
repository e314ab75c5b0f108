"""Tests for mm_platform.lib.analysis.classify: each modality alone confuses different class pairs, fusion resolves them."""

from __future__ import annotations

import numpy as np
import pytest

from mm_platform.lib.analysis.classify import evaluate_classifiers

SPEC_DIMS = {"text": 384, "image": 1280, "audio": 176, "tabular": 64}
SMALL_DIMS = {"text": 24, "image": 40, "audio": 16}
# class -> cluster seen by each modality: every modality merges classes in pairs, a different pairing each,
# so one modality alone cannot beat ~1/2 accuracy while any two together identify all six classes.
MERGES = {
    "text": [0, 0, 1, 1, 2, 2],
    "image": [0, 1, 1, 2, 2, 0],
    "audio": [0, 1, 2, 0, 1, 2],
    "tabular": [0, 1, 0, 2, 1, 2],
}


def _confusable(
    n: int, dims: dict[str, int], seed: int = 0, p_present: float = 0.85, unlabelled_every: int = 5
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str | None], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, n)
    blocks: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for m, d in dims.items():
        groups = np.array(MERGES[m])
        means = rng.normal(size=(groups.max() + 1, d)) * 2.0
        X = means[groups[y]] + rng.normal(size=(n, d)) * np.sqrt(d) / 4
        mask = rng.random(n) < p_present
        blocks[m] = np.where(mask[:, None], X, 0.0).astype(np.float32)
        present[m] = mask
    labels: list[str | None] = [None if i % unlabelled_every == 0 else f"class_{v}" for i, v in enumerate(y)]
    return blocks, present, labels, y


@pytest.fixture(scope="module")
def spec_run():  # type: ignore[no-untyped-def]
    """2,000 rows with the real encoder dimensions (the size the platform evaluates)."""
    blocks, present, labels, y = _confusable(2000, SPEC_DIMS)
    metrics, predictions = evaluate_classifiers(blocks, present, labels)
    return blocks, present, labels, y, metrics, predictions


def test_fusion_beats_every_single_modality(spec_run) -> None:  # type: ignore[no-untyped-def]
    *_, metrics, _ = spec_run
    by = {r["strategy"]: r for r in metrics}
    assert [r["strategy"] for r in metrics] == ["early", "late", "late_learned", "text", "image", "audio",
                                                 "tabular"]
    best_single = max(by[m]["macro_f1"] for m in SPEC_DIMS)
    assert best_single < 0.7
    for s in ("early", "late", "late_learned"):
        assert by[s]["macro_f1"] > best_single + 0.2, s
        assert by[s]["accuracy"] > 0.85
        assert by[s]["modalities"] == list(SPEC_DIMS)
    assert by["image"]["modalities"] == ["image"]
    for r in metrics:
        assert r["folds"] == 5 and r["n_classes"] == 6
        assert 0.0 <= r["macro_f1_std"] < 0.1
        assert r["seconds"] < 60


def test_confusion_matrix_counts_every_cross_validated_prediction(spec_run) -> None:  # type: ignore[no-untyped-def]
    *_, metrics, _ = spec_run
    for r in metrics:
        cm = np.array(r["confusion"])
        assert cm.shape == (r["n_classes"], r["n_classes"]) and len(r["classes"]) == r["n_classes"]
        assert cm.sum() == r["n_labelled"]  # every kept labelled row was a test row exactly once
        assert np.trace(cm) / cm.sum() == pytest.approx(r["accuracy"], abs=0.02)  # folds are near-equal
    by = {r["strategy"]: r for r in metrics}
    assert np.trace(np.array(by["early"]["confusion"])) > np.trace(np.array(by["text"]["confusion"]))


def test_labelled_rows_counted_and_predictions_for_unlabelled(spec_run) -> None:  # type: ignore[no-untyped-def]
    blocks, present, labels, y, metrics, predictions = spec_run
    any_present = np.any([present[m] for m in SPEC_DIMS], axis=0)
    labelled = np.array([v is not None for v in labels])
    assert metrics[0]["n_labelled"] == int(np.sum(labelled & any_present))
    if np.any(labelled & ~any_present):
        assert "without any modality" in metrics[0]["notes"]
    expected_rows = np.flatnonzero(~labelled & any_present).tolist()
    assert set(predictions) == {"early", "late", "late_learned"}
    for strategy, preds in predictions.items():
        assert [p["row"] for p in preds] == expected_rows
        assert all(p["strategy"] == strategy for p in preds)
        assert all(0.0 < p["probability"] <= 1.0 for p in preds)
        assert {p["label"] for p in preds} <= {f"class_{k}" for k in range(6)}
        correct = np.mean([p["label"] == f"class_{y[p['row']]}" for p in preds])
        assert correct > 0.85, strategy


def test_deterministic_and_folds_shared() -> None:
    blocks, present, labels, _ = _confusable(300, SMALL_DIMS, seed=1)
    a = evaluate_classifiers(blocks, present, labels, folds=3, seed=4)
    b = evaluate_classifiers(blocks, present, labels, folds=3, seed=4)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a[0]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b[0]]
    assert a[1] == b[1]


def test_absent_modality_falls_back_to_majority() -> None:
    blocks, present, labels, _ = _confusable(300, SMALL_DIMS, seed=2)
    present = {**present, "audio": np.zeros_like(present["audio"])}
    metrics, _ = evaluate_classifiers(blocks, present, labels, folds=3)
    by = {r["strategy"]: r for r in metrics}
    counts = np.unique([v for v in labels if v is not None], return_counts=True)[1]
    # every row is predicted as its training fold's majority class: accuracy near the largest class share
    assert by["audio"]["accuracy"] <= counts.max() / counts.sum() + 0.05
    assert by["early"]["macro_f1"] > 0.8
    assert by["late"]["macro_f1"] > max(by[m]["macro_f1"] for m in SMALL_DIMS)


def test_rare_classes_dropped_or_folds_lowered() -> None:
    blocks, present, labels, _ = _confusable(300, SMALL_DIMS, seed=3, p_present=1.0)
    rare = list(labels)
    for i in (1, 2, 3):  # a class with 3 examples (fewer than 5 folds)
        rare[i] = "rare"
    metrics, _ = evaluate_classifiers(blocks, present, rare, folds=5)
    assert metrics[0]["n_classes"] == 6 and metrics[0]["folds"] == 5
    assert "1 classes with fewer than 5 examples dropped: rare (3)" in metrics[0]["notes"]

    tiny = [None] * 300
    for i, name in enumerate(["a", "a", "a", "b", "b", "b", "b", "c"]):
        tiny[i] = name
    metrics, predictions = evaluate_classifiers(blocks, present, tiny, folds=5)
    assert metrics[0]["folds"] == 3 and metrics[0]["n_classes"] == 2 and metrics[0]["n_labelled"] == 7
    assert "folds lowered from 5 to 3" in metrics[0]["notes"] and "c (1)" in metrics[0]["notes"]
    assert len(predictions["early"]) == 292


def test_input_validation() -> None:
    blocks, present, labels, _ = _confusable(60, SMALL_DIMS, seed=4)
    with pytest.raises(ValueError, match="folds"):
        evaluate_classifiers(blocks, present, labels, folds=1)
    with pytest.raises(ValueError, match="two classes"):
        evaluate_classifiers(blocks, present, ["x"] * 60)
    with pytest.raises(ValueError, match="like the labels"):
        evaluate_classifiers(blocks, present, labels[:10])
    with pytest.raises(ValueError, match="presence mask"):
        evaluate_classifiers(blocks, {"text": present["text"]}, labels)
    with pytest.raises(ValueError, match="at least one"):
        evaluate_classifiers({}, {}, labels)


def test_learned_late_fusion_weights_down_a_noise_modality() -> None:
    blocks, present, labels, _ = _confusable(400, SMALL_DIMS, seed=5, p_present=1.0)
    rng = np.random.default_rng(0)
    noisy = {**blocks, "audio": rng.normal(size=blocks["audio"].shape).astype(np.float32)}
    metrics, _ = evaluate_classifiers(noisy, present, labels, folds=3)
    by = {r["strategy"]: r for r in metrics}
    weights = by["late_learned"]["weights"]
    assert set(weights) == set(SMALL_DIMS) and by["late"]["weights"] is None
    assert weights["audio"] < 0.1 < min(w for m, w in weights.items() if m != "audio")
    # a noise modality adds near-uniform probabilities, so it barely moves the unweighted mean either:
    # learning its weight away must not cost anything
    assert by["late_learned"]["macro_f1"] >= by["late"]["macro_f1"] - 0.02
