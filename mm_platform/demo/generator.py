"""Synthetic multimodal demo corpus: a product catalogue with customer feedback.

Six product categories. Each record carries a caption (text), a picture (image), a short sound clip
(audio), product fields (tabular) and the id of the device/store that produced the feedback
(``entity_id``), whose telemetry readings come as a stream next to the manifest. Every modality shows
the category, but each one alone confuses *different* pairs of categories:

==========  ==================  =============  ================  ================  ============
category    caption topic       picture style  sound             fields            telemetry
==========  ==================  =============  ================  ================  ============
mug         kitchen / drinks    warm discs     hum, low pitch    budget            cool
teapot      kitchen / drinks    cool stripes   bell, low pitch   mid               warm
trail_shoe  outdoor / sport     cool stripes   buzz, low pitch   premium           cool, hotter
backpack    outdoor / sport     green checker  hum, high pitch   mid, pricier      busy
headphones  electronics / desk  green checker  buzz, high pitch  budget, pricier   warm, hotter
desk_lamp   electronics / desk  warm discs     bell, high pitch  premium, pricier  busy, hotter
==========  ==================  =============  ================  ================  ============

So the pairs each modality alone confuses (:data:`CONFUSED_PAIRS`) are:

==========  ===================================================================
modality    confused pairs
==========  ===================================================================
text        (mug, teapot)        (trail_shoe, backpack)  (headphones, desk_lamp)
image       (mug, desk_lamp)     (teapot, trail_shoe)    (backpack, headphones)
audio       (mug, backpack)      (teapot, desk_lamp)     (trail_shoe, headphones)
fields      (mug, headphones)    (teapot, backpack)      (trail_shoe, desk_lamp)
telemetry   (mug, trail_shoe)    (teapot, headphones)    (backpack, desk_lamp)
==========  ===================================================================

The five pairings are disjoint (together they are all 15 pairs of the six categories, each exactly
once), so no pair is confused by more than one modality (the requirement is at most two), and any
two modalities together can in principle tell all six apart.

* **Text**: captions built from templates + topic vocabulary + shared filler (shipping, price,
  stars...); the product noun itself appears only sometimes.
* **Image**: pictures drawn with PIL (96-128 px) with jitter in position, size, rotation, colour and
  background noise; within a style the two categories differ only by a subtle cue.
* **Audio** (``audio/<record_id>.wav``, ~1 s, 16 kHz mono, 16-bit): a timbre family per pair -- *hum*
  (sawtooth-like harmonic tone, slow attack, tremolo), *bell* (inharmonic decaying partials, 1-2
  strikes), *buzz* (square-like odd harmonics gated at 3-6 Hz plus a noise band) -- with the pitch
  range of the second category shifted up 3 semitones (overlapping ranges, and 10% of clips use the
  other range), random timbre/envelope jitter and coloured background noise at 6-30 dB SNR. About 5%
  of clips are FLAC, OGG (Vorbis) or MP3 (matching extension) instead of WAV.
* **Fields** (``"fields": {...}``): ``price`` (lognormal around a tier level), ``weight_g`` (int),
  ``rating`` (1-5), ``material`` (tier-specific distribution), ``colour`` (uninformative noise) and
  ``warranty_months`` (12/24, sometimes null); within a tier the variant is slightly pricier/lighter
  with a tilted material mix. About 5% of the values are null.
* **Telemetry** (``streams/telemetry.csv``: ``timestamp`` (ISO-8601, ``Z``), ``entity_id``,
  ``temperature_c``, ``vibration``, ``power_w``): about ``n_records / 8`` entities ``dev-000``,
  ``dev-001``... Entity ``dev-k`` belongs to category ``k % 6`` in every batch; a record's entity is
  one of its category's (or, with probability :data:`P_SWAP`, another's). Each entity reports every
  1.5-4 minutes around its records' timestamps, at levels set by its category's telemetry profile
  plus per-entity bias, drift and noise. Rows are shuffled (not time-sorted), a few rows come from
  entities no record names, and about 5% of the records (:data:`P_STREAM_GAP`) have no reading of
  their entity within 15 minutes, so an as-of join on ``entity_id`` with the intended tolerance
  :data:`DEMO_STREAM_TOLERANCE` leaves them unmatched.

Modality noise: with probability :data:`P_SWAP` each modality of a record (caption or picture;
independently its sound, its fields, its entity) comes from a random other category; some records are
text-only or image-only, have no audio (:data:`P_NO_AUDIO`) or no fields (:data:`P_NO_FIELDS`). Every
good record has text or an image.

:func:`make_demo_batch` also mixes in deliberately broken lines (malformed JSON, missing/truncated/
non-image files, empty text, duplicate id, path escaping the batch, garbage or all-zero audio, a
non-numeric price), each with the rejection reason the platform must report
(:data:`BROKEN_KINDS`). Output is byte-for-byte deterministic for a given seed; text and pictures come
from the seed's main random stream, the other modalities from separate streams
(``np.random.default_rng([seed, k])``), so adding them left captions and pictures unchanged.

Layout: one builder module per modality -- :mod:`~mm_platform.demo.text` (captions),
:mod:`~mm_platform.demo.image` (pictures), :mod:`~mm_platform.demo.sound` (clips and their encoding),
:mod:`~mm_platform.demo.fields`, :mod:`~mm_platform.demo.telemetry` (entities and the stream) and
:mod:`~mm_platform.demo.broken` (broken lines) -- over :mod:`~mm_platform.demo.categories`; this module
assembles them (:func:`make_demo_batch`) and re-exports their public names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from mm_platform.demo.broken import BROKEN_KINDS, PARTIAL_KINDS, broken_line
from mm_platform.demo.categories import (
    AUDIO_SAMPLE_RATE,
    AUDIO_SECONDS,
    CATEGORIES,
    CONFUSED_PAIRS,
    DEMO_STREAM_TOLERANCE,
    MODALITY_PROFILE,
    P_ALT_AUDIO_FORMAT,
    P_FIELD_NULL,
    P_IMAGE_ONLY,
    P_NO_AUDIO,
    P_NO_FIELDS,
    P_NOUN,
    P_STREAM_GAP,
    P_SWAP,
    P_TEXT_ONLY,
    P_VARIANT_CUE,
    RECORDS_PER_ENTITY,
    STREAM_COLUMNS,
    STREAM_PATH,
    Category,
)
from mm_platform.demo.fields import make_fields
from mm_platform.demo.files import write_bytes, write_manifest
from mm_platform.demo.image import _png_bytes, make_picture
from mm_platform.demo.sound import _ALT_AUDIO_EXTS, AUDIO_FORMATS, audio_bytes, make_sound
from mm_platform.demo.telemetry import entity_category, entity_name, pick_entity, telemetry_stream
from mm_platform.demo.text import make_caption
from mm_platform.lib.landing.manifest import is_valid_batch_id


@dataclass(frozen=True)
class DemoBatch:
    """What :func:`make_demo_batch` wrote and what the platform should make of it."""

    batch_dir: Path
    batch_id: str
    n_lines: int  # non-blank manifest lines (good + broken + partial)
    n_records_expected_aligned: int  # records that survive validation (good ones + partial lines)
    broken: dict[int, str]  # 1-based manifest line number -> expected rejection reason (no record)
    labels: dict[str, str]  # record_id -> ground-truth label (every surviving record: good + partial)
    # 1-based line number -> expected rejection reason, for lines kept as a record minus a rejected part
    partial: dict[int, str] = field(default_factory=dict)


def _aux_rng(seed: int, stream: int) -> np.random.Generator:
    """A random stream for the non-text/image modalities, independent of the main ``default_rng(seed)``."""
    return np.random.default_rng([seed, stream])


def _other_category(rng: np.random.Generator, ci: int) -> Category:
    n_cat = len(CATEGORIES)
    return CATEGORIES[(ci + int(rng.integers(1, n_cat))) % n_cat]


@dataclass
class _Build:
    """One batch under construction: where it goes, its random streams and what has been decided so far."""

    out_dir: Path
    id_prefix: str
    n_entities: int
    rng: np.random.Generator  # text, pictures, positions: unchanged by the other modalities
    rng_audio: np.random.Generator
    rng_fields: np.random.Generator
    rng_entity: np.random.Generator
    rng_stream: np.random.Generator
    rng_extra: np.random.Generator
    good: list[dict[str, object]] = field(default_factory=list)
    good_entity: dict[str, int] = field(default_factory=dict)  # record_id -> entity index
    labels: dict[str, str] = field(default_factory=dict)


def _good_record(b: _Build, i: int, ci: int) -> None:
    """Record ``i`` of category ``CATEGORIES[ci]``: caption and/or picture, entity, maybe fields."""
    cat = CATEGORIES[ci]
    rid = f"{b.id_prefix}-{i:05d}"
    rng = b.rng
    u = rng.random()
    has_text, has_image = (True, False) if u < P_TEXT_ONLY else (
        (False, True) if u < P_TEXT_ONLY + P_IMAGE_ONLY else (True, True))
    text_cat = img_cat = cat
    if rng.random() < P_SWAP:
        other = _other_category(rng, ci)
        if has_text and has_image:
            if rng.random() < 0.5:
                text_cat = other
            else:
                img_cat = other
        elif has_text:
            text_cat = other
        else:
            img_cat = other
    # always draw both so the rng stream does not depend on the modality choice
    caption = make_caption(text_cat, rng)
    picture = make_picture(img_cat, rng)
    b.good_entity[rid] = pick_entity(b.rng_entity, ci, b.n_entities)
    rec: dict[str, object] = {"record_id": rid, "timestamp": "", "entity_id": entity_name(b.good_entity[rid])}
    if has_text:
        rec["text"] = caption
    if has_image:
        rel = f"images/{rid}.png"
        write_bytes(b.out_dir / rel, _png_bytes(picture))
        rec["image"] = rel
    if b.rng_fields.random() >= P_NO_FIELDS:
        fields_cat = _other_category(b.rng_fields, ci) if b.rng_fields.random() < P_SWAP else cat
        rec["fields"] = make_fields(fields_cat, b.rng_fields)
    rec["label"] = cat.label
    b.good.append(rec)
    b.labels[rid] = cat.label


def _add_audio(b: _Build, cat_idx: np.ndarray) -> None:
    """Which records get a clip, of which category, in which container; then synthesise in record order."""
    rng = b.rng_audio
    audio_cats: dict[int, Category] = {}
    for i in range(len(b.good)):
        if rng.random() >= P_NO_AUDIO:
            swap = rng.random() < P_SWAP
            audio_cats[i] = _other_category(rng, int(cat_idx[i])) if swap else CATEGORIES[int(cat_idx[i])]
    with_audio = sorted(audio_cats)
    n_alt = int(round(P_ALT_AUDIO_FORMAT * len(with_audio)))
    if len(with_audio) >= 20:
        n_alt = max(n_alt, len(_ALT_AUDIO_EXTS))
    alt = sorted(int(j) for j in rng.choice(len(with_audio), size=n_alt, replace=False))
    ext_of = {with_audio[j]: _ALT_AUDIO_EXTS[m % len(_ALT_AUDIO_EXTS)] for m, j in enumerate(alt)}
    for i in with_audio:
        rec = b.good[i]
        ext = ext_of.get(i, "wav")
        rel = f"audio/{rec['record_id']}.{ext}"
        write_bytes(b.out_dir / rel, audio_bytes(make_sound(audio_cats[i], rng), ext))
        # keep the manifest's key order: ..., text, image, audio, fields, label
        tail = {k: rec.pop(k) for k in ("fields", "label") if k in rec}
        rec["audio"] = rel
        rec.update(tail)


def _manifest_lines(
    b: _Build, times: list[datetime], n_broken: int
) -> tuple[list[str], dict[int, str], dict[int, str], list[tuple[int, float]]]:
    """Interleave the good records with ``n_broken`` broken lines at seeded positions: the lines, the
    broken and partial line numbers and ``(entity, epoch s)`` of every kept record."""
    n_records, n_cat = len(b.good), len(CATEGORIES)
    positions = sorted(int(p) for p in b.rng.choice(n_records + n_broken, size=n_broken, replace=False))
    line_kinds = {pos: BROKEN_KINDS[j % len(BROKEN_KINDS)] for j, pos in enumerate(positions)}
    lines: list[str] = []
    broken: dict[int, str] = {}
    partial: dict[int, str] = {}
    good_iter = iter(b.good)
    emitted_ids: list[str] = []
    stream_records: list[tuple[int, float]] = []
    bj = 0
    for slot in range(n_records + n_broken):
        ts = times[slot].isoformat().replace("+00:00", "Z")
        if slot not in line_kinds:
            rec = next(good_iter)
            rec["timestamp"] = ts
            lines.append(json.dumps(rec, ensure_ascii=False, sort_keys=False))
            emitted_ids.append(str(rec["record_id"]))
            stream_records.append((b.good_entity[str(rec["record_id"])], times[slot].timestamp()))
            continue
        rid = f"{b.id_prefix}-{n_records + bj:05d}"
        bj += 1
        bad_cat = CATEGORIES[bj % n_cat]
        bl = broken_line(line_kinds[slot], rid, ts, bad_cat, b.out_dir, emitted_ids, rng=b.rng,
                         rng_extra=b.rng_extra, rng_entity=b.rng_entity, n_entities=b.n_entities)
        lines.append(bl.line)
        if bl.entity is not None:
            b.labels[rid] = bad_cat.label
            stream_records.append((bl.entity, times[slot].timestamp()))
        (partial if bl.kind in PARTIAL_KINDS else broken)[slot + 1] = bl.kind
    return lines, broken, partial, stream_records


def make_demo_batch(
    out_dir: Path, n_records: int = 240, seed: int = 0, n_broken: int = 7, id_prefix: str = "demo"
) -> DemoBatch:
    """Write a demo landing batch into ``out_dir`` (the batch folder; batch id = its name).

    ``n_records`` good records (labels balanced over :data:`CATEGORIES`), plus ``n_broken`` broken
    lines cycling through :data:`BROKEN_KINDS`, inserted at seeded positions (kinds in
    :data:`PARTIAL_KINDS` go to :attr:`DemoBatch.partial`, the others to :attr:`DemoBatch.broken`).
    Pictures go to ``out_dir/images/*.png``, clips to ``out_dir/audio/*.{wav,flac,ogg,mp3}``, the
    telemetry stream to ``out_dir/streams/telemetry.csv``; ``records.jsonl`` is written last (temp
    file + ``os.replace``) so the batch only becomes complete once everything else is on disk. Same
    arguments -> same bytes.
    """
    out_dir = Path(out_dir)
    batch_id = out_dir.name
    if not is_valid_batch_id(batch_id):
        raise ValueError(f"batch folder name {batch_id!r} is not a valid batch id")
    if n_records < 1 or n_broken < 0:
        raise ValueError("n_records must be >= 1 and n_broken >= 0")
    b = _Build(out_dir, id_prefix, max(1, math.ceil(n_records / RECORDS_PER_ENTITY)),
               np.random.default_rng(seed), *(_aux_rng(seed, k) for k in range(1, 6)))
    (out_dir / "images").mkdir(parents=True, exist_ok=True)

    cat_idx = np.arange(n_records) % len(CATEGORIES)
    b.rng.shuffle(cat_idx)
    t0 = datetime(2024, 3, 1, 8, 0, 0, tzinfo=UTC) + timedelta(days=seed % 97)
    step_s = b.rng.integers(20, 600, size=n_records + n_broken)
    times = [t0 + timedelta(seconds=int(s)) for s in np.cumsum(step_s)]
    for i in range(n_records):
        _good_record(b, i, int(cat_idx[i]))
    _add_audio(b, cat_idx)
    lines, broken, partial, stream_records = _manifest_lines(b, times, n_broken)
    # telemetry stream: ~P_STREAM_GAP of the kept records get no reading near their timestamp
    write_bytes(out_dir / STREAM_PATH, telemetry_stream(b.rng_stream, b.n_entities, stream_records))
    write_manifest(out_dir, lines)
    return DemoBatch(
        batch_dir=out_dir,
        batch_id=batch_id,
        n_lines=len(lines),
        n_records_expected_aligned=n_records + len(partial),
        broken=broken,
        labels=b.labels,
        partial=partial,
    )


__all__ = [
    "AUDIO_FORMATS",
    "AUDIO_SAMPLE_RATE",
    "AUDIO_SECONDS",
    "BROKEN_KINDS",
    "CATEGORIES",
    "CONFUSED_PAIRS",
    "DEMO_STREAM_TOLERANCE",
    "MODALITY_PROFILE",
    "P_ALT_AUDIO_FORMAT",
    "P_FIELD_NULL",
    "P_IMAGE_ONLY",
    "P_NO_AUDIO",
    "P_NO_FIELDS",
    "P_NOUN",
    "P_STREAM_GAP",
    "P_SWAP",
    "P_TEXT_ONLY",
    "P_VARIANT_CUE",
    "PARTIAL_KINDS",
    "RECORDS_PER_ENTITY",
    "STREAM_COLUMNS",
    "STREAM_PATH",
    "Category",
    "DemoBatch",
    "audio_bytes",
    "entity_category",
    "entity_name",
    "make_caption",
    "make_demo_batch",
    "make_fields",
    "make_picture",
    "make_sound",
]
