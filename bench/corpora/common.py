"""What every corpus builder shares: the package cache, fetching a package without root, deterministic
stratified subsampling, and writing a landing batch (media first, ``records.jsonl`` last, via a rename)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mm_platform.lib.landing.manifest import MANIFEST_NAME


@dataclass
class Item:
    """One record of a corpus before it is written: media are paths in the unpacked package."""

    record_id: str
    label: str
    text: str | None = None
    image: Path | None = None
    audio: Path | None = None
    fields: dict[str, float | int | str | None] = field(default_factory=dict)


def cache_dir() -> Path:
    """``$MM_BENCH_CACHE`` or ``~/.cache/mm_platform/bench`` (created)."""
    root = Path(os.environ.get("MM_BENCH_CACHE") or Path.home() / ".cache" / "mm_platform" / "bench")
    root.mkdir(parents=True, exist_ok=True)
    return root


def fetch_deb(package: str) -> Path:
    """Download a Debian package with ``apt-get download`` (no root) and unpack it with ``dpkg-deb -x``
    into the cache once; returns the unpacked root."""
    cache = cache_dir()
    dest = cache / package
    if (dest / ".complete").exists():
        return dest
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=cache, check=True)
        debs = sorted(cache.glob(f"{package}_*.deb"))
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(dest)], check=True)
    (dest / ".complete").write_text(debs[-1].name)
    return dest


def fetch_npm(package: str) -> Path:
    """Download an npm package tarball with ``npm pack`` and unpack it into the cache once; returns the
    unpacked ``package/`` folder."""
    cache = cache_dir()
    dest = cache / package.replace("/", "+").lstrip("@")
    if (dest / ".complete").exists():
        return dest / "package"
    stem = package.lstrip("@").replace("/", "-")
    tgzs = sorted(cache.glob(f"{stem}-[0-9]*.tgz"))
    if not tgzs:
        subprocess.run(["npm", "pack", package, "--pack-destination", str(cache)], cwd=cache, check=True,
                       stdout=subprocess.DEVNULL)
        tgzs = sorted(cache.glob(f"{stem}-[0-9]*.tgz"))
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(tgzs[-1]) as tf:
        tf.extractall(dest, filter="data")
    (dest / ".complete").write_text(tgzs[-1].name)
    return dest / "package"


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def stratified_subsample(items: list[Item], limit: int | None) -> list[Item]:
    """At most ``limit`` items, each label keeping its share of the corpus: within a label items are ranked
    by a hash of their id (deterministic, independent of file order), and the items with the lowest
    rank/label-size are taken. Returned sorted by record id."""
    if limit is None or limit >= len(items):
        return sorted(items, key=lambda it: it.record_id)
    by_label: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_label[it.label].append(it)
    keyed = []
    for members in by_label.values():
        members.sort(key=lambda it: _hash(it.record_id))
        keyed += [((rank + 0.5) / len(members), _hash(it.record_id), it) for rank, it in enumerate(members)]
    keyed.sort(key=lambda t: (t[0], t[1]))
    return sorted((it for _, _, it in keyed[:limit]), key=lambda it: it.record_id)


def drop_small_labels(items: list[Item], min_count: int) -> list[Item]:
    """Items whose label has at least ``min_count`` members (tiny classes make NMI noisy, not harder)."""
    counts = Counter(it.label for it in items)
    return [it for it in items if counts[it.label] >= min_count]


def _copy_media(src: Path, out_dir: Path, sub: str, record_id: str) -> str:
    rel = f"{sub}/{record_id}{src.suffix.lower()}"
    (out_dir / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out_dir / rel)
    return rel


def write_batch(out_dir: Path, items: Iterable[Item]) -> dict[str, object]:
    """Write a landing batch: media copied under ``images/`` and ``audio/``, then ``records.jsonl`` (one
    record per item, the label where the demo puts it) through a temp file and a rename, so a sensor never
    sees half a batch. Returns a summary (records, labels, modality counts)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines, labels, present = [], Counter(), Counter()
    for it in items:
        rec: dict[str, object] = {"record_id": it.record_id}
        if it.text:
            rec["text"] = it.text
            present["text"] += 1
        if it.image is not None:
            rec["image"] = _copy_media(it.image, out_dir, "images", it.record_id)
            present["image"] += 1
        if it.audio is not None:
            rec["audio"] = _copy_media(it.audio, out_dir, "audio", it.record_id)
            present["audio"] += 1
        if it.fields:
            rec["fields"] = it.fields
            present["tabular"] += 1
        rec["label"] = it.label
        labels[it.label] += 1
        lines.append(json.dumps(rec, ensure_ascii=False, sort_keys=True))
    tmp = out_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, out_dir / MANIFEST_NAME)
    return {"records": len(lines), "labels": dict(sorted(labels.items())), "modalities": dict(present)}


def builder_main(name: str, default_limit: int | None, build: Callable[..., dict], add_args=None) -> None:
    """The command line every builder shares: ``--out DIR --limit N [--source DIR]``."""
    ap = argparse.ArgumentParser(prog=f"python -m bench.corpora.{name}", description=build.__doc__)
    ap.add_argument("--out", type=Path, required=True, help="batch folder to write (e.g. data/landing/NAME)")
    ap.add_argument("--limit", type=int, default=default_limit,
                    help=f"at most N records, stratified by label (default {default_limit}; 0 = all)")
    ap.add_argument("--source", type=Path, default=None,
                    help="an already unpacked package root instead of fetching it into $MM_BENCH_CACHE")
    if add_args:
        add_args(ap)
    args = vars(ap.parse_args())
    if args["limit"] == 0:
        args["limit"] = None
    summary = build(**args)
    print(json.dumps(summary, indent=1))
