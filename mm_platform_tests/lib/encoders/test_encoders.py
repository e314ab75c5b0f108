"""Tests for mm_platform.lib.encoders: MiniLM, EfficientNet-Lite0, open_clip (tiny model), profiles.

Real models, small inputs; everything runs offline on CPU.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm_platform.lib.device import DeviceConfig
from mm_platform.lib.encoders import (
    EncoderSettings,
    EncoderUnavailable,
    ImageDecodeError,
    ImageEncoder,
    TextEncoder,
    load_encoders,
    probe_host,
    registry,
    resolve_profile,
)
from mm_platform.lib.encoders.clip import locate_clip_weights
from mm_platform.lib.encoders.image import (
    EfficientNetImageEncoder,
    efficientnet_lite0_transform,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0,
    map_lite0_state_dict,
)
from mm_platform.lib.encoders.text import MiniLMTextEncoder
from mm_platform_tests.network import refuse_network
from mm_platform_tests.tiny_models import TinyClip, build_tiny_clip, shape_image, write_shape_images

CPU = DeviceConfig(device="cpu", batch_size=64, num_workers=0)
ENV_VARS = ("MM_CLIP_PRETRAINED", "MM_CLIP_ARCH", "MM_CLIP_CONFIG", "MM_MODEL_PROFILE=offline")


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(registry, "_probe_cache", {})


def _norms(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x, axis=1)


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder(CPU)


@pytest.fixture(scope="module")
def effnet() -> EfficientNetImageEncoder:
    return EfficientNetImageEncoder(DeviceConfig(device="cpu", batch_size=4, num_workers=0))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    # 0,1: red circles; 2,3: blue squares; 4,5: green triangles; repeated -> 12 images, 3 batches of 4
    specs = [("circle", "red", 0), ("circle", "red", 5), ("square", "blue", 0), ("square", "blue", 5),
             ("triangle", "green", 0), ("triangle", "green", 5)] * 2  # fmt: skip
    return write_shape_images(tmp_path_factory.mktemp("shapes"), specs)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


# ---------------------------------------------------------------------------------------------- MiniLM


def test_minilm_info_shape_dtype_norms(minilm: MiniLMTextEncoder) -> None:
    assert isinstance(minilm, TextEncoder)
    info = minilm.info
    assert (info.model_id, info.dim, info.modality) == ("sentence-transformers/all-MiniLM-L6-v2", 384, "text")
    assert len(info.model_version) == 12 and int(info.model_version, 16) >= 0
    assert info.model_version in info.space
    v = minilm.encode(["hello world", "a second sentence"])
    assert v.shape == (2, 384) and v.dtype == np.float32
    np.testing.assert_allclose(_norms(v), 1.0, atol=1e-5)


def test_minilm_semantics(minilm: MiniLMTextEncoder) -> None:
    v = minilm.encode(
        [
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "The central bank raised interest rates again.",
            "Interest rates were increased by the central bank.",
        ]
    )
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[2, 3] > sim[2, 1] + 0.3
    assert sim[0, 1] > 0.6 and sim[2, 3] > 0.8


def test_minilm_empty_unicode_and_long(minilm: MiniLMTextEncoder) -> None:
    empty = minilm.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    texts = [
        "café crème brûlée",
        "日本語のテキストです",
        "emoji 🚀🔥 ok",
        "",
        "   ",
        "Ünïcödé\u200b zero-width",
    ]
    v = minilm.encode(texts)
    assert v.shape == (len(texts), 384) and np.isfinite(v).all()
    np.testing.assert_allclose(_norms(v), 1.0, atol=1e-5)
    # Truncation at 256 word pieces: two texts with the same first ~300 tokens encode the same.
    base = "The quick brown fox jumps over the lazy dog. " * 40
    a, b = minilm.encode([base + "apples " * 2000, base + "completely different ending"])
    assert float(a @ b) > 0.9999
    with pytest.raises(TypeError, match="sequence of strings"):
        minilm.encode("not a list")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        minilm.encode(["ok", None])  # type: ignore[list-item]


def test_minilm_batching_progress_and_stable_version(minilm: MiniLMTextEncoder) -> None:
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(7)]
    small = MiniLMTextEncoder(DeviceConfig(device="cpu", batch_size=3, num_workers=0))
    assert small.info == minilm.info  # reloading gives the same identity
    calls: list[tuple[int, int]] = []
    v_small = small.encode(texts, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(3, 7), (6, 7), (7, 7)]
    np.testing.assert_allclose(v_small, minilm.encode(texts), atol=1e-5)


# ---------------------------------------------------------------------------------------------- EfficientNet


def test_effnet_encode_paths_workers_and_similarity(
    effnet: EfficientNetImageEncoder, shapes: list[Path]
) -> None:
    assert isinstance(effnet, ImageEncoder)
    assert (effnet.info.model_id, effnet.info.dim, effnet.info.modality) == (
        "timm/tf_efficientnet_lite0",
        1280,
        "image",
    )
    calls: list[tuple[int, int]] = []
    v0 = effnet.encode_paths(shapes, progress=lambda d, t: calls.append((d, t)))
    assert effnet.last_num_workers == 0
    assert calls == [(4, 12), (8, 12), (12, 12)]
    assert v0.shape == (12, 1280) and v0.dtype == np.float32
    np.testing.assert_allclose(_norms(v0), 1.0, atol=1e-5)

    two = EfficientNetImageEncoder(DeviceConfig(device="cpu", batch_size=4, num_workers=2))
    assert two.info == effnet.info
    v2 = two.encode_paths([str(p) for p in shapes])
    assert two.last_num_workers == 2
    np.testing.assert_allclose(v2, v0, atol=1e-5)

    sim = v0 @ v0.T
    for a, b in ((0, 1), (2, 3), (4, 5)):  # same shape + colour, shifted
        others = [j for j in range(6) if j not in (a, b)]
        assert sim[a, b] > max(sim[a, j] for j in others)


def test_effnet_encode_images_matches_paths(effnet: EfficientNetImageEncoder, shapes: list[Path]) -> None:
    from_paths = effnet.encode_paths(shapes[:5])
    images = [Image.open(p) for p in shapes[:5]]
    images[0] = images[0].convert("RGBA")  # non-RGB input is converted to RGB
    from_images = effnet.encode_images(images)
    assert from_images.shape == (5, 1280)
    np.testing.assert_allclose(from_images, from_paths, atol=1e-5)
    gray = effnet.encode_images([images[1].convert("L")])
    assert gray.shape == (1, 1280) and abs(float(np.linalg.norm(gray)) - 1.0) < 1e-5
    assert effnet.encode_images([]).shape == (0, 1280)
    assert effnet.encode_paths([]).shape == (0, 1280)


def test_effnet_large_jpeg_draft_decoding(effnet: EfficientNetImageEncoder, tmp_path: Path) -> None:
    big = shape_image("circle", "red", size=1600)
    path = tmp_path / "big.jpg"
    big.save(path, quality=92)  # type: ignore[attr-defined]
    via_path = effnet.encode_paths([path])
    via_image = effnet.encode_images([Image.open(path)])
    assert float(via_path[0] @ via_image[0]) > 0.98


def test_effnet_decode_errors_name_the_file(tmp_path: Path, shapes: list[Path]) -> None:
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"definitely not a png")
    enc = EfficientNetImageEncoder(DeviceConfig(device="cpu", batch_size=2, num_workers=2))
    t0 = time.monotonic()
    with pytest.raises(ImageDecodeError, match="not_an_image.png"):
        enc.encode_paths([shapes[0], shapes[1], bad, shapes[2]])
    # the loader shuts down at once (no worker-exception stall) and the encoder stays usable
    assert enc.encode_paths(shapes[:4]).shape == (4, 1280)
    assert enc.last_num_workers == 2
    # a hang guard, not a speed goal: a stalled loader waits forever; under a loaded CI box this takes ~1-6 s
    assert time.monotonic() - t0 < 60
    with pytest.raises(ImageDecodeError, match="missing.png"):
        EfficientNetImageEncoder(CPU).encode_paths([tmp_path / "missing.png"])


def test_effnet_key_mapping_and_imagenet_predictions() -> None:
    from sklearn.datasets import load_sample_image

    src = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model = load_efficientnet_lite0(with_classifier=True)  # strict load: no missing/unexpected keys
    mapped = map_lite0_state_dict(src, model.state_dict())
    assert len(mapped) == len(model.state_dict()) == len(src)
    assert torch.equal(model.state_dict()["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(model.state_dict()["classifier.weight"], src["_fc.weight"])
    headless = load_efficientnet_lite0(with_classifier=False)
    assert not any(k.startswith("classifier.") for k in headless.state_dict())

    shuffled = dict(reversed(list(src.items())))
    with pytest.raises(ValueError, match="mismatch"):
        map_lite0_state_dict(shuffled, model.state_dict())

    tf = efficientnet_lite0_transform()
    batch = torch.stack([tf(Image.fromarray(load_sample_image(n))) for n in ("china.jpg", "flower.jpg")])
    with torch.inference_mode():
        probs = model(batch).softmax(-1)
    top5 = probs.topk(5).indices.tolist()
    assert 698 in top5[0]  # palace
    assert top5[1][0] == 985  # daisy
    assert probs.max(-1).values.min() > 0.2  # confident, far from uniform (0.001)


# ---------------------------------------------------------------------------------------------- CLIP (tiny)


def test_tiny_clip_through_load_encoders(tiny_clip: TinyClip, shapes: list[Path]) -> None:
    es = load_encoders(tiny_clip.settings(), DeviceConfig(device="cpu", batch_size=4, num_workers=2))
    assert es.profile == "clip"
    assert es.shares_space("text", "image") and es.shares_space("image", "image")
    text, image = es.text(), es.image()
    assert es.text() is text and es.image() is image  # cached
    assert text.info.dim == image.info.dim == 64
    assert text.info.space == image.info.space
    assert (text.info.modality, image.info.modality) == ("text", "image")
    assert text.info.model_id == image.info.model_id == "open_clip/mm-tiny-clip:mm-tiny-clip.safetensors"
    assert text.info.model_version == image.info.model_version and len(text.info.model_version) == 12

    t = text.encode(["a red circle", "a blue square", "", "long " * 500, "日本語 🚀"])
    assert t.shape == (5, 64) and t.dtype == np.float32
    np.testing.assert_allclose(_norms(t), 1.0, atol=1e-5)
    assert text.encode([]).shape == (0, 64)

    v = image.encode_paths(shapes)
    assert v.shape == (12, 64)
    np.testing.assert_allclose(_norms(v), 1.0, atol=1e-5)
    np.testing.assert_allclose(v[:6], v[6:], atol=1e-5)  # same images -> same vectors
    np.testing.assert_allclose(image.encode_images([Image.open(p) for p in shapes[:3]]), v[:3], atol=1e-5)


def test_tiny_clip_is_deterministic(tiny_clip: TinyClip, tmp_path: Path) -> None:
    again = build_tiny_clip(tmp_path / "again")
    assert again.checkpoint_path.read_bytes() == tiny_clip.checkpoint_path.read_bytes()
    a = load_encoders(tiny_clip.settings(), CPU).text()
    b = load_encoders(again.settings(), CPU).text()
    assert a.info.model_version == b.info.model_version
    np.testing.assert_allclose(a.encode(["same text"]), b.encode(["same text"]), atol=1e-6)


def test_offline_profile_spaces() -> None:
    es = load_encoders(EncoderSettings(profile="offline"), CPU)
    assert (es.profile, es.reason) == ("offline", "profile 'offline' requested")
    assert es.shares_space("text", "text") and es.shares_space("image", "image")
    assert not es.shares_space("text", "image") and not es.shares_space("text", "audio")
    assert es.shares_space("audio", "audio")
    with pytest.raises(ValueError, match="unknown modality"):
        es.shares_space("text", "video")


def _assert_names_env_vars(msg: str) -> None:
    for var in ENV_VARS:
        assert var in msg, f"{var} not in {msg!r}"


def test_clip_absent_tag_fails_fast() -> None:
    t0 = time.monotonic()
    with pytest.raises(EncoderUnavailable) as err:
        load_encoders(EncoderSettings(profile="clip"), CPU).text()
    assert time.monotonic() - t0 < 10
    _assert_names_env_vars(str(err.value))
    assert "laion2b_s34b_b79k" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"clip_pretrained": "/nonexistent/weights.safetensors"}, "does not exist"),
        ({"clip_pretrained": "no_such_tag"}, "neither a known open_clip pretrained tag"),
        ({"clip_arch": "No-Such-Arch"}, "unknown open_clip architecture"),
        ({"clip_config": "/nonexistent/cfg.json"}, "does not exist"),
    ],
)
def test_clip_bad_settings_fail_fast(kwargs: dict[str, str], match: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(EncoderUnavailable, match=match) as err:
        load_encoders(EncoderSettings(profile="clip", **kwargs), CPU)
    assert time.monotonic() - t0 < 10
    _assert_names_env_vars(str(err.value))


def test_clip_config_name_must_match_arch(tiny_clip: TinyClip) -> None:
    with pytest.raises(EncoderUnavailable, match="MM_CLIP_ARCH=mm-tiny-clip"):
        load_encoders(tiny_clip.settings(clip_arch="other-arch"), CPU)


def test_auto_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"offline resolution tried the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # fail fast offline: never a hub request
    t0 = time.monotonic()
    profile, reason = resolve_profile(EncoderSettings(profile="auto"))
    assert profile == "offline" and "HF_HUB_OFFLINE" in reason
    es = load_encoders(EncoderSettings(profile="auto"), CPU)
    assert es.profile == "offline"
    assert time.monotonic() - t0 < 60  # a hang guard, not a speed goal (a hub timeout would be minutes)
    assert resolve_profile(EncoderSettings(profile="clip"))[0] == "clip"
    assert resolve_profile(EncoderSettings(profile="offline"))[0] == "offline"
    with pytest.raises(ValueError, match="invalid encoder profile"):
        EncoderSettings(profile="fast")


def test_auto_without_any_clip_weights_decides_without_importing_open_clip(tmp_path: Path) -> None:
    """Air-gapped, nothing cached: `auto` is offline at once, without open_clip (4 s of torch + torchvision).
    With any model in the Hugging Face cache the decision is open_clip's again (same answer here)."""
    import subprocess
    import sys

    code = ("import sys; from mm_platform.lib.encoders.registry import EncoderSettings, resolve_profile; "
            "p, why = resolve_profile(EncoderSettings(profile='auto')); "
            "print(p, 'open_clip' in sys.modules, 'torch' in sys.modules, 'HF_HUB_OFFLINE' in why)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    env.pop("XDG_CACHE_HOME", None)

    def run() -> str:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                              timeout=300).stdout.strip()

    assert run() == "offline False False True"
    (tmp_path / "hf" / "hub" / "models--someone--some-model").mkdir(parents=True)
    assert run() == "offline True True True"


def test_auto_picks_clip_for_local_checkpoint(tiny_clip: TinyClip) -> None:
    profile, reason = resolve_profile(tiny_clip.settings(profile="auto"))
    assert profile == "clip" and "locally" in reason


def test_auto_with_unreachable_hub_is_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HF_HUB_OFFLINE the probe runs, against a closed local port it fails at once."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block exits
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    profile, reason = resolve_profile(EncoderSettings(profile="auto", probe_timeout_s=1.0))
    assert profile == "offline" and "unreachable" in reason
    with pytest.raises(EncoderUnavailable, match="not reachable"):
        load_encoders(EncoderSettings(profile="clip", probe_timeout_s=1.0), CPU)
    assert time.monotonic() - t0 < 5


def test_probe_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        host = ("127.0.0.1", server.getsockname()[1])
        assert probe_host(host, 1.0)[0] is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert probe_host(("127.0.0.1", 9), 1.0) == (False, "HF_HUB_OFFLINE is set")


def test_cached_tag_loads_offline(
    tiny_clip: TinyClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pretrained *tag* whose file sits in the HF cache resolves and loads with no network at all."""
    import huggingface_hub.constants as hf_constants
    import open_clip.pretrained as oc_pretrained

    repo, commit = "mm-test/tiny-clip", "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    repo_dir = cache / "models--mm-test--tiny-clip"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    os.symlink(tiny_clip.checkpoint_path, snap / "open_clip_model.safetensors")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setitem(
        oc_pretrained._PRETRAINED, tiny_clip.arch, {"tinytag": {"hf_hub": f"{repo}/", "url": ""}}
    )

    where = locate_clip_weights(tiny_clip.arch, "tinytag")
    assert where.status == "cached"
    settings = tiny_clip.settings(profile="auto", clip_pretrained="tinytag")
    profile, reason = resolve_profile(settings)
    assert profile == "clip" and "cached" in reason
    # The loader must force offline mode by itself: start from "online" and record any connect attempt.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    connects = refuse_network(monkeypatch)
    es = load_encoders(settings, CPU)
    text = es.text()
    assert connects == []
    assert "HF_HUB_OFFLINE" not in os.environ and hf_constants.HF_HUB_OFFLINE is False  # restored
    assert text.info.model_id == "open_clip/mm-tiny-clip:tinytag"
    direct = load_encoders(tiny_clip.settings(), CPU).text()
    # same weights, same version and space (the model_id keeps the name they were loaded by)
    assert text.info.model_version == direct.info.model_version
    assert text.info.space == direct.info.space == f"open_clip/mm-tiny-clip@{text.info.model_version}"
    np.testing.assert_allclose(text.encode(["x"]), direct.encode(["x"]), atol=1e-6)


def test_model_info_is_known_without_loading_and_equals_the_loaded_encoders(tiny_clip: TinyClip,
                                                                           tmp_path: Path) -> None:
    """The embedding cache is keyed by the encoder's identity; reading it from the files (no model load)
    must give exactly what the loaded encoder reports, or cached vectors would be missed or mislabelled."""
    from mm_platform.lib.encoders.audio import clap_model_info

    for settings in (EncoderSettings(profile="offline"), tiny_clip.settings()):
        es = load_encoders(settings, DeviceConfig(device="cpu"))
        peeked = {m: es.model_info(m) for m in ("text", "image", "audio")}
        assert not any(es.loaded(m) for m in peeked), settings.profile  # nothing was loaded to learn them
        fresh = load_encoders(settings, DeviceConfig(device="cpu"))
        for m, info in peeked.items():
            assert fresh.encoder(m).info == info, (settings.profile, m)
            assert fresh.model_info(m) == info
    from mm_platform.lib.encoders.audio import ClapAudioEncoder
    from mm_platform_tests.tiny_models import build_tiny_clap

    clap_dir = tmp_path / "clap"
    build_tiny_clap(clap_dir)
    assert clap_model_info(str(clap_dir)) == ClapAudioEncoder(DeviceConfig(device="cpu"), str(clap_dir)).info
    assert clap_model_info(str(Path("/nonexistent/clap"))) is None


def test_numpy_minilm_equals_the_torch_encoder_without_importing_torch(minilm: MiniLMTextEncoder) -> None:
    """The cold CLI search embeds text queries with numpy: same vectors (cosine >= 0.9999), same identity
    (so queries match the collection's text vectors), and torch is never imported for it."""
    import json
    import subprocess
    import sys

    from mm_platform.lib.encoders.minilm_numpy import NumpyMiniLM

    texts = ["waterproof gear for muddy hiking trails", "", "Ünïcödé 日本語 🚀 naïve café", "long " * 600,
             "A ceramic MUG, for my morning coffee!", "x"]
    fast = NumpyMiniLM()
    assert fast.info == minilm.info
    a, b = fast.encode(texts), minilm.encode(texts)
    assert a.shape == b.shape == (len(texts), 384) and a.dtype == np.float32
    assert np.min(np.sum(a * b, axis=1)) >= 0.9999
    assert fast.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        fast.encode("not a list")
    code = ("import sys, json; from mm_platform.lib.encoders.minilm_numpy import NumpyMiniLM; "
            "v = NumpyMiniLM().encode(['tea']); print(json.dumps([v.shape[1], 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [384, False]


def test_encode_per_file_reports_a_bad_file_and_encodes_the_rest(
    effnet: EfficientNetImageEncoder, shapes: list[Path], tmp_path: Path
) -> None:
    """A file that fails at the embedding step (changed after validation, or gone) is reported with its
    reason, and every other file still gets exactly the vector it gets on its own."""
    from mm_platform.lib.encoders.per_file import encode_per_file

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken after validation")
    items = [str(shapes[0]), str(broken), str(shapes[1]), str(tmp_path / "gone.png"), str(shapes[2])]
    vectors, failures = encode_per_file(effnet.encode_paths, items, effnet.info.dim)
    assert sorted(failures) == [1, 3]
    assert failures[1][0] == "corrupt_image" and "broken.png" in failures[1][1]
    assert failures[3][0] == "missing_file"
    np.testing.assert_allclose(vectors[[0, 2, 4]], effnet.encode_paths([str(p) for p in shapes[:3]]), atol=1e-5)
    assert not vectors[[1, 3]].any()
    vectors, failures = encode_per_file(effnet.encode_paths, [str(broken)], effnet.info.dim)
    assert vectors.shape == (1, effnet.info.dim) and list(failures) == [0]
