"""The file checks of a parsed manifest: every referenced image and audio file opened and validated through
:mod:`mm_platform.lib.media`; a record keeps its valid modalities."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mm_platform.lib import media
from mm_platform.lib.landing.manifest.parse import (
    ManifestRecord,
    Rejection,
    parse_manifest,
)
from mm_platform.lib.media import AudioInfo, ImageInfo, MediaError

# --------------------------------------------------------------------------------------------------
# media checks on parsed records
# --------------------------------------------------------------------------------------------------


@dataclass
class MediaCheck:
    """Result of :func:`check_record_media` for one record."""

    record: ManifestRecord | None  # broken modalities set to None; None if nothing remains
    image: ImageInfo | None
    audio: AudioInfo | None
    rejections: list[Rejection]


def check_record_media(
    batch_dir: Path,
    record: ManifestRecord,
    *,
    max_image_pixels: int = media.DEFAULT_MAX_IMAGE_PIXELS,
    max_image_bytes: int = media.DEFAULT_MAX_IMAGE_BYTES,
    max_audio_bytes: int = media.DEFAULT_MAX_AUDIO_BYTES,
) -> MediaCheck:
    """Check the image/audio files of a parsed record (path resolution + full image decode).

    A broken image/audio yields a Rejection with modality ``"image"``/``"audio"`` and the media
    reason (``missing_file``, ``path_outside_batch`` via symlinks, ``truncated_image``, ...); the
    record is kept with that modality cleared, or becomes ``None`` if no modality remains (the
    rejections then account for the line). Delete records pass through unchanged.
    """
    if record.op == "delete":
        return MediaCheck(record, None, None, [])
    rejs: list[Rejection] = []
    img: ImageInfo | None = None
    aud: AudioInfo | None = None
    image_rel, audio_rel = record.image, record.audio
    if record.image is not None:
        try:
            p = media.resolve_media_path(batch_dir, record.image)
            img = media.inspect_image(p, max_pixels=max_image_pixels, max_bytes=max_image_bytes)
        except MediaError as exc:
            rejs.append(
                Rejection(record.batch_id, record.line_number, record.record_id, "image", exc.reason,
                          f"image {record.image!r}: {exc.detail}")
            )
            image_rel = None
    if record.audio is not None:
        try:
            p = media.resolve_media_path(batch_dir, record.audio)
            aud = media.inspect_audio(p, max_bytes=max_audio_bytes)
        except MediaError as exc:
            rejs.append(
                Rejection(record.batch_id, record.line_number, record.record_id, "audio", exc.reason,
                          f"audio {record.audio!r}: {exc.detail}")
            )
            audio_rel = None
    new = replace(record, image=image_rel, audio=audio_rel)
    if not new.modalities:
        return MediaCheck(None, None, None, rejs)
    return MediaCheck(new, img, aud, rejs)


@dataclass
class ValidatedBatch:
    """Result of :func:`validate_batch`: manifest parse + media checks."""

    batch_id: str
    manifest_sha256: str
    n_lines: int
    records: list[ManifestRecord]
    images: dict[str, ImageInfo]  # record_id -> info, for records with a valid image
    audio: dict[str, AudioInfo]
    rejections: list[Rejection]


def validate_batch(batch_dir: Path, batch_id: str | None = None, **limits: int) -> ValidatedBatch:
    """:func:`parse_manifest` followed by :func:`check_record_media` on every record.

    ``limits`` are passed through to :func:`check_record_media`. Rejections are ordered by line.
    """
    parsed = parse_manifest(batch_dir, batch_id)
    records: list[ManifestRecord] = []
    images: dict[str, ImageInfo] = {}
    audio: dict[str, AudioInfo] = {}
    rejections = list(parsed.rejections)
    for rec in parsed.records:
        chk = check_record_media(batch_dir, rec, **limits)
        rejections.extend(chk.rejections)
        if chk.record is not None:
            records.append(chk.record)
            if chk.image is not None:
                images[rec.record_id] = chk.image
            if chk.audio is not None:
                audio[rec.record_id] = chk.audio
    rejections.sort(key=lambda r: r.line_number)
    return ValidatedBatch(parsed.batch_id, parsed.manifest_sha256, parsed.n_lines, records, images, audio, rejections)
