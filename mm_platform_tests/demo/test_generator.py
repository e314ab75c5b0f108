"""Tests for mm_platform.demo.generator: the synthetic multimodal demo batch.

Everything is real: batches are written into ``tmp_path`` and run through the platform's own manifest
parser and media validation (``parse_manifest`` / ``validate_batch`` / ``check_record_media``).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm_platform.demo.generator import (
    BROKEN_KINDS,
    CATEGORIES,
    DemoBatch,
    make_caption,
    make_demo_batch,
    make_picture,
)
from mm_platform.lib.manifest import (
    MANIFEST_NAME,
    check_record_media,
    list_complete_batches,
    parse_manifest,
    validate_batch,
)

N_RECORDS = 48


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def manifest_lines(batch: DemoBatch) -> list[str]:
    return (batch.batch_dir / MANIFEST_NAME).read_text(encoding="utf-8").split("\n")[:-1]


def json_lines(batch: DemoBatch) -> dict[int, dict]:
    """1-based line number -> parsed object, for every line that is valid JSON."""
    out: dict[int, dict] = {}
    for i, line in enumerate(manifest_lines(batch), start=1):
        try:
            out[i] = json.loads(line)
        except json.JSONDecodeError:
            continue
    return out


def expected_kind_sequence(batch: DemoBatch) -> list[str]:
    """Broken kinds in line order: BROKEN_KINDS cycled, except that a duplicate with no good line
    before it deterministically falls back to empty_text."""
    out = []
    for j, ln in enumerate(sorted(batch.broken)):
        kind = BROKEN_KINDS[j % len(BROKEN_KINDS)]
        if kind == "duplicate_record_id" and not any(g not in batch.broken for g in range(1, ln)):
            kind = "empty_text"
        out.append(kind)
    return out


def assert_batch_contract(batch: DemoBatch) -> None:
    """Every broken line gets exactly its reason; every other line is a valid, fully surviving record."""
    parsed = parse_manifest(batch.batch_dir)
    vb = validate_batch(batch.batch_dir)
    assert parsed.n_lines == vb.n_lines == batch.n_lines == len(manifest_lines(batch))
    assert vb.batch_id == batch.batch_id == batch.batch_dir.name

    by_line: dict[int, set[str]] = {}
    for r in vb.rejections:
        by_line.setdefault(r.line_number, set()).add(r.reason)
    assert by_line == {ln: {kind} for ln, kind in batch.broken.items()}
    # one rejection per broken line, none duplicated between parse and media checks
    assert len(vb.rejections) == len(batch.broken)

    # parse-level vs media-level split is consistent with check_record_media
    parse_rej = {r.line_number: r.reason for r in parsed.rejections}
    for rec in parsed.records:
        chk = check_record_media(batch.batch_dir, rec)
        if rec.line_number in batch.broken:
            assert chk.record is None
            assert [r.reason for r in chk.rejections] == [batch.broken[rec.line_number]]
        else:
            assert chk.rejections == [] and chk.record == rec
    for ln, reason in parse_rej.items():
        assert batch.broken[ln] == reason
    media_kinds = {"missing_file", "truncated_image", "unreadable_image"}
    for ln, kind in batch.broken.items():
        assert (ln in parse_rej) == (kind not in media_kinds), (ln, kind)

    good_lines = set(range(1, batch.n_lines + 1)) - set(batch.broken)
    assert {r.line_number for r in vb.records} == good_lines
    assert len(vb.records) == batch.n_records_expected_aligned
    assert {r.record_id: r.label for r in vb.records} == batch.labels
    for r in vb.records:
        assert r.op == "upsert" and r.timestamp is not None
        assert r.modalities in (("text", "image"), ("text",), ("image",))
        if r.image is not None:
            assert r.record_id in vb.images
    assert set(vb.images) == {r.record_id for r in vb.records if r.image is not None}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoBatch:
    return make_demo_batch(tmp_path_factory.mktemp("d") / "demo-batch", n_records=N_RECORDS, seed=7)


# --------------------------------------------------------------------------------------------------
# contract with the platform's validation
# --------------------------------------------------------------------------------------------------


def test_default_batch_contract(demo: DemoBatch) -> None:
    assert demo.batch_id == "demo-batch"
    assert demo.n_lines == N_RECORDS + 7
    assert demo.n_records_expected_aligned == N_RECORDS
    assert sorted(demo.broken.values()) == sorted(BROKEN_KINDS)  # 7 broken lines, one of each kind
    assert [demo.broken[k] for k in sorted(demo.broken)] == expected_kind_sequence(demo)
    assert_batch_contract(demo)


@pytest.mark.parametrize(("seed", "n_records", "n_broken"), [(0, 30, 3), (3, 20, 9), (11, 12, 1)])
def test_contract_other_configs(tmp_path: Path, seed: int, n_records: int, n_broken: int) -> None:
    b = make_demo_batch(tmp_path / "b", n_records=n_records, seed=seed, n_broken=n_broken)
    assert len(b.broken) == n_broken
    assert b.n_lines == n_records + n_broken
    assert [b.broken[k] for k in sorted(b.broken)] == expected_kind_sequence(b)
    assert_batch_contract(b)


def test_complete_batch_listed(demo: DemoBatch) -> None:
    (info,) = list_complete_batches(demo.batch_dir.parent)
    assert info.batch_id == demo.batch_id
    assert info.manifest_path == demo.batch_dir / MANIFEST_NAME


# --------------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------------


def test_deterministic_same_seed(tmp_path: Path) -> None:
    a = make_demo_batch(tmp_path / "x" / "b1", n_records=24, seed=5)
    b = make_demo_batch(tmp_path / "y" / "b1", n_records=24, seed=5)
    ta, tb = tree_bytes(a.batch_dir), tree_bytes(b.batch_dir)
    assert ta.keys() == tb.keys()
    assert ta == tb  # records.jsonl and every image byte-for-byte identical
    assert any(k.startswith("images/") for k in ta)
    assert (a.broken, a.labels, a.n_lines) == (b.broken, b.labels, b.n_lines)


def test_deterministic_independent_of_folder_name(tmp_path: Path) -> None:
    a = make_demo_batch(tmp_path / "first", n_records=12, seed=2)
    b = make_demo_batch(tmp_path / "second", n_records=12, seed=2)
    assert tree_bytes(a.batch_dir) == tree_bytes(b.batch_dir)


def test_regenerating_in_place_is_identical(tmp_path: Path) -> None:
    a = make_demo_batch(tmp_path / "b1", n_records=12, seed=4)
    before = tree_bytes(a.batch_dir)
    make_demo_batch(tmp_path / "b1", n_records=12, seed=4)
    assert tree_bytes(a.batch_dir) == before


def test_different_seed_differs(tmp_path: Path) -> None:
    a = make_demo_batch(tmp_path / "x" / "b1", n_records=24, seed=5)
    b = make_demo_batch(tmp_path / "y" / "b1", n_records=24, seed=6)
    ma = (a.batch_dir / MANIFEST_NAME).read_bytes()
    mb = (b.batch_dir / MANIFEST_NAME).read_bytes()
    assert ma != mb
    ta, tb = tree_bytes(a.batch_dir), tree_bytes(b.batch_dir)
    common = [k for k in ta.keys() & tb.keys() if k.startswith("images/")]
    assert common
    assert sum(ta[k] != tb[k] for k in common) >= len(common) * 0.9
    texts_a = {o.get("text") for o in json_lines(a).values()} - {None}
    texts_b = {o.get("text") for o in json_lines(b).values()} - {None}
    assert texts_a != texts_b


def test_make_caption_and_picture_deterministic() -> None:
    cat = CATEGORIES[0]
    c1 = [make_caption(cat, np.random.default_rng(1)) for _ in range(2)]
    assert c1[0] == c1[1]
    p1 = make_picture(cat, np.random.default_rng(1))
    p2 = make_picture(cat, np.random.default_rng(1))
    assert p1.tobytes() == p2.tobytes()


# --------------------------------------------------------------------------------------------------
# files on disk
# --------------------------------------------------------------------------------------------------


def test_manifest_written_last_and_no_temp_left(demo: DemoBatch) -> None:
    entries = sorted(p.name for p in demo.batch_dir.iterdir())
    assert entries == ["images", MANIFEST_NAME]
    assert not list(demo.batch_dir.rglob("*.tmp"))
    assert not [p for p in demo.batch_dir.rglob(".*")]
    m_ns = (demo.batch_dir / MANIFEST_NAME).stat().st_mtime_ns
    others = [
        p.stat().st_mtime_ns for p in demo.batch_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
    ]
    assert others and m_ns >= max(others)


def test_manifest_format(demo: DemoBatch) -> None:
    raw = (demo.batch_dir / MANIFEST_NAME).read_bytes()
    assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
    assert b"\r" not in raw
    raw.decode("utf-8")  # valid UTF-8 throughout
    assert all(line.strip() for line in manifest_lines(demo))  # no blank lines


def test_every_image_file_is_referenced(demo: DemoBatch) -> None:
    refs = {o["image"] for o in json_lines(demo).values() if "image" in o}
    files = {str(p.relative_to(demo.batch_dir)) for p in (demo.batch_dir / "images").iterdir()}
    missing_kind = {ln for ln, k in demo.broken.items() if k == "missing_file"}
    assert files <= refs
    assert refs - files == {json_lines(demo)[ln]["image"] for ln in missing_kind} | {"../x.png"}


def test_images_are_rgb_pngs_96_to_128(demo: DemoBatch) -> None:
    vb = validate_batch(demo.batch_dir)
    assert len(vb.images) >= N_RECORDS * 0.7
    sizes = set()
    for info in vb.images.values():
        assert info.format == "PNG" and info.mode == "RGB"
        assert 96 <= info.width <= 128 and 96 <= info.height <= 128
        with Image.open(info.path) as im:
            assert im.format == "PNG" and im.mode == "RGB"
        sizes.add(info.width)
    assert len(sizes) > 3  # sizes are jittered


def test_make_picture_properties() -> None:
    rng = np.random.default_rng(0)
    for cat in CATEGORIES:
        for _ in range(3):
            im = make_picture(cat, rng)
            assert im.mode == "RGB"
            assert 96 <= im.width <= 128 and 96 <= im.height <= 128


# --------------------------------------------------------------------------------------------------
# records: labels, ids, timestamps, captions
# --------------------------------------------------------------------------------------------------


def test_labels_balanced(demo: DemoBatch) -> None:
    counts = Counter(demo.labels.values())
    assert set(counts) == {c.label for c in CATEGORIES}
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == N_RECORDS


@pytest.mark.parametrize("n_records", [1, 5, 13])
def test_labels_balanced_small(tmp_path: Path, n_records: int) -> None:
    b = make_demo_batch(tmp_path / "b", n_records=n_records, n_broken=0, seed=1)
    counts = Counter(b.labels.values())
    assert sum(counts.values()) == n_records
    per_cat = [counts.get(c.label, 0) for c in CATEGORIES]
    assert max(per_cat) - min(per_cat) <= 1, counts
    assert_batch_contract(b)


def test_labels_written_on_good_lines(demo: DemoBatch) -> None:
    objs = json_lines(demo)
    for ln, o in objs.items():
        if ln not in demo.broken:
            assert o["label"] == demo.labels[o["record_id"]]
            assert o["label"] in {c.label for c in CATEGORIES}


def test_record_ids_unique_except_duplicate(demo: DemoBatch) -> None:
    objs = json_lines(demo)
    ids = [o["record_id"] for o in objs.values()]
    dupes = Counter(ids) - Counter(set(ids))
    dup_lines = [ln for ln, k in demo.broken.items() if k == "duplicate_record_id"]
    assert len(dup_lines) == 1
    dup_id = objs[dup_lines[0]]["record_id"]
    assert dupes == Counter({dup_id: 1})
    # the duplicated id belongs to a good record on an earlier line
    first = min(ln for ln, o in objs.items() if o["record_id"] == dup_id)
    assert first < dup_lines[0] and first not in demo.broken
    good_ids = [objs[ln]["record_id"] for ln in sorted(objs) if ln not in demo.broken]
    assert good_ids == [f"demo-{i:05d}" for i in range(N_RECORDS)]
    assert set(good_ids) == set(demo.labels)


def test_id_prefix(tmp_path: Path) -> None:
    b = make_demo_batch(tmp_path / "b", n_records=6, n_broken=2, seed=0, id_prefix="shop7")
    assert all(rid.startswith("shop7-") for rid in b.labels)
    assert all(o["record_id"].startswith("shop7-") for o in json_lines(b).values())
    assert_batch_contract(b)


def test_timestamps_strictly_increasing(demo: DemoBatch) -> None:
    parsed = parse_manifest(demo.batch_dir)
    ts = [(r.line_number, r.timestamp) for r in parsed.records]
    assert all(t is not None for _, t in ts)
    assert all(a[1] < b[1] for a, b in itertools.pairwise(ts))
    # also across every JSON-parseable line (broken ones included), as raw strings in Z form
    raw = [o["timestamp"] for _, o in sorted(json_lines(demo).items())]
    assert all(s.endswith("Z") for s in raw)
    assert raw == sorted(raw) and len(set(raw)) == len(raw)


def test_captions_vary(demo: DemoBatch) -> None:
    vb = validate_batch(demo.batch_dir)
    texts = [r.text for r in vb.records if r.text is not None]
    assert len(texts) >= N_RECORDS * 0.7
    assert len(set(texts)) >= 0.9 * len(texts)
    words = Counter(w for t in texts for w in t.lower().split())
    assert len(words) > 80


def test_make_caption_varies_and_is_clean() -> None:
    rng = np.random.default_rng(3)
    for cat in CATEGORIES:
        caps = [make_caption(cat, rng) for _ in range(20)]
        assert len(set(caps)) >= 15
        for c in caps:
            assert c == c.strip() and c and "{" not in c and "}" not in c and "  " not in c


# --------------------------------------------------------------------------------------------------
# broken lines
# --------------------------------------------------------------------------------------------------


def test_no_broken_lines(tmp_path: Path) -> None:
    b = make_demo_batch(tmp_path / "clean", n_records=18, n_broken=0, seed=9)
    assert b.broken == {}
    assert b.n_lines == 18
    vb = validate_batch(b.batch_dir)
    assert vb.rejections == []
    assert len(vb.records) == 18 == b.n_records_expected_aligned
    assert_batch_contract(b)


def test_broken_kinds_cycle(tmp_path: Path) -> None:
    n_broken = 2 * len(BROKEN_KINDS) + 3
    b = make_demo_batch(tmp_path / "many", n_records=30, n_broken=n_broken, seed=2)
    assert len(b.broken) == n_broken
    seq = [b.broken[k] for k in sorted(b.broken)]
    assert seq == expected_kind_sequence(b)
    counts = Counter(seq)
    assert set(counts) == set(BROKEN_KINDS)
    assert_batch_contract(b)


def test_duplicate_falls_back_when_nothing_to_duplicate(tmp_path: Path) -> None:
    """With 1 good record and 6 broken lines, some seed puts the duplicate before the good line."""
    for seed in range(200):
        b = make_demo_batch(tmp_path / f"s{seed}", n_records=1, n_broken=6, seed=seed)
        if "duplicate_record_id" not in b.broken.values():
            break
    else:
        pytest.fail("no seed placed the duplicate before every good line")
    seq = [b.broken[k] for k in sorted(b.broken)]
    assert seq == expected_kind_sequence(b)
    assert seq[5] == "empty_text"
    assert_batch_contract(b)


# --------------------------------------------------------------------------------------------------
# argument validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("ok", {"n_records": 0}),
        ("ok", {"n_records": -3}),
        ("ok", {"n_broken": -1}),
        ("has space", {}),
        ("bad:name", {}),
        ("é", {}),
    ],
)
def test_invalid_arguments(tmp_path: Path, name: str, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_demo_batch(tmp_path / name, **kwargs)
    assert not (tmp_path / name).exists()  # validated before anything is written
