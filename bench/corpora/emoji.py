"""Twemoji: emoji pictures with their CLDR names and keywords, labelled by emoji group.

Sources (npm): ``emoji-datasource-twitter`` (the Twemoji PNGs, 64 px, and ``emoji.json``: category, Unicode
version, skin-tone variations; data MIT, Copyright (c) 2013 Cal Henderson; graphics CC-BY 4.0,
"Twemoji by Twitter, Inc and other contributors", https://github.com/twitter/twemoji) and
``emojibase-data`` (``en/data.json``: the CLDR annotation name and keywords; MIT, Miles Johnson; the
annotations come from Unicode CLDR, Unicode licence).

One record per emoji that has a Twitter image (skin-tone variants are not separate records):

- label: the emoji group (Smileys & Emotion, People & Body, Animals & Nature, Food & Drink, Travel & Places,
  Activities, Objects, Symbols, Flags; the 5 "Component" emoji are left out);
- text: "<CLDR name>: <keywords>" (e.g. "raised hand: 5, five, hand, high, raised, stop");
- image: the 64 px Twemoji PNG;
- fields (real, from emoji.json): ``unicode_version`` (the Emoji version that added it), ``skin_tones``
  (0/1), ``codepoints`` (how many code points), ``vendor_images`` (how many of the Apple, Google,
  Facebook, Twitter sets draw it). The sort order is left out on purpose: emoji are sorted by group, so
  it is the label in disguise.

About 1,900 emoji; ``--limit`` (default 600) keeps a deterministic sample with each group's share.

    python -m bench.corpora.emoji --out data/landing/emoji [--limit 600]
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.corpora.common import Item, builder_main, fetch_npm, stratified_subsample, write_batch

IMAGES = "emoji-datasource-twitter"
KEYWORDS = "emojibase-data"
SKIP_GROUPS = ("Component",)
VENDORS = ("has_img_apple", "has_img_google", "has_img_facebook", "has_img_twitter")


def _key(hexcode: str) -> str:
    return "-".join(p for p in hexcode.upper().split("-") if p != "FE0F")


def annotations(emojibase: Path | None) -> dict[str, tuple[str, list[str]]]:
    """hexcode (without FE0F) -> (CLDR name, keywords) from ``emojibase-data/en/data.json``."""
    path = emojibase / "en" / "data.json" if emojibase is not None else None
    if path is None or not path.is_file():
        return {}
    return {_key(e["hexcode"]): (e.get("label") or "", list(e.get("tags") or []))
            for e in json.loads(path.read_text(encoding="utf-8"))}


def emoji_text(entry: dict, notes: dict[str, tuple[str, list[str]]]) -> str:
    name, tags = notes.get(_key(entry["unified"]), ("", []))
    name = name or (entry.get("name") or entry.get("short_name") or "").lower()
    return f"{name}: {', '.join(tags)}" if tags else name


def emoji_fields(entry: dict) -> dict[str, float | int | None]:
    version = entry.get("added_in")
    try:
        version = float(version) if version is not None else None
    except ValueError:
        version = None
    return {
        "unicode_version": version,
        "skin_tones": int(bool(entry.get("skin_variations"))),
        "codepoints": len(_key(entry["unified"]).split("-")),
        "vendor_images": sum(bool(entry.get(v)) for v in VENDORS),
    }


def collect(datasource: Path, emojibase: Path | None) -> list[Item]:
    """One item per emoji of ``emoji.json`` with a Twitter PNG on disk."""
    notes = annotations(emojibase)
    img_dir = datasource / "img" / "twitter" / "64"
    items = []
    for entry in json.loads((datasource / "emoji.json").read_text(encoding="utf-8")):
        png = img_dir / str(entry.get("image", ""))
        if entry.get("category") in SKIP_GROUPS or not entry.get("has_img_twitter") or not png.is_file():
            continue
        rid = "emoji-" + re.sub(r"[^A-Za-z0-9._-]+", "-", entry["unified"].lower())
        items.append(Item(record_id=rid, label=entry["category"], text=emoji_text(entry, notes) or None,
                          image=png, fields=emoji_fields(entry)))
    return items


def build(out: Path, limit: int | None = 600, source: Path | None = None, keywords: Path | None = None) -> dict:
    """Write the Twemoji corpus as a landing batch at ``out``."""
    datasource = Path(source) if source is not None else fetch_npm(IMAGES)
    emojibase = Path(keywords) if keywords is not None else (None if source is not None else fetch_npm(KEYWORDS))
    summary = write_batch(out, stratified_subsample(collect(datasource, emojibase), limit))
    return {"corpus": "emoji", "source": f"{IMAGES} + {KEYWORDS}", **summary}


def _args(ap) -> None:
    ap.add_argument("--keywords", type=Path, default=None,
                    help="an unpacked emojibase-data package (with --source; fetched otherwise)")


if __name__ == "__main__":
    builder_main("emoji", 600, build, _args)
