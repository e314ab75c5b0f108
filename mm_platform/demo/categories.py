"""Demo categories and the corpus-wide knobs: each category's per-modality profile, the pairs each
modality alone confuses, and the noise/stream probabilities (see :mod:`mm_platform.demo.generator`)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations


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
