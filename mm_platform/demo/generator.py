"""Synthetic multimodal demo corpus: a product catalogue with customer feedback.

Six product categories. Each category's identity shows in both modalities, but each modality alone
confuses *different* pairs of categories, so only the fused view separates all six:

==============  ==================  ============================
category        caption topic       picture style
==============  ==================  ============================
mug             kitchen / drinks    warm discs (red/orange)
teapot          kitchen / drinks    cool stripes (blue/teal)
trail_shoe      outdoor / sport     cool stripes (blue/teal)
backpack        outdoor / sport     green checker + triangles
headphones      electronics / desk  green checker + triangles
desk_lamp       electronics / desk  warm discs (red/orange)
==============  ==================  ============================

Captions are built from templates + topic vocabulary + shared filler (shipping, price, stars...);
the product noun itself appears only sometimes. Pictures are drawn with PIL (96-128 px) with
jitter in position, size, rotation, colour and background noise; within a style the two categories
differ only by a subtle cue. On top of that: ~10% of records carry a caption or picture from a
random other category, and some records are text-only or image-only.

:func:`make_demo_batch` also mixes in deliberately broken lines (malformed JSON, missing/truncated/
non-image files, empty text, duplicate id, path escaping the batch), each with the rejection reason
the platform must report. Output is byte-for-byte deterministic for a given seed.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mm_platform.lib.manifest import MANIFEST_NAME, is_valid_batch_id

# --------------------------------------------------------------------------------------------------
# Category definitions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """One demo product category: its label, caption topic and picture style."""

    label: str
    noun: str  # product noun used in some captions
    topic: str  # key into _TOPICS (shared by two categories)
    style: str  # key into the picture styles (shared by two categories)
    variant: int  # 0/1: subtle visual cue distinguishing the two categories sharing a style


CATEGORIES: tuple[Category, ...] = (
    Category("mug", "mug", "kitchen", "discs", 0),
    Category("teapot", "teapot", "kitchen", "stripes", 0),
    Category("trail_shoe", "trail shoe", "outdoor", "stripes", 1),
    Category("backpack", "backpack", "outdoor", "checker", 0),
    Category("headphones", "headphones", "electronics", "checker", 1),
    Category("desk_lamp", "desk lamp", "electronics", "discs", 1),
)

# Fraction of records whose caption or picture comes from a random other category.
P_SWAP = 0.10
# Fraction of records that are text-only / image-only.
P_TEXT_ONLY = 0.03
P_IMAGE_ONLY = 0.03
# Probability that a caption names the product itself (the only category-specific text cue).
P_NOUN = 0.6
# Probability that a picture shows its own category's visual variant (else the variant of the other
# category sharing its style): the only category-specific picture cue.
P_VARIANT_CUE = 0.9

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
# Batch
# --------------------------------------------------------------------------------------------------

#: Expected rejection reason for each kind of deliberately broken line, in cycle order.
BROKEN_KINDS: tuple[str, ...] = (
    "malformed_json",
    "missing_file",
    "truncated_image",
    "unreadable_image",
    "empty_text",
    "duplicate_record_id",
    "path_outside_batch",
)


@dataclass(frozen=True)
class DemoBatch:
    """What :func:`make_demo_batch` wrote and what the platform should make of it."""

    batch_dir: Path
    batch_id: str
    n_lines: int  # non-blank manifest lines (good + broken)
    n_records_expected_aligned: int  # records that survive validation (all good ones)
    broken: dict[int, str]  # 1-based manifest line number -> expected rejection reason
    labels: dict[str, str]  # record_id -> ground-truth label (good records only)


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def make_demo_batch(
    out_dir: Path, n_records: int = 240, seed: int = 0, n_broken: int = 7, id_prefix: str = "demo"
) -> DemoBatch:
    """Write a demo landing batch into ``out_dir`` (the batch folder; batch id = its name).

    ``n_records`` good records (labels balanced over :data:`CATEGORIES`), plus ``n_broken`` broken
    lines cycling through :data:`BROKEN_KINDS`, inserted at seeded positions. Pictures go to
    ``out_dir/images/*.png``; ``records.jsonl`` is written last (temp file + ``os.replace``) so the
    batch only becomes complete once everything else is on disk. Same arguments -> same bytes.
    """
    out_dir = Path(out_dir)
    batch_id = out_dir.name
    if not is_valid_batch_id(batch_id):
        raise ValueError(f"batch folder name {batch_id!r} is not a valid batch id")
    if n_records < 1 or n_broken < 0:
        raise ValueError("n_records must be >= 1 and n_broken >= 0")
    rng = np.random.default_rng(seed)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    n_cat = len(CATEGORIES)

    cat_idx = np.arange(n_records) % n_cat
    rng.shuffle(cat_idx)
    t0 = datetime(2024, 3, 1, 8, 0, 0, tzinfo=UTC) + timedelta(days=seed % 97)
    step_s = rng.integers(20, 600, size=n_records + n_broken)
    times = [t0 + timedelta(seconds=int(s)) for s in np.cumsum(step_s)]

    good: list[dict[str, object]] = []
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
        rec: dict[str, object] = {"record_id": rid, "timestamp": ""}
        if has_text:
            rec["text"] = caption
        if has_image:
            rel = f"images/{rid}.png"
            _write_bytes(out_dir / rel, _png_bytes(picture))
            rec["image"] = rel
        rec["label"] = cat.label
        good.append(rec)
        labels[rid] = cat.label

    # broken lines
    positions = sorted(int(p) for p in rng.choice(n_records + n_broken, size=n_broken, replace=False))
    line_kinds: dict[int, str] = {pos: BROKEN_KINDS[j % len(BROKEN_KINDS)] for j, pos in enumerate(positions)}
    lines: list[str] = []
    broken: dict[int, str] = {}
    good_iter = iter(good)
    emitted_ids: list[str] = []
    bj = 0
    for slot in range(n_records + n_broken):
        ts = times[slot].isoformat().replace("+00:00", "Z")
        if slot not in line_kinds:
            rec = next(good_iter)
            rec["timestamp"] = ts
            lines.append(json.dumps(rec, ensure_ascii=False, sort_keys=False))
            emitted_ids.append(str(rec["record_id"]))
            continue
        kind = line_kinds[slot]
        rid = f"{id_prefix}-{n_records + bj:05d}"
        bj += 1
        if kind == "duplicate_record_id" and not emitted_ids:
            kind = "empty_text"  # nothing to duplicate yet: fall back deterministically
        bad: dict[str, object] = {"record_id": rid, "timestamp": ts}
        if kind == "malformed_json":
            line = json.dumps({"record_id": rid, "timestamp": ts, "text": "Lovely product, but the"})[:-12]
            lines.append(line)
        else:
            if kind == "missing_file":
                bad["image"] = f"images/{rid}-missing.png"
            elif kind == "truncated_image":
                data = _png_bytes(make_picture(CATEGORIES[bj % n_cat], rng))
                _write_bytes(out_dir / f"images/{rid}.png", data[: len(data) // 2])
                bad["image"] = f"images/{rid}.png"
            elif kind == "unreadable_image":
                _write_bytes(out_dir / f"images/{rid}.png", b"this is a text file, not a PNG image\n")
                bad["image"] = f"images/{rid}.png"
            elif kind == "empty_text":
                bad["text"] = "   \n\t "
            elif kind == "duplicate_record_id":
                bad["record_id"] = emitted_ids[int(rng.integers(len(emitted_ids)))]
                bad["text"] = make_caption(CATEGORIES[bj % n_cat], rng)
            elif kind == "path_outside_batch":
                bad["image"] = "../x.png"
            lines.append(json.dumps(bad, ensure_ascii=False))
        broken[slot + 1] = kind

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
        n_records_expected_aligned=n_records,
        broken=broken,
        labels=labels,
    )


__all__ = ["BROKEN_KINDS", "CATEGORIES", "Category", "DemoBatch", "make_caption", "make_demo_batch", "make_picture"]
