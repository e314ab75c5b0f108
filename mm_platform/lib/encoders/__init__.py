"""Text, image and audio encoders (MiniLM, EfficientNet-Lite0, open_clip, log-mel, CLAP) behind one interface.

Typical use::

    from mm_platform.lib.device import DeviceConfig
    from mm_platform.lib.encoders import EncoderSettings, load_encoders

    encoders = load_encoders(EncoderSettings(profile="auto"), DeviceConfig(device="auto"))
    text_vectors = encoders.text().encode(["a red bicycle"])         # (1, dim) float32, unit rows
    image_vectors = encoders.image().encode_paths(["photo.jpg"])     # (1, dim) float32, unit rows
    audio_vectors = encoders.audio().encode_paths(["clip.wav"])      # (1, dim) float32, unit rows
    encoders.audio_reason                                            # which audio encoder, and why
    encoders.shares_space("text", "image")                           # True only for the clip profile

The names below are imported on first use (PEP 562), so importing a torch-free submodule such as
``mm_platform.lib.encoders.base`` or ``.minilm_numpy`` does not import torch (the cold CLI search relies on it).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DEFAULT_CLAP_MODEL": "audio", "LOGMEL_DIM": "audio", "ClapAudioEncoder": "audio",
    "LogMelAudioEncoder": "audio", "locate_clap_weights": "audio",
    "MODALITIES": "base", "AudioDecodeError": "base", "AudioEncoder": "base", "EncoderUnavailable": "base",
    "ImageDecodeError": "base", "ImageEncoder": "base", "ModelInfo": "base", "ProgressFn": "base",
    "TextEncoder": "base",
    "EncoderSet": "registry", "EncoderSettings": "registry", "load_encoders": "registry", "probe_host": "registry",
    "resolve_audio": "registry", "resolve_profile": "registry",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    if name in ("audio", "base", "clip", "image", "registry", "text"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
