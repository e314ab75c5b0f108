"""Tiny, deterministic model fixtures for tests (no downloads).

``build_tiny_clip(dir)`` writes a random-init open_clip model (~1.7 M parameters, embed_dim 64, 32 px
images, 32-token context) as a model-config JSON plus a safetensors checkpoint::

    tiny = build_tiny_clip(tmp_path)
    settings = EncoderSettings(
        profile="clip",
        clip_arch=tiny.arch,
        clip_pretrained=str(tiny.checkpoint_path),
        clip_config=str(tiny.config_path),
    )
    encoders = load_encoders(settings, DeviceConfig(device="cpu", num_workers=0))

``shape_image`` / ``write_shape_images`` draw simple coloured shapes with PIL for image tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mm_platform.lib.encoders.registry import EncoderSettings

TINY_CLIP_ARCH = "mm-tiny-clip"
TINY_CLIP_CONFIG: dict[str, object] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    # vocab_size must stay 49408: open_clip's default (SimpleTokenizer) BPE vocabulary.
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_CLIP_SEED = 1234


@dataclass(frozen=True)
class TinyClip:
    """Files of a tiny open_clip model: ``arch`` is registered from ``config_path`` (``<arch>.json``)."""

    arch: str
    config_path: Path
    checkpoint_path: Path

    def settings(self, profile: str = "clip", **overrides: object) -> EncoderSettings:
        """EncoderSettings that load this model through ``load_encoders``."""
        kwargs: dict[str, object] = {
            "profile": profile,
            "clip_arch": self.arch,
            "clip_pretrained": str(self.checkpoint_path),
            "clip_config": str(self.config_path),
        }
        kwargs.update(overrides)
        return EncoderSettings(**kwargs)  # type: ignore[arg-type]


def build_tiny_clip(dir: Path) -> TinyClip:
    """Write a tiny random-init open_clip model into ``dir`` (created if needed); deterministic (fixed seed).

    Files: ``<dir>/mm-tiny-clip.json`` (model config) and ``<dir>/mm-tiny-clip.safetensors`` (weights).
    Re-running on the same directory rewrites byte-identical files.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    config_path = dir / f"{TINY_CLIP_ARCH}.json"
    checkpoint_path = dir / f"{TINY_CLIP_ARCH}.safetensors"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if open_clip.get_model_config(TINY_CLIP_ARCH) != TINY_CLIP_CONFIG:
        open_clip.add_model_config(config_path)

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_CLIP_SEED)
        model = open_clip.create_model(TINY_CLIP_ARCH, pretrained=None, device="cpu")
    finally:
        torch.random.set_rng_state(state)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(checkpoint_path))
    return TinyClip(arch=TINY_CLIP_ARCH, config_path=config_path, checkpoint_path=checkpoint_path)


def shape_image(shape: str, color: str | tuple[int, int, int], size: int = 96, shift: int = 0) -> object:
    """A PIL RGB image: a filled ``"circle"``, ``"square"`` or ``"triangle"`` of ``color`` on white.

    ``shift`` moves the shape by that many pixels (for near-duplicate variants).
    """
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    lo, hi = size // 5 + shift, size - size // 5 + shift
    if shape == "circle":
        draw.ellipse((lo, lo, hi, hi), fill=color)
    elif shape == "square":
        draw.rectangle((lo, lo, hi, hi), fill=color)
    elif shape == "triangle":
        draw.polygon([((lo + hi) // 2, lo), (hi, hi), (lo, hi)], fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


def write_shape_images(dir: Path, specs: list[tuple[str, str, int]], fmt: str = "PNG") -> list[Path]:
    """Write one image per ``(shape, color, shift)`` spec into ``dir``; returns the paths in order."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    paths = []
    ext = "jpg" if fmt.upper() == "JPEG" else fmt.lower()
    for i, (shape, color, shift) in enumerate(specs):
        p = dir / f"{i:03d}_{shape}_{color}_{shift}.{ext}"
        shape_image(shape, color, shift=shift).save(p, format=fmt)  # type: ignore[attr-defined]
        paths.append(p)
    return paths


# --------------------------------------------------------------------------------------------------------
# tiny CLAP (transformers)

TINY_CLAP_SEED = 4321
TINY_CLAP_SAMPLE_RATE = 16_000
TINY_CLAP_DIM = 16
# Audio tower: 16 mel bins, 1 s windows (101 frames) folded into a 64x64 "image" (spec_size 64, freq_ratio 4),
# two Swin stages of one block each (hidden 16 -> 32), 16-d projection. ~35 k parameters in all.
TINY_CLAP_AUDIO_CONFIG: dict[str, object] = {
    "num_mel_bins": 16,
    "spec_size": 64,
    "patch_size": 4,
    "patch_stride": [4, 4],
    "window_size": 4,
    "depths": [1, 1],
    "num_attention_heads": [2, 2],
    "patch_embeds_hidden_size": 16,
    "hidden_size": 32,
    "projection_dim": TINY_CLAP_DIM,
    "num_classes": 10,
    "enable_fusion": False,
}
TINY_CLAP_TEXT_CONFIG: dict[str, object] = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "max_position_embeddings": 64,
    "projection_dim": TINY_CLAP_DIM,
}
TINY_CLAP_FEATURES: dict[str, object] = {
    "feature_size": 16,
    "sampling_rate": TINY_CLAP_SAMPLE_RATE,
    "hop_length": 160,
    "max_length_s": 1,
    "fft_window_size": 400,
    "frequency_min": 50,
    "frequency_max": 8000,
    "truncation": "rand_trunc",
    "padding": "repeatpad",
}


def build_tiny_clap(out_dir: Path) -> Path:
    """Write a tiny random-init transformers CLAP model into ``out_dir`` (created if needed); returns it.

    Files: ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` (a 16 kHz
    ``ClapFeatureExtractor`` with 1 s windows), loadable with ``ClapModel.from_pretrained`` /
    ``ClapAudioEncoder(model=str(dir))``; embeddings are 16-d. Deterministic (fixed seed). No tokenizer:
    only the audio tower is used.
    """
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = ClapConfig(
        text_config=dict(TINY_CLAP_TEXT_CONFIG),
        audio_config=dict(TINY_CLAP_AUDIO_CONFIG),
        projection_dim=TINY_CLAP_DIM,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_CLAP_SEED)
        model = ClapModel(config).eval()
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(out)
    ClapFeatureExtractor(**TINY_CLAP_FEATURES).save_pretrained(out)  # type: ignore[arg-type]
    return out
