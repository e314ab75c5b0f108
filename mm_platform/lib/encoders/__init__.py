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
"""

from mm_platform.lib.encoders.audio import (
    DEFAULT_CLAP_MODEL,
    LOGMEL_DIM,
    ClapAudioEncoder,
    LogMelAudioEncoder,
    locate_clap_weights,
)
from mm_platform.lib.encoders.base import (
    MODALITIES,
    AudioDecodeError,
    AudioEncoder,
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
    resolve_audio,
    resolve_profile,
)

__all__ = [
    "DEFAULT_CLAP_MODEL",
    "LOGMEL_DIM",
    "MODALITIES",
    "AudioDecodeError",
    "AudioEncoder",
    "ClapAudioEncoder",
    "EncoderSet",
    "EncoderSettings",
    "EncoderUnavailable",
    "ImageDecodeError",
    "ImageEncoder",
    "LogMelAudioEncoder",
    "ModelInfo",
    "ProgressFn",
    "TextEncoder",
    "load_encoders",
    "locate_clap_weights",
    "probe_host",
    "resolve_audio",
    "resolve_profile",
]
