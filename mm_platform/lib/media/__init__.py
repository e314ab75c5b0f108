"""The media stage: safe path resolution (:mod:`.paths`), image inspection/decoding (:mod:`.image`), audio
headers (:mod:`.audio_header`) and decoding (:mod:`.audio`), text normalisation (:mod:`.text`), errors (:mod:`.errors`).

This package re-exports the public names, so ``from mm_platform.lib.media import inspect_image`` works.

Everything here turns bad input into a :class:`MediaError` carrying a stable snake_case ``reason``
code and a specific human-readable ``detail``; nothing here lets an exception from PIL, the OS or
the codec layer escape untranslated.

Image safety (header sniffing before PIL, an allow-list of formats, full decode) is described in :mod:`.image`.
"""

from __future__ import annotations

from mm_platform.lib.media.audio_header import AudioInfo, inspect_audio
from mm_platform.lib.media.errors import DEFAULT_MAX_AUDIO_BYTES, MediaError, check_file
from mm_platform.lib.media.image import (
    ALLOWED_IMAGE_FORMATS,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageInfo,
    inspect_image,
    load_image_rgb,
    sniff_image_header,
)
from mm_platform.lib.media.paths import bytes_sha256, check_relative_path, resolve_media_path, text_sha256
from mm_platform.lib.media.text import DEFAULT_MAX_TEXT_CHARS, normalize_text

__all__ = [
    "ALLOWED_IMAGE_FORMATS",
    "DEFAULT_MAX_AUDIO_BYTES",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_TEXT_CHARS",
    "AudioInfo",
    "ImageInfo",
    "MediaError",
    "bytes_sha256",
    "check_relative_path",
    "inspect_audio",
    "inspect_image",
    "load_image_rgb",
    "normalize_text",
    "resolve_media_path",
    "sniff_image_header",
    "text_sha256",
    "check_file",
]

