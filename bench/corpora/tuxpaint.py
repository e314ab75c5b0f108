"""Tux Paint stamps: real photo cut-outs with a caption, some with a sound effect, labelled by folder.

Source: Debian package ``tuxpaint-stamps-default`` (``usr/share/tuxpaint/stamps/``), GPL-2+,
"Tux Paint stamps, copyright 2002-2022 Bill Kendrick and the Tux Paint contributors".

Each stamp is ``<name>.png`` (or ``.svg``, skipped: the image decoder reads raster files) with
``<name>.txt`` (first line: the English caption, e.g. "A red kangaroo."), optionally ``<name>.ogg`` (the
sound effect, not the spoken ``_desc`` caption) and ``<name>.dat`` (stamp options). One record per PNG stamp (the ``_mirror`` /
``_flip`` PNGs are Tux Paint's pre-drawn mirrored copies of another stamp and are skipped):

- label: the top-level folder (animals, food, plants, seasonal, town, …);
- text: the English caption; image: the PNG; audio: the sound effect when there is one;
- fields (real, from the ``.dat`` file, Tux Paint's defaults when there is none): ``colorable``,
  ``tintable``, ``mirrorable``, ``flippable`` (0/1) and ``scale_pct`` (the default size in percent, or
  null).

By default the drawings are left out (every ``cartoon/`` folder and ``symbols/``, which hold clip-art and
glyphs rather than photos) and so are labels with fewer than 8 stamps (medical, naturalforces, people):
about 420 records in 12 classes, about 100 with a sound.

    python -m bench.corpora.tuxpaint --out data/landing/tuxpaint [--limit 600] [--include-drawings]
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.corpora.common import Item, builder_main, drop_small_labels, fetch_deb, stratified_subsample, write_batch

PACKAGE = "tuxpaint-stamps-default"
STAMPS = Path("usr/share/tuxpaint/stamps")
DRAWINGS = ("cartoon",)
DRAWING_LABELS = ("symbols",)
MIN_CLASS = 8
ALT_SUFFIXES = ("_mirror", "_flip")  # Tux Paint's pre-drawn mirrored copies of a stamp, not stamps


def caption(txt: Path) -> str | None:
    """The English caption: the first non-empty line without a ``lang=`` prefix."""
    if not txt.is_file():
        return None
    for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not re.match(r"^[A-Za-z_@]+(\.utf8)?=", line):
            return line
    return None


def stamp_fields(dat: Path) -> dict[str, float | int | None]:
    """The stamp's options as numbers (Tux Paint's defaults where the ``.dat`` file says nothing)."""
    words = dat.read_text(encoding="utf-8", errors="replace").split("\n") if dat.is_file() else []
    opts = [w.strip().lower() for w in words if w.strip()]
    scale = None
    for opt in opts:
        m = re.match(r"^scale\s*=?\s*([0-9.]+)\s*%$", opt)
        if m:
            scale = float(m.group(1))
    return {
        "colorable": int("colorable" in opts),
        "tintable": int("tintable" in opts or any(o.startswith("tinter") for o in opts)),
        "mirrorable": int("nomirror" not in opts),
        "flippable": int("noflip" not in opts),
        "scale_pct": scale,
    }


def record_id(rel: Path) -> str:
    return "tp-" + re.sub(r"[^A-Za-z0-9._-]+", "-", rel.with_suffix("").as_posix().replace("/", "-"))


def collect(stamps: Path, include_drawings: bool = False) -> list[Item]:
    """One item per PNG stamp under ``stamps`` (a folder of label folders)."""
    items = []
    for png in sorted(stamps.rglob("*.png")):
        rel = png.relative_to(stamps)
        label = rel.parts[0]
        if len(rel.parts) < 2 or png.stem.endswith(ALT_SUFFIXES):
            continue
        if not include_drawings and (label in DRAWING_LABELS or any(p in DRAWINGS for p in rel.parts[:-1])):
            continue
        sound = png.with_suffix(".ogg")
        items.append(Item(record_id=record_id(rel), label=label, text=caption(png.with_suffix(".txt")),
                          image=png, audio=sound if sound.is_file() else None,
                          fields=stamp_fields(png.with_suffix(".dat"))))
    return items


def build(out: Path, limit: int | None = 600, source: Path | None = None, include_drawings: bool = False,
          min_class: int = MIN_CLASS) -> dict:
    """Write the Tux Paint stamps corpus as a landing batch at ``out``."""
    root = Path(source) if source is not None else fetch_deb(PACKAGE)
    stamps = root / STAMPS if (root / STAMPS).is_dir() else root
    items = drop_small_labels(collect(stamps, include_drawings), min_class)
    summary = write_batch(out, stratified_subsample(items, limit))
    return {"corpus": "tuxpaint", "source": PACKAGE, **summary}


def _args(ap) -> None:
    ap.add_argument("--include-drawings", action="store_true", help="keep cartoon/ and symbols/ stamps")
    ap.add_argument("--min-class", type=int, default=MIN_CLASS, help="drop labels with fewer stamps")


if __name__ == "__main__":
    builder_main("tuxpaint", 600, build, _args)
