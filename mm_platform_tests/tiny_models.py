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
