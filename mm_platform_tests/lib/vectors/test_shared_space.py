"""Generalising alignment: early stopping, scaled heads, linear baselines (ridge, CCA) and the heads/baseline gate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mm_platform.lib.vectors.shared_space import (
    AlignmentConfig,
    AlignmentModel,
    fit_baseline,
    fit_shared_space,
    retrieval_recall,
    ridge_map,
    scaled_hidden_dim,
    split_rows,
    train_alignment,
    train_threads,
)
from mm_platform_tests.lib.vectors.test_alignment import _anchored_data, _planted


def _noise(n: int, dims: dict[str, int], seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Modalities with nothing in common: all a model can learn is the training rows by heart."""
    rng = np.random.default_rng(seed)
    blocks = {m: rng.normal(size=(n, d)).astype(np.float32) for m, d in dims.items()}
    return blocks, {m: np.ones(n, bool) for m in dims}


def _linear(n: int, seed: int = 0, noise: float = 0.01) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """image = text @ M (+ a little noise): a linear map any least-squares fit should recover."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(n, 12))
    M = rng.normal(size=(12, 20))
    image = text @ M + noise * rng.normal(size=(n, 20))
    return ({"text": text.astype(np.float32), "image": image.astype(np.float32)},
            {"text": np.ones(n, bool), "image": np.ones(n, bool)}, M)


# -- early stopping and the size of the heads ---------------------------------------------------------------


def test_heads_stop_early_when_validation_loss_rises_and_keep_the_best_epoch() -> None:
    blocks, present = _noise(80, {"text": 32, "image": 32})
    cfg = AlignmentConfig(shared_dim=32, hidden_dim=256, epochs=80, batch_size=64, lr=5e-3, patience=3,
                          dropout=0.0, weight_decay=0.0)
    model, m = train_alignment(blocks, present, cfg)
    train, val = m["train_loss_curve"], m["val_loss_curve"]
    assert m["stopped_early"] and m["epochs"] == len(train) == len(val) < cfg.epochs
    assert train[-1] < train[0]  # it keeps fitting the training rows ...
    best = int(np.argmin(val))
    assert m["best_epoch"] == best + 1 and m["epochs"] == best + 1 + cfg.patience  # ... validation got no better
    assert m["val_loss"] == min(val) and m["train_loss"] == train[best]
    # the returned weights are the best epoch's, not the last: retraining for exactly best_epoch epochs with the
    # same schedule length would differ (cosine decay), so compare with an independent loss evaluation instead
    full, m_all = train_alignment(blocks, present, replace(cfg, patience=0))
    assert m_all["epochs"] == cfg.epochs and not m_all["stopped_early"]
    assert m_all["val_loss"] == m_all["val_loss_curve"][-1] > m["val_loss"]
    assert full.version != model.version


def test_hidden_width_scales_with_training_rows_and_is_recorded() -> None:
    assert [scaled_hidden_dim(n) for n in (0, 10, 64, 192, 480, 2000, 10**6)] == [16, 16, 16, 32, 64, 256, 512]
    blocks, present, _ = _planted(n=300)
    model, m = train_alignment(blocks, present, AlignmentConfig(shared_dim=16, epochs=1))
    assert model.config.hidden_dim == m["hidden_dim"] == scaled_hidden_dim(m["n_train"]) == 32
    assert m["n_parameters"] == model.n_parameters() == sum(
        d * 32 + 32 + 32 * 16 + 16 for d in model.in_dims.values())
    small, _ = train_alignment(blocks, present, AlignmentConfig(shared_dim=16, epochs=1, max_train=60))
    assert small.n_parameters() < model.n_parameters()
    assert 1 <= train_threads(100) <= train_threads(10**6) <= 4 and train_threads(100) == 1


def test_dropout_and_config_validation() -> None:
    for bad in ({"dropout": 1.0}, {"dropout": -0.1}, {"patience": -1}, {"mapping": "pca"}, {"hidden_dim": -2}):
        with pytest.raises(ValueError):
            AlignmentConfig(**bad)  # type: ignore[arg-type]
    assert AlignmentConfig.from_dict(json.loads(AlignmentConfig().to_json())) == AlignmentConfig()


# -- linear baselines -----------------------------------------------------------------------------------------


def test_ridge_map_recovers_a_known_linear_map() -> None:
    rng = np.random.default_rng(1)
    A = rng.normal(size=(500, 10))
    M = rng.normal(size=(10, 4))
    np.testing.assert_allclose(ridge_map(A, A @ M, alpha=1e-8), M, atol=1e-6)
    # fewer rows than columns (dual form) still interpolates the targets
    Aw = rng.normal(size=(20, 50))
    T = rng.normal(size=(20, 3))
    np.testing.assert_allclose(Aw @ ridge_map(Aw, T, alpha=1e-10), T, atol=1e-5)


@pytest.mark.parametrize("method", ["ridge", "cca"])
def test_baselines_recover_a_linear_relation_between_modalities(method: str) -> None:
    blocks, present, _ = _linear(400)
    split = split_rows(blocks, present, AlignmentConfig(shared_dim=16))
    model = fit_baseline(split, method)
    assert model is not None and model.mapping == method and model.config.hidden_dim == 0
    val = split.val_idx
    r = retrieval_recall(model.project("text", blocks["text"][val]), model.project("image", blocks["image"][val]))
    assert r["recall@1"] >= 0.95, r
    untrained, _ = train_alignment(blocks, present, AlignmentConfig(shared_dim=16, epochs=0))
    r0 = retrieval_recall(untrained.project("text", blocks["text"][val]),
                          untrained.project("image", blocks["image"][val]))
    assert r0["recall@1"] < 0.5


def test_baselines_with_anchors_map_into_the_anchor_space(tmp_path: Path) -> None:
    blocks, present = _anchored_data()
    split = split_rows(blocks, present, AlignmentConfig(anchors=("text", "image")))
    assert fit_baseline(split, "cca") is None  # would move the anchors' space
    model = fit_baseline(split, "ridge")
    assert model is not None and model.anchors == ("text", "image") and model.shared_dim == 32
    text = blocks["text"][present["text"]]
    np.testing.assert_allclose(model.project("text", text), text / np.linalg.norm(text, axis=1, keepdims=True),
                               atol=1e-6)
    loaded = AlignmentModel.load(model.save(tmp_path / "ridge.safetensors"))
    assert loaded.version == model.version and loaded.mapping == "ridge"
    np.testing.assert_array_equal(loaded.project("audio", blocks["audio"]), model.project("audio", blocks["audio"]))
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_baseline(split, "pca")


# -- the gate -----------------------------------------------------------------------------------------------


def test_gate_picks_the_baseline_when_heads_are_worse(tmp_path: Path) -> None:
    blocks, present, _ = _linear(200)
    cfg = AlignmentConfig(shared_dim=16, epochs=1)  # one epoch: the heads barely moved
    model, m = fit_shared_space(blocks, present, cfg)
    assert m["use_heads"] is False and m["mapping_in_use"] == model.mapping == m["baseline"] in ("ridge", "cca")
    assert m["validation_recall_baseline"] > m["validation_recall_heads"]
    assert m["validation_recall_baseline"] >= 0.95 and "baseline is used" in m["mapping_reason"]
    assert m["gating"]["text|image"]["use_heads"] is False
    assert m["gating"]["text|image"]["validation_recall_baseline"] == m["validation_recall_baseline"]
    assert m["version"] == model.version != m["heads_version"]
    assert m["retrieval_in_use"] == m["baselines"][m["baseline"]]["retrieval"]
    json.dumps(m)
    loaded = AlignmentModel.load(model.save(tmp_path / "m.safetensors"))
    assert loaded.mapping == model.mapping and loaded.version == model.version


def test_gate_keeps_heads_that_beat_the_linear_baselines() -> None:
    """image sees the latent through a square: no linear map relates it to text, a small MLP can."""
    rng = np.random.default_rng(0)
    n = 1500
    z = rng.normal(size=(n, 6))
    text = z @ rng.normal(size=(6, 16))
    image = np.abs(z) @ rng.normal(size=(6, 16)) + 0.05 * rng.normal(size=(n, 16))
    blocks = {"text": text.astype(np.float32), "image": image.astype(np.float32)}
    present = {m: np.ones(n, bool) for m in blocks}
    cfg = AlignmentConfig(shared_dim=16, hidden_dim=128, epochs=60, dropout=0.0, lr=3e-3)
    model, m = fit_shared_space(blocks, present, cfg)
    assert m["use_heads"] is True and model.mapping == "heads" and m["version"] == m["heads_version"]
    assert m["validation_recall_heads"] > m["validation_recall_baseline"]
    assert m["gating"]["text|image"]["use_heads"] is True and "heads' validation" in m["mapping_reason"]


def test_gate_without_validation_rows_keeps_the_heads() -> None:
    blocks, present, _ = _linear(60)
    model, m = fit_shared_space(blocks, present, AlignmentConfig(shared_dim=8, epochs=1, val_fraction=0.0))
    assert model.mapping == "heads" and m["use_heads"] and m["baseline"] is None
    assert "no validation rows" in m["mapping_reason"] and m["gating"]["text|image"]["use_heads"] is None


def test_search_through_a_baseline_shared_space() -> None:
    """When the gate picks the baseline, cross-modal search through SharedSpace still finds the record."""
    from mm_platform.lib.search import Query, SharedSpace

    blocks, present, _ = _linear(200, seed=3)
    model, m = fit_shared_space(blocks, present, AlignmentConfig(shared_dim=16, epochs=1))
    assert model.mapping != "heads"
    ids = [f"r{i}" for i in range(200)]
    space = SharedSpace(model, {"image": ids}, {"image": model.project("image", blocks["image"])})
    assert space.covers("text", "image")
    found = [space.search(Query("text", blocks["text"][i], "tiny-text"), "image", 3)[0][0] for i in range(0, 200, 7)]
    assert found == [f"r{i}" for i in range(0, 200, 7)]
