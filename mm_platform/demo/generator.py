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
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import combinations
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw, ImageFilter

from mm_platform.lib.manifest import MANIFEST_NAME, is_valid_batch_id

# --------------------------------------------------------------------------------------------------
# Category definitions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """One demo product category: its label and, per modality, the profile it shares with one other
    category plus a 0/1 variant (the subtle cue telling the two apart)."""

    label: str
    noun: str  # product noun used in some captions
    topic: str  # key into _TOPICS (shared by two categories)
    style: str  # key into the picture styles (shared by two categories)
    variant: int  # 0/1: subtle visual cue distinguishing the two categories sharing a style
    sound: str  # key into _SOUNDS (timbre family, shared by two categories)
    sound_variant: int  # 0/1: 1 = pitch range 3 semitones higher
    tier: str  # key into _TIERS (field distributions, shared by two categories)
    tier_variant: int  # 0/1: 1 = a bit pricier and lighter, tilted material mix
    telemetry: str  # key into _TELEMETRY (stream levels of its entities, shared by two categories)
    telemetry_variant: int  # 0/1: 1 = slightly warmer, more vibration and power


CATEGORIES: tuple[Category, ...] = (
    Category("mug", "mug", "kitchen", "discs", 0, "hum", 0, "budget", 0, "cool", 0),
    Category("teapot", "teapot", "kitchen", "stripes", 0, "bell", 0, "mid", 0, "warm", 0),
    Category("trail_shoe", "trail shoe", "outdoor", "stripes", 1, "buzz", 0, "premium", 0, "cool", 1),
    Category("backpack", "backpack", "outdoor", "checker", 0, "hum", 1, "mid", 1, "busy", 0),
    Category("headphones", "headphones", "electronics", "checker", 1, "buzz", 1, "budget", 1, "warm", 1),
    Category("desk_lamp", "desk lamp", "electronics", "discs", 1, "bell", 1, "premium", 1, "busy", 1),
)

#: Category attribute holding each modality's shared profile.
MODALITY_PROFILE: dict[str, str] = {
    "text": "topic", "image": "style", "audio": "sound", "fields": "tier", "telemetry": "telemetry",
}


def _confused_pairs(attr: str) -> tuple[tuple[str, str], ...]:
    return tuple((a.label, b.label) for a, b in combinations(CATEGORIES, 2) if getattr(a, attr) == getattr(b, attr))


#: modality -> the category pairs that modality alone cannot tell apart (same profile).
CONFUSED_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {m: _confused_pairs(a) for m, a in MODALITY_PROFILE.items()}

# Fraction of records whose caption or picture (independently: sound, fields, entity) comes from a
# random other category.
P_SWAP = 0.10
# Fraction of records that are text-only / image-only.
P_TEXT_ONLY = 0.03
P_IMAGE_ONLY = 0.03
# Fraction of records without audio / without fields.
P_NO_AUDIO = 0.05
P_NO_FIELDS = 0.05
# Probability that a field value is null (deliberate tabular noise).
P_FIELD_NULL = 0.05
# Share of audio clips written as FLAC / OGG (Vorbis) / MP3 instead of WAV (at least one of each when
# a batch has 20 or more clips).
P_ALT_AUDIO_FORMAT = 0.05
# Share of records with no stream reading of their entity near their timestamp.
P_STREAM_GAP = 0.05
# Probability that a caption names the product itself (the only category-specific text cue).
P_NOUN = 0.6
# Probability that a picture shows its own category's visual variant (else the variant of the other
# category sharing its style): the only category-specific picture cue. Also used for the sound's
# pitch range.
P_VARIANT_CUE = 0.9

#: Audio clips: sample rate (Hz) and longest duration (s; each clip is 90-100% of it).
AUDIO_SAMPLE_RATE = 16_000
AUDIO_SECONDS = 1.0
#: About this many records per entity (``entity_id``).
RECORDS_PER_ENTITY = 8
#: The stream file written next to the manifest, relative to the batch folder.
STREAM_PATH = "streams/telemetry.csv"
STREAM_COLUMNS: tuple[str, ...] = ("timestamp", "entity_id", "temperature_c", "vibration", "power_w")
#: Intended as-of join tolerance for the telemetry stream: every record except the ~5% gap records
#: has a reading of its entity at most 4 minutes before and after its timestamp; gap records have none
#: within 15 minutes.
DEMO_STREAM_TOLERANCE = "10m"
_STREAM_STEP_S = (90.0, 240.0)  # spacing of an entity's readings
_STREAM_WINDOW_S = (8 * 60.0, 25 * 60.0)  # readings this far before/after each (non-gap) record
_STREAM_GAP_CLEAR_S = 15 * 60.0  # no reading of the entity this close to a gap record
_STREAM_GAP_ISOLATION_S = _STREAM_GAP_CLEAR_S + _STREAM_STEP_S[1] + 60.0  # gap records' neighbours

_TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "kitchen": {
        "item": ("it", "this one", "the piece", "my new one", "the set"),
        "use": (
            "my morning coffee", "green tea at breakfast", "hot cocoa on cold evenings",
            "brewing chai for guests", "an afternoon espresso", "herbal infusions before bed",
        ),
        "praise": (
            "keeps drinks warm for ages", "the glaze looks lovely on the kitchen shelf",
            "survives the dishwasher without fading", "pours without dripping",
            "the ceramic feels solid and heavy", "the handle stays cool to the touch",
        ),
        "gripe": (
            "it chipped after a few weeks", "the lid rattles when pouring",
            "the glaze has a tiny crack", "it is smaller than the kitchen photo suggested",
        ),
        "place": ("in the kitchen", "on the breakfast table", "next to the kettle", "in the cupboard"),
    },
    "outdoor": {
        "item": ("it", "this one", "the gear", "my new one", "the pair"),
        "use": (
            "weekend hikes on muddy trails", "my daily run in the park", "a week of camping",
            "climbing rocky mountain paths", "long walks in the rain", "trekking in the hills",
        ),
        "praise": (
            "stays dry in heavy rain", "the grip on wet rocks is excellent",
            "feels light even after twenty kilometres", "the straps are sturdy and adjustable",
            "the waterproof fabric held up in a storm", "plenty of support on steep trails",
        ),
        "gripe": (
            "a seam came loose after a month on the trail", "the zip sticks when it is muddy",
            "it runs a bit small", "the colour faded in the sun",
        ),
        "place": ("on the trail", "at the campsite", "in the mountains", "on my hiking trips"),
    },
    "electronics": {
        "item": ("it", "this one", "the device", "my new one", "the unit"),
        "use": (
            "late nights at my home office desk", "video calls for work", "reading in bed",
            "long study sessions", "gaming in the evening", "working from home",
        ),
        "praise": (
            "the battery lasts all week", "bluetooth pairing took seconds",
            "charging over USB-C is quick", "the brightness settings are easy to adjust",
            "the setup took two minutes", "the touch controls respond instantly",
        ),
        "gripe": (
            "the charging cable is far too short", "the app keeps disconnecting",
            "it hums quietly when charging", "the firmware update failed once",
        ),
        "place": ("on my desk", "in the home office", "by the bed", "next to the laptop"),
    },
}

_OPENERS = (
    "Bought {item} for {use}.", "Ordered {item} for {use}.", "Got {item} as a gift, perfect for {use}.",
    "We use {item} for {use}.", "Picked up {item} mainly for {use}.", "Needed something for {use}.",
)
_NOUN_OPENERS = (
    "Bought this {noun} for {use}.", "Ordered the {noun} for {use}.", "Our new {noun} is great for {use}.",
    "This {noun} is perfect for {use}.",
)
_BODIES = (
    "Honestly {praise}.", "Really happy: {praise}.", "Best part: {praise}.", "I love that {praise}.",
    "Three weeks in and {praise}.", "{Praise}, which matters {place}.",
)
_GRIPES = ("Only complaint: {gripe}.", "One downside, {gripe}.", "Minus one star because {gripe}.")
_FILLER = (
    "Delivery was quick.", "Shipping took a week.", "Good value for the price.", "Would buy again.",
    "Five stars.", "Four stars overall.", "Packaging was recyclable.", "Customer service was helpful.",
    "Arrived well packed.", "Recommended to my friends.", "",
)


def make_caption(cat: Category, rng: np.random.Generator) -> str:
    """A varied customer-feedback caption for ``cat`` (topic vocabulary + shared filler)."""
    voc = _TOPICS[cat.topic]

    def pick(seq: tuple[str, ...]) -> str:
        return seq[int(rng.integers(len(seq)))]

    fill = {
        "item": pick(voc["item"]), "use": pick(voc["use"]), "praise": pick(voc["praise"]),
        "gripe": pick(voc["gripe"]), "place": pick(voc["place"]), "noun": cat.noun,
    }
    fill["Praise"] = fill["praise"][0].upper() + fill["praise"][1:]
    parts: list[str] = []
    if rng.random() < P_NOUN:
        parts.append(pick(_NOUN_OPENERS).format(**fill))
    else:
        parts.append(pick(_OPENERS).format(**fill))
    parts.append(pick(_BODIES).format(**fill))
    if rng.random() < 0.35:
        parts.append(pick(_GRIPES).format(**fill))
    filler = pick(_FILLER)
    if filler:
        parts.append(filler)
    if rng.random() < 0.5:
        parts[0], parts[-1] = parts[-1], parts[0]
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------


def _jitter_rgb(rng: np.random.Generator, base: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in base)
    return (r, g, b)


def _noisy_background(rng: np.random.Generator, size: int, base: tuple[int, int, int], sigma: float) -> Image.Image:
    arr = np.empty((size, size, 3), dtype=np.float32)
    arr[...] = np.asarray(_jitter_rgb(rng, base, 18), dtype=np.float32)
    arr += rng.normal(0.0, sigma, size=(size, size, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _draw_discs(rng: np.random.Generator, size: int, variant: int) -> Image.Image:
    img = _noisy_background(rng, size, (245, 232, 205), 10.0)
    d = ImageDraw.Draw(img)
    palette = ((214, 48, 38), (235, 120, 30), (200, 30, 70), (240, 160, 40))
    n = int(rng.integers(1, 3)) if variant == 0 else int(rng.integers(3, 6))
    for _ in range(n):
        r = size * (rng.uniform(0.22, 0.34) if variant == 0 else rng.uniform(0.10, 0.18))
        cx, cy = rng.uniform(r, size - r, size=2)
        col = _jitter_rgb(rng, palette[int(rng.integers(len(palette)))], 20)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=col, outline=(90, 20, 10), width=2)
        # dotted texture on the disc
        for _ in range(int(r)):
            a, rr = rng.uniform(0, 2 * math.pi), rng.uniform(0, r * 0.85)
            x, y = cx + rr * math.cos(a), cy + rr * math.sin(a)
            d.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(255, 225, 170))
    return img


def _draw_stripes(rng: np.random.Generator, size: int, variant: int) -> Image.Image:
    big = size * 2
    layer = _noisy_background(rng, big, (215, 235, 245), 8.0)
    d = ImageDraw.Draw(layer)
    palette = ((30, 80, 200), (20, 150, 170), (40, 60, 150), (60, 170, 220))
    period = rng.uniform(10, 16) if variant == 0 else rng.uniform(14, 22)
    width = period * rng.uniform(0.35, 0.55)
    col = _jitter_rgb(rng, palette[int(rng.integers(len(palette)))], 20)
    col2 = _jitter_rgb(rng, palette[int(rng.integers(len(palette)))], 20)
    x = rng.uniform(0, period)
    k = 0
    while x < big:
        d.rectangle((x, 0, x + width, big), fill=col if k % 2 == 0 else col2)
        x += period
        k += 1
    if variant == 1:  # a few thin cross stripes
        y = rng.uniform(0, 30)
        while y < big:
            d.rectangle((0, y, big, y + 2), fill=(250, 250, 255))
            y += rng.uniform(24, 36)
    angle = rng.uniform(20, 70) * (1 if rng.random() < 0.5 else -1)
    layer = layer.rotate(angle, resample=Image.Resampling.BILINEAR)
    off = int(rng.integers(0, size // 2 + 1)), int(rng.integers(0, size // 2 + 1))
    return layer.crop((size // 4 + off[0] // 2, size // 4 + off[1] // 2,
                       size // 4 + off[0] // 2 + size, size // 4 + off[1] // 2 + size))


def _draw_checker(rng: np.random.Generator, size: int, variant: int) -> Image.Image:
    img = _noisy_background(rng, size, (200, 230, 190), 10.0)
    d = ImageDraw.Draw(img)
    cell = int(rng.integers(10, 17))
    ox, oy = int(rng.integers(0, cell)), int(rng.integers(0, cell))
    dark = _jitter_rgb(rng, (40, 120, 50), 20)
    for i in range(-1, size // cell + 2):
        for j in range(-1, size // cell + 2):
            if (i + j) % 2 == 0:
                x0, y0 = i * cell - ox, j * cell - oy
                d.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=dark)
    n = int(rng.integers(1, 3))
    for _ in range(n):
        r = size * rng.uniform(0.2, 0.3)
        cx, cy = rng.uniform(r, size - r, size=2)
        a0 = rng.uniform(0, 2 * math.pi)
        sides = 3 if variant == 0 else 4
        pts = [(cx + r * math.cos(a0 + 2 * math.pi * t / sides), cy + r * math.sin(a0 + 2 * math.pi * t / sides))
               for t in range(sides)]
        d.polygon(pts, fill=_jitter_rgb(rng, (150, 210, 60), 25), outline=(20, 60, 20))
    return img


_STYLES = {"discs": _draw_discs, "stripes": _draw_stripes, "checker": _draw_checker}


def make_picture(cat: Category, rng: np.random.Generator) -> Image.Image:
    """A jittered 96-128 px RGB picture in ``cat``'s style."""
    size = int(rng.integers(96, 129))
    variant = cat.variant if rng.random() < P_VARIANT_CUE else 1 - cat.variant
    img = _STYLES[cat.style](rng, size, variant)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    return img


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Sounds
# --------------------------------------------------------------------------------------------------

# Lowest fundamental (Hz) of each timbre family; variant 0 draws its pitch 0-6 semitones above it,
# variant 1 3-9 semitones above (so the two ranges half overlap).
_SOUND_BASE_HZ = {"hum": 110.0, "bell": 420.0, "buzz": 180.0}
_BELL_RATIOS = np.array([1.0, 2.76, 5.40, 8.93, 13.34])
_BELL_AMPS = np.array([1.0, 0.6, 0.45, 0.3, 0.2])


def _partials(t: np.ndarray, freqs: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Sum of sinusoids: ``sum_k amps[k] * sin(2 pi freqs[k] t + phases[k])`` (vectorised)."""
    return amps @ np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None])


_TABLE_SIZE = 2048


def _harmonic_tone(t: np.ndarray, f0: float, k: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """``sum_k amps[k] * sin(2 pi k f0 t + phases[k])`` through a one-period wavetable (cheap for many
    harmonics; the table is band-limited, so no aliasing)."""
    x = np.arange(_TABLE_SIZE + 1) / _TABLE_SIZE
    table = _partials(x, k.astype(np.float64), amps, phases)
    return np.interp((f0 * t) % 1.0, x, table)


def _ramp_envelope(t: np.ndarray, attack: float, release: float) -> np.ndarray:
    dur = t[-1] if len(t) else 0.0
    return np.clip(np.minimum(t / attack, (dur - t) / release), 0.0, 1.0)


def _sound_hum(rng: np.random.Generator, t: np.ndarray, f0: float) -> np.ndarray:
    k = np.arange(1, 41, dtype=np.float64)
    k = k[k * f0 < 5000.0]
    amps = (1.0 / k) ** rng.uniform(0.9, 1.3)
    tone = _harmonic_tone(t, f0, k, amps, rng.uniform(0, 2 * np.pi, size=len(k)))
    tremolo = 1.0 + rng.uniform(0.15, 0.45) * np.sin(2 * np.pi * rng.uniform(4.0, 7.0) * t)
    return tone * tremolo * _ramp_envelope(t, rng.uniform(0.03, 0.15), rng.uniform(0.1, 0.25))


def _sound_bell(rng: np.random.Generator, t: np.ndarray, f0: float) -> np.ndarray:
    freqs = f0 * _BELL_RATIOS * (1.0 + rng.normal(0.0, 0.01, size=len(_BELL_RATIOS)))
    keep = freqs < 7500.0
    freqs = freqs[keep]
    amps = _BELL_AMPS[keep] * rng.uniform(0.7, 1.3, size=len(freqs))
    tau = rng.uniform(0.2, 0.45) / (1.0 + 0.5 * np.arange(len(freqs)))
    phases = rng.uniform(0, 2 * np.pi, size=len(freqs))
    onsets = [0.0] + ([float(rng.uniform(0.3, 0.6))] if rng.random() < 0.5 else [])
    out = np.zeros_like(t)
    for onset in onsets:
        i0 = int(np.searchsorted(t, onset))
        dt = (t[i0:] - t[i0]).astype(np.float32)
        decay = np.exp(-dt[None, :] / tau[:, None].astype(np.float32))
        ring = np.sin(2 * np.pi * freqs[:, None].astype(np.float32) * dt[None, :] + phases[:, None].astype(np.float32))
        out[i0:] += amps.astype(np.float32) @ (decay * ring)
    return out * _ramp_envelope(t, 0.002, 0.05)


def _fft_len(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()  # a power of two >= n: FFTs of odd lengths are slow


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """Unit-RMS noise band-limited to ``[lo, hi]`` Hz."""
    m = _fft_len(n)
    spec = np.fft.rfft(rng.normal(size=m))
    f = np.fft.rfftfreq(m, 1.0 / AUDIO_SAMPLE_RATE)
    spec[(f < lo) | (f > hi)] = 0.0
    x = np.fft.irfft(spec, m)[:n]
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def _sound_buzz(rng: np.random.Generator, t: np.ndarray, f0: float) -> np.ndarray:
    k = np.arange(1, 40, 2, dtype=np.float64)
    k = k[k * f0 < 4000.0]
    tone = _harmonic_tone(t, f0, k, 1.0 / k, rng.uniform(0, 0.3, size=len(k)))
    tone /= max(float(np.sqrt(np.mean(tone**2))), 1e-12)
    centre, width = rng.uniform(1000.0, 2500.0), rng.uniform(400.0, 800.0)
    tone = tone + rng.uniform(0.25, 0.5) * _band_noise(rng, len(t), centre - width / 2, centre + width / 2)
    duty = rng.uniform(-0.3, 0.3)  # threshold of the smooth square gate
    gate = 0.5 * (1.0 + np.tanh(8.0 * (np.sin(2 * np.pi * rng.uniform(3.0, 6.0) * t + rng.uniform(0, 2 * np.pi)) - duty)))
    return tone * gate * _ramp_envelope(t, 0.01, 0.05)


_SOUNDS = {"hum": _sound_hum, "bell": _sound_bell, "buzz": _sound_buzz}


def _coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS noise with a 1/f^alpha power spectrum, alpha in [0, 1.5] (white to reddish)."""
    m = _fft_len(n)
    spec = np.fft.rfft(rng.normal(size=m))
    f = np.maximum(np.fft.rfftfreq(m, 1.0 / AUDIO_SAMPLE_RATE), 20.0)
    x = np.fft.irfft(spec / f ** (rng.uniform(0.0, 1.5) / 2), m)[:n]
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def make_sound(cat: Category, rng: np.random.Generator) -> np.ndarray:
    """A jittered ~1 s mono clip (float32, peak 0.3-0.9, :data:`AUDIO_SAMPLE_RATE`) in ``cat``'s timbre
    family, with background noise at 6-30 dB SNR."""
    n = int(round(AUDIO_SAMPLE_RATE * AUDIO_SECONDS * rng.uniform(0.9, 1.0)))
    t = np.arange(n, dtype=np.float64) / AUDIO_SAMPLE_RATE
    variant = cat.sound_variant if rng.random() < P_VARIANT_CUE else 1 - cat.sound_variant
    f0 = _SOUND_BASE_HZ[cat.sound] * 2.0 ** ((rng.uniform(0.0, 6.0) + 3.0 * variant) / 12.0)
    tone = _SOUNDS[cat.sound](rng, t, f0)
    tone /= max(float(np.sqrt(np.mean(tone**2))), 1e-12)
    x = tone + _coloured_noise(rng, n) * 10.0 ** (-rng.uniform(6.0, 30.0) / 20.0)
    x *= rng.uniform(0.3, 0.9) / max(float(np.max(np.abs(x))), 1e-12)
    return x.astype(np.float32)


#: Audio container per file extension: (libsndfile format, subtype).
AUDIO_FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
_ALT_AUDIO_EXTS = ("flac", "ogg", "mp3")


def _ogg_crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return tuple(table)


_OGG_CRC = _ogg_crc_table()


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _ogg_set_serial(data: bytes, serial: int) -> bytes:
    """Rewrite the stream serial number of every Ogg page (and its CRC): libsndfile draws it from the
    clock, which would make OGG output differ between runs."""
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos:pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_seg = out[pos + 26]
        length = 27 + n_seg + sum(out[pos + 27:pos + 27 + n_seg])
        out[pos + 14:pos + 18] = struct.pack("<I", serial)
        out[pos + 22:pos + 26] = b"\0\0\0\0"
        out[pos + 22:pos + 26] = struct.pack("<I", _ogg_crc(bytes(out[pos:pos + length])))
        pos += length
    return bytes(out)


def audio_bytes(samples: np.ndarray, ext: str = "wav", sample_rate: int = AUDIO_SAMPLE_RATE) -> bytes:
    """Encode a mono float clip (full scale 1.0) as 16-bit WAV/FLAC, OGG Vorbis or MP3 (``ext``),
    deterministically."""
    fmt, subtype = AUDIO_FORMATS[ext]
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format=fmt, subtype=subtype)
    data = buf.getvalue()
    if ext == "ogg":
        data = _ogg_set_serial(data, zlib.crc32(pcm.tobytes()) & 0x7FFFFFFF)
    return data


# --------------------------------------------------------------------------------------------------
# Fields (tabular)
# --------------------------------------------------------------------------------------------------

_MATERIALS = ("ceramic", "plastic", "steel", "nylon", "leather", "aluminium")
_COLOURS = ("black", "white", "grey", "red", "blue", "green", "beige")


@dataclass(frozen=True)
class _Tier:
    price: float  # median price (EUR)
    weight_g: float  # median weight
    rating_p: tuple[float, ...]  # P(rating = 1..5)
    material_p: tuple[float, ...]  # P over _MATERIALS
    warranty_p: tuple[float, float]  # P(12), P(24); rest null


_TIERS = {
    "budget": _Tier(16.0, 320.0, (0.08, 0.12, 0.25, 0.35, 0.20), (0.35, 0.35, 0.10, 0.10, 0.05, 0.05), (0.75, 0.15)),
    "mid": _Tier(45.0, 850.0, (0.04, 0.08, 0.20, 0.38, 0.30), (0.10, 0.10, 0.30, 0.35, 0.10, 0.05), (0.55, 0.35)),
    "premium": _Tier(120.0, 1400.0, (0.02, 0.05, 0.13, 0.35, 0.45), (0.05, 0.10, 0.10, 0.10, 0.35, 0.30), (0.30, 0.60)),
}


def make_fields(cat: Category, rng: np.random.Generator) -> dict[str, float | int | str | None]:
    """Product fields for ``cat``: ``price``, ``weight_g``, ``rating``, ``material``, ``colour``,
    ``warranty_months``; each value is null with probability :data:`P_FIELD_NULL`."""
    tier = _TIERS[cat.tier]
    v = cat.tier_variant
    mat_p = np.asarray(tier.material_p)
    if v:  # tilt the material mix towards the next material
        mat_p = 0.7 * mat_p + 0.3 * np.roll(mat_p, 1)
    w = float(rng.random())
    warranty = 12 if w < tier.warranty_p[0] else (24 if w < sum(tier.warranty_p) else None)
    values: dict[str, float | int | str | None] = {
        "price": round(float(tier.price * (1.25 if v else 1.0) * rng.lognormal(0.0, 0.35)), 2),
        "weight_g": int(round(tier.weight_g * (0.85 if v else 1.0) * rng.lognormal(0.0, 0.3))),
        "rating": int(rng.choice(5, p=tier.rating_p)) + 1,
        "material": _MATERIALS[int(rng.choice(len(_MATERIALS), p=mat_p / mat_p.sum()))],
        "colour": _COLOURS[int(rng.integers(len(_COLOURS)))],
        "warranty_months": warranty,
    }
    nulls = rng.random(len(values)) < P_FIELD_NULL
    return {k: (None if null else val) for (k, val), null in zip(values.items(), nulls, strict=True)}


# --------------------------------------------------------------------------------------------------
# Telemetry stream
# --------------------------------------------------------------------------------------------------

# telemetry profile -> (temperature_c, vibration, power_w) levels of variant 0
_TELEMETRY = {"cool": (21.0, 0.15, 12.0), "warm": (34.0, 0.35, 45.0), "busy": (27.0, 1.1, 90.0)}
# variant 1: + this many degrees, x these factors for vibration and power
_TELEMETRY_VARIANT = (1.5, 1.2, 1.15)


def entity_name(k: int) -> str:
    """Id of the ``k``-th demo entity (``dev-000``, ``dev-001``, ...)."""
    return f"dev-{k:03d}"


def entity_category(k: int) -> Category:
    """The category entity ``k`` belongs to (the same in every batch)."""
    return CATEGORIES[k % len(CATEGORIES)]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(round(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _telemetry_values(rng: np.random.Generator, cat: Category, times: np.ndarray) -> np.ndarray:
    """(n, 3) readings of an entity of ``cat`` at ``times`` (epoch s): level + entity bias + drift + noise."""
    temp, vib, power = _TELEMETRY[cat.telemetry]
    if cat.telemetry_variant:
        temp += _TELEMETRY_VARIANT[0]
        vib *= _TELEMETRY_VARIANT[1]
        power *= _TELEMETRY_VARIANT[2]
    n = len(times)
    drift = np.sin(2 * np.pi * times / rng.uniform(3 * 3600.0, 9 * 3600.0) + rng.uniform(0, 2 * np.pi))
    out = np.empty((n, 3))
    out[:, 0] = temp + rng.normal(0.0, 1.0) + 1.2 * drift + rng.normal(0.0, 1.5, n)
    out[:, 1] = vib * rng.lognormal(0.0, 0.15) * rng.lognormal(0.0, 0.3, n)
    out[:, 2] = np.maximum(power * rng.lognormal(0.0, 0.1) * (1.0 + 0.1 * drift + rng.normal(0.0, 0.12, n)), 0.0)
    return out


def _telemetry_csv(
    rng: np.random.Generator, n_entities: int, record_times: list[tuple[int, float, bool]]
) -> bytes:
    """The telemetry CSV for records ``(entity, epoch s, is_gap)``: readings around every non-gap
    record, none within :data:`_STREAM_GAP_CLEAR_S` of a gap record, plus a few unknown entities;
    rows shuffled."""
    windows: dict[int, list[tuple[float, float]]] = {}
    gaps: dict[int, list[float]] = {}
    for ent, ts, gap in record_times:
        if gap:
            gaps.setdefault(ent, []).append(ts)
        else:
            lo, hi = rng.uniform(*_STREAM_WINDOW_S, size=2)
            windows.setdefault(ent, []).append((ts - lo, ts + hi))
    rows: list[tuple[float, str, np.ndarray]] = []
    for ent in sorted(windows):
        times: list[float] = []
        for lo, hi in _merge(windows[ent]):
            steps = rng.uniform(*_STREAM_STEP_S, size=int((hi - lo) / _STREAM_STEP_S[0]) + 2)
            t = lo + rng.uniform(0.0, _STREAM_STEP_S[1]) * 0.5 + np.concatenate(([0.0], np.cumsum(steps)))
            times.extend(t[t <= hi].tolist())
        arr = np.round(np.asarray(times))
        for g in gaps.get(ent, []):
            arr = arr[np.abs(arr - g) > _STREAM_GAP_CLEAR_S]
        vals = _telemetry_values(rng, entity_category(ent), arr)
        rows.extend((float(t), entity_name(ent), v) for t, v in zip(arr, vals, strict=True))
    # a few readings from entities that no record names
    all_ts = [ts for _, ts, _ in record_times]
    n_unknown = max(3, len(rows) // 100)
    for j in range(n_unknown):
        ent = n_entities + 100 + j % 3
        t = np.round(rng.uniform(min(all_ts) - 600.0, max(all_ts) + 600.0, size=1))
        rows.append((float(t[0]), entity_name(ent), _telemetry_values(rng, entity_category(ent), t)[0]))
    lines = [",".join(STREAM_COLUMNS)]
    for i in rng.permutation(len(rows)):
        t, ent_id, v = rows[int(i)]
        lines.append(f"{_iso(t)},{ent_id},{v[0]:.2f},{v[1]:.3f},{v[2]:.1f}")
    return ("\n".join(lines) + "\n").encode("ascii")


# --------------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------------

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


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _aux_rng(seed: int, stream: int) -> np.random.Generator:
    """A random stream for the non-text/image modalities, independent of the main ``default_rng(seed)``."""
    return np.random.default_rng([seed, stream])


def _other_category(rng: np.random.Generator, ci: int) -> Category:
    n_cat = len(CATEGORIES)
    return CATEGORIES[(ci + int(rng.integers(1, n_cat))) % n_cat]


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
    rng = np.random.default_rng(seed)  # text, pictures, positions: unchanged by the other modalities
    rng_audio, rng_fields, rng_entity, rng_stream, rng_extra = (_aux_rng(seed, k) for k in range(1, 6))
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    n_cat = len(CATEGORIES)

    cat_idx = np.arange(n_records) % n_cat
    rng.shuffle(cat_idx)
    t0 = datetime(2024, 3, 1, 8, 0, 0, tzinfo=UTC) + timedelta(days=seed % 97)
    step_s = rng.integers(20, 600, size=n_records + n_broken)
    times = [t0 + timedelta(seconds=int(s)) for s in np.cumsum(step_s)]

    n_entities = max(1, math.ceil(n_records / RECORDS_PER_ENTITY))
    by_category: dict[str, list[int]] = {}
    for k in range(n_entities):
        by_category.setdefault(entity_category(k).label, []).append(k)

    def pick_entity(ci: int) -> int:
        own = by_category.get(CATEGORIES[ci].label, [])
        others = [k for k in range(n_entities) if k not in own]
        if not own or (others and rng_entity.random() < P_SWAP):
            pool = others or own
        else:
            pool = own
        return pool[int(rng_entity.integers(len(pool)))]

    good: list[dict[str, object]] = []
    good_entity: dict[str, int] = {}  # record_id -> entity index
    labels: dict[str, str] = {}
    for i in range(n_records):
        cat = CATEGORIES[int(cat_idx[i])]
        rid = f"{id_prefix}-{i:05d}"
        u = rng.random()
        has_text, has_image = (True, False) if u < P_TEXT_ONLY else (
            (False, True) if u < P_TEXT_ONLY + P_IMAGE_ONLY else (True, True))
        text_cat = img_cat = cat
        if rng.random() < P_SWAP:
            other = CATEGORIES[(int(cat_idx[i]) + int(rng.integers(1, n_cat))) % n_cat]
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
        good_entity[rid] = pick_entity(int(cat_idx[i]))
        rec: dict[str, object] = {"record_id": rid, "timestamp": "", "entity_id": entity_name(good_entity[rid])}
        if has_text:
            rec["text"] = caption
        if has_image:
            rel = f"images/{rid}.png"
            _write_bytes(out_dir / rel, _png_bytes(picture))
            rec["image"] = rel
        if rng_fields.random() >= P_NO_FIELDS:
            fields_cat = _other_category(rng_fields, int(cat_idx[i])) if rng_fields.random() < P_SWAP else cat
            rec["fields"] = make_fields(fields_cat, rng_fields)
        rec["label"] = cat.label
        good.append(rec)
        labels[rid] = cat.label

    # audio: which records, which category, which container; then synthesise in record order
    audio_cats: dict[int, Category] = {}
    for i in range(n_records):
        if rng_audio.random() >= P_NO_AUDIO:
            swap = rng_audio.random() < P_SWAP
            audio_cats[i] = _other_category(rng_audio, int(cat_idx[i])) if swap else CATEGORIES[int(cat_idx[i])]
    with_audio = sorted(audio_cats)
    n_alt = int(round(P_ALT_AUDIO_FORMAT * len(with_audio)))
    if len(with_audio) >= 20:
        n_alt = max(n_alt, len(_ALT_AUDIO_EXTS))
    alt = sorted(int(j) for j in rng_audio.choice(len(with_audio), size=n_alt, replace=False))
    ext_of = {with_audio[j]: _ALT_AUDIO_EXTS[m % len(_ALT_AUDIO_EXTS)] for m, j in enumerate(alt)}
    for i in with_audio:
        rec = good[i]
        ext = ext_of.get(i, "wav")
        rel = f"audio/{rec['record_id']}.{ext}"
        _write_bytes(out_dir / rel, audio_bytes(make_sound(audio_cats[i], rng_audio), ext))
        # keep the manifest's key order: ..., text, image, audio, fields, label
        tail = {k: rec.pop(k) for k in ("fields", "label") if k in rec}
        rec["audio"] = rel
        rec.update(tail)

    # broken lines
    positions = sorted(int(p) for p in rng.choice(n_records + n_broken, size=n_broken, replace=False))
    line_kinds: dict[int, str] = {pos: BROKEN_KINDS[j % len(BROKEN_KINDS)] for j, pos in enumerate(positions)}
    lines: list[str] = []
    broken: dict[int, str] = {}
    partial: dict[int, str] = {}
    good_iter = iter(good)
    emitted_ids: list[str] = []
    stream_records: list[tuple[int, float]] = []  # (entity, epoch s) of every kept record
    bj = 0
    for slot in range(n_records + n_broken):
        ts = times[slot].isoformat().replace("+00:00", "Z")
        if slot not in line_kinds:
            rec = next(good_iter)
            rec["timestamp"] = ts
            lines.append(json.dumps(rec, ensure_ascii=False, sort_keys=False))
            emitted_ids.append(str(rec["record_id"]))
            stream_records.append((good_entity[str(rec["record_id"])], times[slot].timestamp()))
            continue
        kind = line_kinds[slot]
        rid = f"{id_prefix}-{n_records + bj:05d}"
        bj += 1
        if kind == "duplicate_record_id" and not emitted_ids:
            kind = "empty_text"  # nothing to duplicate yet: fall back deterministically
        bad: dict[str, object] = {"record_id": rid, "timestamp": ts}
        bad_cat = CATEGORIES[bj % n_cat]
        if kind == "malformed_json":
            line = json.dumps({"record_id": rid, "timestamp": ts, "text": "Lovely product, but the"})[:-12]
            lines.append(line)
        else:
            if kind == "missing_file":
                bad["image"] = f"images/{rid}-missing.png"
            elif kind == "truncated_image":
                data = _png_bytes(make_picture(bad_cat, rng))
                _write_bytes(out_dir / f"images/{rid}.png", data[: len(data) // 2])
                bad["image"] = f"images/{rid}.png"
            elif kind == "unreadable_image":
                _write_bytes(out_dir / f"images/{rid}.png", b"this is a text file, not a PNG image\n")
                bad["image"] = f"images/{rid}.png"
            elif kind == "empty_text":
                bad["text"] = "   \n\t "
            elif kind == "duplicate_record_id":
                bad["record_id"] = emitted_ids[int(rng.integers(len(emitted_ids)))]
                bad["text"] = make_caption(bad_cat, rng)
            elif kind == "path_outside_batch":
                bad["image"] = "../x.png"
            elif kind == "unreadable_audio":
                _write_bytes(out_dir / f"audio/{rid}.wav", b"this is not a WAV file, just some bytes\n"
                             + rng_extra.bytes(int(rng_extra.integers(64, 512))))
                bad["audio"] = f"audio/{rid}.wav"
                bad["label"] = bad_cat.label
            elif kind == "silent_audio":
                _write_bytes(out_dir / f"audio/{rid}.wav", audio_bytes(np.zeros(AUDIO_SAMPLE_RATE, np.float32)))
                bad["audio"] = f"audio/{rid}.wav"
                bad["label"] = bad_cat.label
            elif kind == "invalid_field_value":
                ent = pick_entity(CATEGORIES.index(bad_cat))
                bad["entity_id"] = entity_name(ent)
                bad["text"] = make_caption(bad_cat, rng_extra)
                bad["fields"] = {**make_fields(bad_cat, rng_extra), "price": "n/a"}
                bad["label"] = bad_cat.label
                labels[rid] = bad_cat.label
                stream_records.append((ent, times[slot].timestamp()))
            lines.append(json.dumps(bad, ensure_ascii=False))
        (partial if kind in PARTIAL_KINDS else broken)[slot + 1] = kind

    # telemetry stream: ~P_STREAM_GAP of the kept records get no reading near their timestamp
    # (only records with no other record of their entity within _STREAM_GAP_ISOLATION_S, so that clearing
    # the readings around a gap record never takes away the readings next to another record)
    per_entity: dict[int, list[tuple[float, int]]] = {}
    for j, (e, ts) in enumerate(stream_records):
        per_entity.setdefault(e, []).append((ts, j))
    isolated: list[int] = []
    for recs_e in per_entity.values():
        recs_e.sort()
        for m, (ts, j) in enumerate(recs_e):
            before = ts - recs_e[m - 1][0] if m > 0 else math.inf
            after = recs_e[m + 1][0] - ts if m + 1 < len(recs_e) else math.inf
            if min(before, after) >= _STREAM_GAP_ISOLATION_S:
                isolated.append(j)
    isolated.sort()
    n_gap = min(int(round(P_STREAM_GAP * len(stream_records))), len(isolated))
    gap_idx = {isolated[int(j)] for j in rng_stream.choice(len(isolated), size=n_gap, replace=False)}
    stream = _telemetry_csv(
        rng_stream, n_entities, [(e, ts, j in gap_idx) for j, (e, ts) in enumerate(stream_records)]
    )
    _write_bytes(out_dir / STREAM_PATH, stream)

    tmp = out_dir / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(lines) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out_dir / MANIFEST_NAME)
    return DemoBatch(
        batch_dir=out_dir,
        batch_id=batch_id,
        n_lines=len(lines),
        n_records_expected_aligned=n_records + len(partial),
        broken=broken,
        labels=labels,
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
    "PARTIAL_KINDS",
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
