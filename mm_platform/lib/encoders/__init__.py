"""Text and image encoders (MiniLM, EfficientNet-Lite0, open_clip) behind one small interface.

Typical use::

    from mm_platform.lib.device import DeviceConfig
    from mm_platform.lib.encoders import EncoderSettings, load_encoders

    encoders = load_encoders(EncoderSettings(profile="auto"), DeviceConfig(device="auto"))
    text_vectors = encoders.text().encode(["a red bicycle"])         # (1, dim) float32, unit rows
    image_vectors = encoders.image().encode_paths(["photo.jpg"])     # (1, dim) float32, unit rows
    encoders.shares_space("text", "image")                           # True only for the clip profile
"""

from mm_platform.lib.encoders.base import (
    EncoderUnavailable,
    ImageDecodeError,
    ImageEncoder,
    ModelInfo,
    ProgressFn,
    TextEncoder,
)
from mm_platform.lib.encoders.registry import (
    EncoderSet,
    EncoderSettings,
    load_encoders,
    probe_host,
    resolve_profile,
)

__all__ = [
    "EncoderSet",
    "EncoderSettings",
    "EncoderUnavailable",
    "ImageDecodeError",
    "ImageEncoder",
    "ModelInfo",
    "ProgressFn",
    "TextEncoder",
    "load_encoders",
    "probe_host",
    "resolve_profile",
]
