"""Deliberately broken demo manifest lines, each with the rejection reason the platform must report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mm_platform.demo.categories import AUDIO_SAMPLE_RATE, CATEGORIES, Category
from mm_platform.demo.fields import make_fields
from mm_platform.demo.files import write_bytes
from mm_platform.demo.image import _png_bytes, make_picture
from mm_platform.demo.sound import audio_bytes
from mm_platform.demo.telemetry import entity_name, pick_entity
from mm_platform.demo.text import make_caption

#: Expected rejection reason for each kind of deliberately broken line, in cycle order. The first
#: seven are the original kinds (a default ``n_broken=7`` batch has exactly those); the audio and
#: field kinds follow.
BROKEN_KINDS: tuple[str, ...] = (
    "malformed_json",
    "missing_file",
    "truncated_image",
    "unreadable_image",
    "empty_text",
    "duplicate_record_id",
    "path_outside_batch",
    "unreadable_audio",  # garbage bytes in a .wav (audio + label only: no record)
    "silent_audio",  # an all-zero WAV (audio + label only: no record)
    "invalid_field_value",  # "n/a" as price next to a valid caption: the record is kept (DemoBatch.partial)
)
#: Broken kinds whose line still yields a record (only a part of it is rejected).
PARTIAL_KINDS: frozenset[str] = frozenset({"invalid_field_value"})


class BrokenLine(NamedTuple):
    line: str  # the manifest line
    kind: str  # the rejection reason (the requested kind, or its fallback)
    entity: int | None  # entity of the record the line still yields (PARTIAL_KINDS), else None


def broken_line(
    kind: str, rid: str, ts: str, cat: Category, out_dir: Path, emitted_ids: list[str], *,
    rng: np.random.Generator, rng_extra: np.random.Generator, rng_entity: np.random.Generator, n_entities: int,
) -> BrokenLine:
    """A manifest line of ``kind`` for record ``rid`` (writing any file it points at under ``out_dir``)."""
    if kind == "duplicate_record_id" and not emitted_ids:
        kind = "empty_text"  # nothing to duplicate yet: fall back deterministically
    if kind == "malformed_json":
        return BrokenLine(json.dumps({"record_id": rid, "timestamp": ts, "text": "Lovely product, but the"})[:-12],
                          kind, None)
    bad: dict[str, object] = {"record_id": rid, "timestamp": ts}
    entity = None
    if kind == "missing_file":
        bad["image"] = f"images/{rid}-missing.png"
    elif kind == "truncated_image":
        data = _png_bytes(make_picture(cat, rng))
        write_bytes(out_dir / f"images/{rid}.png", data[: len(data) // 2])
        bad["image"] = f"images/{rid}.png"
    elif kind == "unreadable_image":
        write_bytes(out_dir / f"images/{rid}.png", b"this is a text file, not a PNG image\n")
        bad["image"] = f"images/{rid}.png"
    elif kind == "empty_text":
        bad["text"] = "   \n\t "
    elif kind == "duplicate_record_id":
        bad["record_id"] = emitted_ids[int(rng.integers(len(emitted_ids)))]
        bad["text"] = make_caption(cat, rng)
    elif kind == "path_outside_batch":
        bad["image"] = "../x.png"
    elif kind == "unreadable_audio":
        write_bytes(out_dir / f"audio/{rid}.wav", b"this is not a WAV file, just some bytes\n"
                    + rng_extra.bytes(int(rng_extra.integers(64, 512))))
        bad["audio"] = f"audio/{rid}.wav"
        bad["label"] = cat.label
    elif kind == "silent_audio":
        write_bytes(out_dir / f"audio/{rid}.wav", audio_bytes(np.zeros(AUDIO_SAMPLE_RATE, np.float32)))
        bad["audio"] = f"audio/{rid}.wav"
        bad["label"] = cat.label
    elif kind == "invalid_field_value":
        entity = pick_entity(rng_entity, CATEGORIES.index(cat), n_entities)
        bad["entity_id"] = entity_name(entity)
        bad["text"] = make_caption(cat, rng_extra)
        bad["fields"] = {**make_fields(cat, rng_extra), "price": "n/a"}
        bad["label"] = cat.label
    return BrokenLine(json.dumps(bad, ensure_ascii=False), kind, entity)
