"""Tests for mm_platform.lib.vectors.shared_space: contrastive heads on synthetic multimodal data with a shared latent."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mm_platform.lib.vectors.shared_space import (
    AlignmentConfig,
    AlignmentModel,
    retrieval_recall,
    train_alignment,
)

DIMS = {"text": 48, "image": 96, "audio": 24}
FAST = AlignmentConfig(shared_dim=32, hidden_dim=64, epochs=25, batch_size=128, seed=0)


def _planted(
    n: int = 600, dims: dict[str, int] = DIMS, latent: int = 16, n_classes: int = 8, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """Per row a latent = class centre + own variation, seen by each modality through its own random map."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centres = rng.normal(size=(n_classes, latent))
    z = centres[y] + rng.normal(size=(n, latent))
    blocks: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for m, d in dims.items():
        W = rng.normal(size=(latent, d))
        X = z @ W + 0.3 * np.sqrt(latent) * rng.normal(size=(n, d))
        mask = rng.random(n) < 0.85
        blocks[m] = np.where(mask[:, None], X, 0.0).astype(np.float32)
        present[m] = mask
    return blocks, present, [f"c{v}" for v in y]


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    return _planted()


@pytest.fixture(scope="module")
def trained(data):  # type: ignore[no-untyped-def]
    blocks, present, labels = data
    return train_alignment(blocks, present, FAST, labels=labels)


# -- training and metrics ---------------------------------------------------------------------------------


def test_trained_heads_reach_high_validation_recall_and_beat_untrained(data, trained) -> None:  # type: ignore[no-untyped-def]
    blocks, present, labels = data
    model, metrics = trained
    untrained_model, base = train_alignment(blocks, present, replace(FAST, epochs=0), labels=labels)
    assert set(metrics["retrieval"]) == {f"{a}->{b}" for a in DIMS for b in DIMS if a != b}
    for pair, r in metrics["retrieval"].items():
        assert r["n_queries"] == r["n_gallery"] >= 50
        assert r["recall@1"] <= r["recall@5"] <= r["recall@10"]
        assert r["recall@10"] >= 0.9, pair
        assert r["label_recall@10"] >= 0.9, pair
        b = base["retrieval"][pair]
        assert r["recall@10"] > b["recall@10"] + 0.5, pair
        assert r["recall@1"] > b["recall@1"]
    assert metrics["val_loss"] < base["val_loss"] - 1.0
    assert metrics["train_loss"] < base["train_loss"]
    assert metrics["mean_recall@10"] > base["mean_recall@10"] + 0.5
    assert metrics["mean_label_recall@10"] > 0.9
    assert untrained_model.version != model.version


def test_metrics_bookkeeping(data, trained) -> None:  # type: ignore[no-untyped-def]
    _, present, _ = data
    model, metrics = trained
    n_usable = int(np.sum(np.sum([present[m] for m in DIMS], axis=0) >= 2))
    assert metrics["n_usable"] == n_usable == metrics["n_train"] + metrics["n_val"]
    assert metrics["n_val"] == round(n_usable * FAST.val_fraction)
    assert metrics["pairs"] == ["text|image", "text|audio", "image|audio"]
    assert metrics["epochs"] == FAST.epochs and metrics["seconds"] > 0
    assert metrics["dropped_modalities"] == []
    assert metrics["version"] == model.version and len(model.version) == 12
    assert model.modalities == ("text", "image", "audio")
    assert model.in_dims == DIMS and model.shared_dim == 32
    json.dumps(metrics)  # plain JSON-able values only


def test_max_train_subsamples_and_unlabelled_run(data) -> None:  # type: ignore[no-untyped-def]
    blocks, present, _ = data
    cfg = AlignmentConfig(shared_dim=16, hidden_dim=0, epochs=2, batch_size=64, max_train=100)
    model, metrics = train_alignment(blocks, present, cfg)
    assert metrics["n_train"] == 100
    assert "label_recall@10" not in next(iter(metrics["retrieval"].values()))
    assert "mean_label_recall@10" not in metrics
    assert model.project("audio", blocks["audio"][:3]).shape == (3, 16)


def test_modality_without_partner_is_dropped(data) -> None:  # type: ignore[no-untyped-def]
    blocks, present, _ = data
    n = len(present["text"])
    b = {**blocks, "tabular": np.ones((n, 4), np.float32)}
    p = {**present, "tabular": np.zeros(n, bool)}
    model, metrics = train_alignment(b, p, AlignmentConfig(shared_dim=8, hidden_dim=0, epochs=1))
    assert metrics["dropped_modalities"] == ["tabular"]
    assert "tabular" not in model.modalities


def test_same_seed_same_version_and_projections(data, trained) -> None:  # type: ignore[no-untyped-def]
    blocks, present, labels = data
    model, metrics = trained
    again, metrics2 = train_alignment(blocks, present, FAST, labels=labels)
    assert again.version == model.version
    assert metrics2["retrieval"] == metrics["retrieval"]
    for m in DIMS:
        np.testing.assert_array_equal(again.project(m, blocks[m]), model.project(m, blocks[m]))
    other, _ = train_alignment(blocks, present, replace(FAST, seed=1, epochs=1), labels=labels)
    assert other.version != model.version


def test_training_restores_torch_state(data) -> None:  # type: ignore[no-untyped-def]
    blocks, present, _ = data
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_alignment(blocks, present, AlignmentConfig(shared_dim=8, hidden_dim=0, epochs=1))
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det


# -- projection -------------------------------------------------------------------------------------------


def test_project_unit_rows_zero_rows_and_errors(data, trained) -> None:  # type: ignore[no-untyped-def]
    blocks, present, _ = data
    model, _ = trained
    Z = model.project("image", blocks["image"])
    assert Z.shape == (len(present["image"]), 32) and Z.dtype == np.float32
    norms = np.linalg.norm(Z, axis=1)
    np.testing.assert_allclose(norms[present["image"]], 1.0, atol=1e-5)
    np.testing.assert_array_equal(Z[~present["image"]], 0.0)
    # scale invariance: inputs are L2-normalised inside the heads
    np.testing.assert_allclose(model.project("image", 7.0 * blocks["image"][:5]), Z[:5], atol=1e-5)
    assert model.project("text", np.zeros((0, 48), np.float32)).shape == (0, 32)
    with pytest.raises(ValueError, match="no alignment head"):
        model.project("tabular", blocks["text"])
    with pytest.raises(ValueError, match="expected shape"):
        model.project("text", blocks["image"])
    with pytest.raises(ValueError, match="NaN"):
        model.project("text", np.full((1, 48), np.nan, np.float32))


# -- persistence ------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path, data, trained) -> None:  # type: ignore[no-untyped-def]
    blocks, _, _ = data
    model, _ = trained
    path = model.save(tmp_path / "sub" / "align.safetensors", extra={"encoder.text": "all-MiniLM-L6-v2"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["align.safetensors"]  # no temp file left
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        names = set(fh.keys())
    assert meta["version"] == model.version and meta["encoder.text"] == "all-MiniLM-L6-v2"
    assert json.loads(meta["modalities"]) == ["text", "image", "audio"]
    assert json.loads(meta["in_dims"]) == DIMS
    assert json.loads(meta["config"]) == {k: v for k, v in asdict(FAST).items() if k != "anchors"}
    assert AlignmentConfig.from_dict(json.loads(meta["config"])) == FAST
    assert "text.0.weight" in names and "audio.2.bias" in names
    loaded = AlignmentModel.load(path)
    assert loaded.version == model.version and loaded.config == FAST
    assert loaded.extra == {"encoder.text": "all-MiniLM-L6-v2"}
    for m in DIMS:
        np.testing.assert_array_equal(loaded.project(m, blocks[m]), model.project(m, blocks[m]))


def test_tampered_or_foreign_files_rejected(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    model, _ = trained
    path = model.save(tmp_path / "align.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))

    tampered = dict(tensors)
    tampered["text.0.weight"] = tampered["text.0.weight"].clone()
    tampered["text.0.weight"][0, 0] += 1e-3
    save_file(tampered, str(tmp_path / "tampered.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="version mismatch"):
        AlignmentModel.load(tmp_path / "tampered.safetensors")

    missing = {k: v for k, v in tensors.items() if k != "audio.0.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="missing tensor"):
        AlignmentModel.load(tmp_path / "missing.safetensors")

    extra = {**tensors, "evil.weight": torch.zeros(2)}
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="unexpected tensors"):
        AlignmentModel.load(tmp_path / "extra.safetensors")

    cfg = json.loads(meta["config"])
    cfg["temperature"] = 0.5
    save_file(tensors, str(tmp_path / "cfg.safetensors"), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(ValueError, match="version mismatch"):
        AlignmentModel.load(tmp_path / "cfg.safetensors")

    save_file(tensors, str(tmp_path / "foreign.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not an alignment model"):
        AlignmentModel.load(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable"):
        AlignmentModel.load(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="reserved"):
        model.save(tmp_path / "x.safetensors", extra={"version": "x"})


# -- validation of inputs and config ------------------------------------------------------------------------


def test_config_and_input_validation(data) -> None:  # type: ignore[no-untyped-def]
    blocks, present, _ = data
    for bad in (
        {"shared_dim": 1},
        {"temperature": 0.0},
        {"val_fraction": 1.0},
        {"batch_size": 1},
        {"lr": -1.0},
    ):
        with pytest.raises(ValueError):
            AlignmentConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown alignment config"):
        AlignmentConfig.from_dict({"shared_dim": 8, "bogus": 1})
    with pytest.raises(ValueError, match="different row counts"):
        train_alignment({"text": blocks["text"], "image": blocks["image"][:10]}, present, FAST)
    with pytest.raises(ValueError, match="no presence mask"):
        train_alignment(blocks, {"text": present["text"]}, FAST)
    with pytest.raises(ValueError, match="labels"):
        train_alignment(blocks, present, FAST, labels=["a"])
    only = {m: np.zeros_like(present[m]) for m in DIMS}
    only["text"][:] = True
    with pytest.raises(ValueError, match="at least 4 rows"):
        train_alignment(blocks, only, FAST)


def test_spec_sized_dims_train() -> None:
    dims = {"text": 384, "image": 1280, "audio": 176, "tabular": 64}
    blocks, present, labels = _planted(n=400, dims=dims, seed=3)
    model, metrics = train_alignment(blocks, present, AlignmentConfig(epochs=3), labels=labels)
    assert model.in_dims == dims and model.shared_dim == 128
    assert len(metrics["pairs"]) == 6 and len(metrics["retrieval"]) == 12


# -- retrieval_recall ---------------------------------------------------------------------------------------


def test_retrieval_recall_definitions() -> None:
    rng = np.random.default_rng(0)
    G = rng.normal(size=(20, 8))
    r = retrieval_recall(G, G, k=(1, 5))
    assert r["recall@1"] == r["recall@5"] == 1.0 and r["median_rank"] == 1.0
    # query i points at gallery (i + 1) % n: target is never first, but always in the top 5 when it is second
    Q = G[(np.arange(20) + 1) % 20]
    r = retrieval_recall(Q, G, k=1)
    assert r["recall@1"] == 0.0 and r["n_queries"] == 20
    # gallery larger than the queries (distractors), labels
    q_labels = ["a"] * 10
    g_labels = ["b"] * 10 + ["a"] * 10
    Qd = G[10:]  # each query equals gallery row i + 10, labelled "a"; its own target (row i) is labelled "b"
    r = retrieval_recall(Qd, G, k=(1, 10), q_labels=q_labels, g_labels=g_labels)
    assert r["label_recall@1"] == 1.0 and r["n_labelled_queries"] == 10
    r2 = retrieval_recall(Qd, G, k=1, q_labels=[None] * 10, g_labels=g_labels)
    assert r2["label_recall@1"] is None and r2["n_labelled_queries"] == 0
    # ties: identical gallery rows rank by index (stable), so only query 0 finds its target first
    same = np.ones((4, 3))
    assert retrieval_recall(same, same, k=1)["recall@1"] == 0.25
    assert retrieval_recall(np.zeros((0, 3)), np.zeros((0, 3)), k=1)["recall@1"] is None
    with pytest.raises(ValueError, match="gallery"):
        retrieval_recall(G, G[:5], k=1)
    with pytest.raises(ValueError, match="k must be"):
        retrieval_recall(G, G, k=0)


# -- anchor modalities --------------------------------------------------------------------------------------

ANCHOR_DIM = 32
ANCHORED = replace(FAST, anchors=("text", "image"))


def _anchored_data(
    n: int = 600, latent: int = 16, seed: int = 5
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """text and image share a space natively (image = text + small noise, same dim); audio is a random map."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, latent))
    text = z @ rng.normal(size=(latent, ANCHOR_DIM)) + 0.3 * rng.normal(size=(n, ANCHOR_DIM))
    image = text + 0.05 * np.sqrt(latent) * rng.normal(size=(n, ANCHOR_DIM))
    audio = z @ rng.normal(size=(latent, 24)) + 0.3 * np.sqrt(latent) * rng.normal(size=(n, 24))
    blocks: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for m, X in {"text": text, "image": image, "audio": audio}.items():
        mask = rng.random(n) < 0.9
        blocks[m] = np.where(mask[:, None], X, 0.0).astype(np.float32)
        present[m] = mask
    return blocks, present


@pytest.fixture(scope="module")
def anchored_data() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return _anchored_data()


@pytest.fixture(scope="module")
def anchored(anchored_data):  # type: ignore[no-untyped-def]
    blocks, present = anchored_data
    return train_alignment(blocks, present, ANCHORED)


def _unit_rows(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    out = np.zeros_like(X)
    nz = np.linalg.norm(X, axis=1) > 0
    out[nz] = X[nz] / np.linalg.norm(X[nz], axis=1, keepdims=True)
    return out


def test_anchor_config_canonical_and_json() -> None:
    cfg = AlignmentConfig(anchors=("image", "text", "image"))  # type: ignore[arg-type]
    assert cfg.anchors == ("text", "image")
    assert AlignmentConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert json.loads(cfg.to_json())["anchors"] == ["text", "image"]
    assert "anchors" not in json.loads(AlignmentConfig().to_json())  # old configs hash as before
    for bad in ("text", ("text", ""), (1,)):
        with pytest.raises(ValueError, match="anchors"):
            AlignmentConfig(anchors=bad)  # type: ignore[arg-type]


def test_anchor_heads_are_identity_and_others_train_into_their_space(anchored_data, anchored) -> None:  # type: ignore[no-untyped-def]
    blocks, present = anchored_data
    model, metrics = anchored
    assert model.anchors == ("text", "image") and metrics["anchors"] == ["text", "image"]
    assert model.shared_dim == model.config.shared_dim == ANCHOR_DIM  # default shared_dim taken from anchors
    assert metrics["pairs"] == ["text|audio", "image|audio"]  # text|image has nothing to train
    assert metrics["epochs"] == FAST.epochs
    assert set(metrics["retrieval"]) == {f"{a}->{b}" for a in model.modalities for b in model.modalities if a != b}
    assert {k.split(".")[0] for k in model.tensors()} == {"audio"}
    for m in ("text", "image"):
        Z = model.project(m, blocks[m])
        np.testing.assert_array_equal(Z, _unit_rows(blocks[m]))
        np.testing.assert_array_equal(Z[~present[m]], 0.0)
    assert metrics["retrieval"]["text->image"]["recall@10"] >= 0.9  # native shared space

    untrained, base = train_alignment(blocks, present, replace(ANCHORED, epochs=0))
    assert base["epochs"] == 0 and untrained.anchors == model.anchors
    np.testing.assert_array_equal(untrained.project("text", blocks["text"]), model.project("text", blocks["text"]))
    assert base["retrieval"]["text->image"] == metrics["retrieval"]["text->image"]
    for pair in ("audio->text", "audio->image", "text->audio", "image->audio"):
        r, b = metrics["retrieval"][pair], base["retrieval"][pair]
        assert r["recall@10"] >= 0.85, (pair, r)
        assert r["recall@10"] > b["recall@10"] + 0.5, (pair, r, b)
    assert metrics["val_loss"] < base["val_loss"] - 1.0


def test_only_anchors_skips_training(anchored_data) -> None:  # type: ignore[no-untyped-def]
    blocks, present = anchored_data
    sub_b = {m: blocks[m] for m in ("text", "image")}
    sub_p = {m: present[m] for m in ("text", "image")}
    model, metrics = train_alignment(sub_b, sub_p, ANCHORED)
    assert metrics["epochs"] == 0 and metrics["pairs"] == []
    assert metrics["train_loss"] is None and metrics["val_loss"] is None
    assert model.tensors() == {} and model.anchors == ("text", "image")
    assert metrics["retrieval"]["image->text"]["recall@10"] >= 0.9
    np.testing.assert_array_equal(model.project("image", blocks["image"]), _unit_rows(blocks["image"]))


def test_anchored_save_load_round_trip(tmp_path: Path, anchored_data, anchored) -> None:  # type: ignore[no-untyped-def]
    blocks, _ = anchored_data
    model, _ = anchored
    path = model.save(tmp_path / "anchored.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["config"])["anchors"] == ["text", "image"]
    loaded = AlignmentModel.load(path)
    assert loaded.anchors == model.anchors and loaded.config == model.config
    assert loaded.version == model.version and loaded.shared_dim == ANCHOR_DIM
    for m in model.modalities:
        np.testing.assert_array_equal(loaded.project(m, blocks[m]), model.project(m, blocks[m]))
    # dropping the anchors from the config makes text/image trained heads whose tensors are missing
    cfg = json.loads(meta["config"])
    del cfg["anchors"]
    save_file(load_file(str(path)), str(tmp_path / "x.safetensors"), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(ValueError, match="missing tensor"):
        AlignmentModel.load(tmp_path / "x.safetensors")


def test_anchor_dimension_checks(anchored_data) -> None:  # type: ignore[no-untyped-def]
    blocks, present = anchored_data
    bad = {**blocks, "image": blocks["image"][:, :16]}
    with pytest.raises(ValueError, match="anchor modalities must share one dimension"):
        train_alignment(bad, present, ANCHORED)
    with pytest.raises(ValueError, match="conflicts with the anchors' dimension"):
        train_alignment(blocks, present, replace(ANCHORED, shared_dim=64))
    cfg = AlignmentConfig(shared_dim=ANCHOR_DIM, hidden_dim=0, epochs=1, anchors=("text",))
    model, _ = train_alignment(blocks, present, cfg)  # explicit matching shared_dim is fine
    assert model.anchors == ("text",) and model.config == cfg
    with pytest.raises(ValueError, match="anchor modality 'text'"):
        AlignmentModel({"text": torch.nn.Linear(ANCHOR_DIM, ANCHOR_DIM)}, {"text": ANCHOR_DIM}, cfg)
    with pytest.raises(ValueError, match="dimension 16"):
        AlignmentModel({"text": torch.nn.Identity()}, {"text": 16}, cfg)


# -- numpy inference ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden_dim", [64, 0])
def test_numpy_projection_matches_the_torch_heads(data, hidden_dim: int) -> None:  # type: ignore[no-untyped-def]
    """``project`` runs in numpy; it agrees with the torch forward the heads were trained with."""
    from mm_platform.lib.vectors.shared_space import _forward, _make_head

    blocks, _present, _labels = data
    config = replace(FAST, hidden_dim=hidden_dim)
    torch.manual_seed(hidden_dim)
    heads = {m: _make_head(d, config).eval() for m, d in DIMS.items()}
    model = AlignmentModel(heads, DIMS, config)
    for m in DIMS:
        X = blocks[m][:200]
        with torch.no_grad():
            want = _forward(heads[m], torch.from_numpy(X)).numpy()
        got = model.project(m, X)
        rows = np.linalg.norm(X, axis=1) > 0
        np.testing.assert_allclose(got[rows], want[rows], atol=2e-6)
        assert not got[~rows].any()


def test_loading_and_projecting_a_saved_model_does_not_import_torch(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    model, _metrics = trained
    path = model.save(tmp_path / "m.safetensors")
    expected = model.project("text", np.ones((2, DIMS["text"]), dtype=np.float32))
    np.save(tmp_path / "want.npy", expected)
    code = (
        "import sys, numpy as np\n"
        "from mm_platform.lib.vectors.shared_space import AlignmentModel\n"
        f"m = AlignmentModel.load({str(path)!r})\n"
        f"got = m.project('text', np.ones((2, {DIMS['text']}), dtype=np.float32))\n"
        f"assert np.array_equal(got, np.load({str(tmp_path / 'want.npy')!r}))\n"
        f"assert m.version == {model.version!r}\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_numpy_erf_is_within_float32_of_the_exact_one() -> None:
    import math

    from mm_platform.lib.vectors.shared_space.heads import erf

    x = np.concatenate([np.linspace(-9, 9, 20001), [0.0, -0.0, 1e-9, -1e-9, 40.0, -40.0]])
    exact = np.array([math.erf(v) for v in x])
    assert np.abs(erf(x) - exact).max() < 2e-7
