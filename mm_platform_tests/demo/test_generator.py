"""Tests for mm_platform.demo.generator: the synthetic multimodal demo batch.

Everything is real: batches are written into ``tmp_path`` and run through the platform's own manifest
parser and media validation (``parse_manifest`` / ``validate_batch`` / ``check_record_media``), and the
audio/field reasons found only when decoding through ``mm_platform.lib.media.audio`` / ``mm_platform.lib.features.tabular``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from PIL import Image

from mm_platform.demo.generator import (
    AUDIO_FORMATS,
    AUDIO_SAMPLE_RATE,
    BROKEN_KINDS,
    CATEGORIES,
    CONFUSED_PAIRS,
    DEMO_STREAM_TOLERANCE,
    P_ALT_AUDIO_FORMAT,
    P_FIELD_NULL,
    P_NO_AUDIO,
    P_NO_FIELDS,
    P_STREAM_GAP,
    PARTIAL_KINDS,
    STREAM_COLUMNS,
    STREAM_PATH,
    DemoBatch,
    audio_bytes,
    entity_category,
    make_caption,
    make_demo_batch,
    make_fields,
    make_picture,
    make_sound,
)
from mm_platform.lib.landing.manifest import (
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


#: Reasons the platform reports only when it decodes the audio (``mm_platform.lib.media.audio.load_audio``) or
#: types the fields against the batch (``mm_platform.lib.features.tabular``): manifest validation
#: (``validate_batch``) still yields a record for those lines, without a rejection.
DECODE_KINDS = frozenset({"silent_audio", "invalid_field_value"})
#: Reasons found by ``check_record_media`` (file checks) rather than by ``parse_manifest``.
MEDIA_KINDS = frozenset({"missing_file", "truncated_image", "unreadable_image", "unreadable_audio"})


def all_kinds(batch: DemoBatch) -> dict[int, str]:
    """Line -> expected reason, over broken lines (no record) and partial lines (record kept)."""
    assert not set(batch.broken) & set(batch.partial)
    return dict(sorted({**batch.broken, **batch.partial}.items()))


def expected_kind_sequence(batch: DemoBatch) -> list[str]:
    """Broken kinds in line order: BROKEN_KINDS cycled, except that a duplicate with no good line
    before it deterministically falls back to empty_text."""
    kinds = all_kinds(batch)
    out = []
    for j, ln in enumerate(kinds):
        kind = BROKEN_KINDS[j % len(BROKEN_KINDS)]
        if kind == "duplicate_record_id" and not any(g not in kinds for g in range(1, ln)):
            kind = "empty_text"
        out.append(kind)
    return out


def assert_batch_contract(batch: DemoBatch) -> None:
    """Every broken line gets exactly its reason and no record; every partial line its reason and a
    record; every other line is a valid, fully surviving record (manifest validation level: the
    DECODE_KINDS are checked in test_decode_level_reasons)."""
    parsed = parse_manifest(batch.batch_dir)
    vb = validate_batch(batch.batch_dir)
    assert parsed.n_lines == vb.n_lines == batch.n_lines == len(manifest_lines(batch))
    assert vb.batch_id == batch.batch_id == batch.batch_dir.name
    assert set(batch.broken.values()).isdisjoint(PARTIAL_KINDS) and set(batch.partial.values()) <= PARTIAL_KINDS
    expected = {ln: kind for ln, kind in all_kinds(batch).items() if kind not in DECODE_KINDS}
    decode_only = {ln for ln, kind in batch.broken.items() if kind in DECODE_KINDS}  # a record until decoded

    by_line: dict[int, set[str]] = {}
    for r in vb.rejections:
        by_line.setdefault(r.line_number, set()).add(r.reason)
    assert by_line == {ln: {kind} for ln, kind in expected.items()}
    # one rejection per broken line, none duplicated between parse and media checks
    assert len(vb.rejections) == len(expected)

    # parse-level vs media-level split is consistent with check_record_media
    parse_rej = {r.line_number: r.reason for r in parsed.rejections}
    for rec in parsed.records:
        chk = check_record_media(batch.batch_dir, rec)
        if rec.line_number in expected and rec.line_number in batch.broken:
            assert chk.record is None
            assert [r.reason for r in chk.rejections] == [batch.broken[rec.line_number]]
        else:
            assert chk.rejections == [] and chk.record == rec
    for ln, reason in parse_rej.items():
        assert expected[ln] == reason
    for ln, kind in expected.items():
        assert (ln in parse_rej) == (kind not in MEDIA_KINDS), (ln, kind)

    record_lines = set(range(1, batch.n_lines + 1)) - (set(batch.broken) - decode_only)
    assert {r.line_number for r in vb.records} == record_lines
    assert len(vb.records) == batch.n_records_expected_aligned + len(decode_only)
    assert {r.record_id: r.label for r in vb.records if r.line_number not in decode_only} == batch.labels
    for r in vb.records:
        assert r.op == "upsert" and r.timestamp is not None
        if r.line_number in decode_only:
            assert r.modalities == ("audio",)
        elif r.line_number in batch.partial:
            assert r.modalities == ("text", "fields") and r.entity_id is not None
        else:  # good record: text and/or image, plus audio and fields most of the time
            assert r.modalities in {
                base + extra
                for base in (("text", "image"), ("text",), ("image",))
                for extra in ((), ("audio",), ("fields",), ("audio", "fields"))
            }
            assert r.entity_id is not None and r.entity_id.startswith("dev-")
        if r.image is not None:
            assert r.record_id in vb.images
        if r.audio is not None:
            assert r.record_id in vb.audio
    assert set(vb.images) == {r.record_id for r in vb.records if r.image is not None}
    assert set(vb.audio) == {r.record_id for r in vb.records if r.audio is not None}


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
    assert sorted(demo.broken.values()) == sorted(BROKEN_KINDS[:7])  # 7 broken lines, one of each old kind
    assert demo.partial == {}
    assert [demo.broken[k] for k in sorted(demo.broken)] == expected_kind_sequence(demo)
    assert_batch_contract(demo)


@pytest.mark.parametrize(("seed", "n_records", "n_broken"), [(0, 30, 3), (3, 20, 9), (11, 12, 1)])
def test_contract_other_configs(tmp_path: Path, seed: int, n_records: int, n_broken: int) -> None:
    b = make_demo_batch(tmp_path / "b", n_records=n_records, seed=seed, n_broken=n_broken)
    assert len(b.broken) + len(b.partial) == n_broken
    assert b.n_lines == n_records + n_broken
    assert list(all_kinds(b).values()) == expected_kind_sequence(b)
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
    assert ta == tb  # records.jsonl, every image, clip and the stream byte-for-byte identical
    assert any(k.startswith("images/") for k in ta)
    assert {k.rsplit(".", 1)[1] for k in ta if k.startswith("audio/")} == set(AUDIO_FORMATS)  # OGG included
    assert STREAM_PATH in ta
    assert (a.broken, a.partial, a.labels, a.n_lines) == (b.broken, b.partial, b.labels, b.n_lines)


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
    assert entries == ["audio", "images", MANIFEST_NAME, "streams"]
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
    good_ids = [objs[ln]["record_id"] for ln in sorted(objs) if ln not in all_kinds(demo)]
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
    assert len(b.broken) + len(b.partial) == n_broken
    assert sorted(b.partial.values()) == ["invalid_field_value"] * 2
    seq = list(all_kinds(b).values())
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


# --------------------------------------------------------------------------------------------------
# modalities: which pairs each one confuses
# --------------------------------------------------------------------------------------------------


def test_confused_pairs_table() -> None:
    pairs = {m: {frozenset(p) for p in ps} for m, ps in CONFUSED_PAIRS.items()}
    expected = {
        "text": [("mug", "teapot"), ("trail_shoe", "backpack"), ("headphones", "desk_lamp")],
        "image": [("mug", "desk_lamp"), ("teapot", "trail_shoe"), ("backpack", "headphones")],
        "audio": [("mug", "backpack"), ("teapot", "desk_lamp"), ("trail_shoe", "headphones")],
        "fields": [("mug", "headphones"), ("teapot", "backpack"), ("trail_shoe", "desk_lamp")],
        "telemetry": [("mug", "trail_shoe"), ("teapot", "headphones"), ("backpack", "desk_lamp")],
    }
    assert pairs == {m: {frozenset(p) for p in ps} for m, ps in expected.items()}
    # the module docstring's table says the same
    import mm_platform.demo.generator as gen

    for m, ps in expected.items():
        row = next(line for line in gen.__doc__.splitlines() if line.startswith(m + " "))
        assert all(f"({a}, {b})" in row for a, b in ps), row


def test_each_modality_confuses_a_perfect_matching_and_no_pair_is_confused_twice() -> None:
    labels = {c.label for c in CATEGORIES}
    for m, ps in CONFUSED_PAIRS.items():
        # every category is confused with exactly one other: three disjoint pairs
        assert len(ps) == 3 and {x for p in ps for x in p} == labels, (m, ps)
    per_pair = Counter(frozenset(p) for ps in CONFUSED_PAIRS.values() for p in ps)
    assert max(per_pair.values()) <= 2  # the required property, over all modalities (stream included)
    core = Counter(frozenset(p) for m in ("text", "image", "audio", "fields") for p in CONFUSED_PAIRS[m])
    assert max(core.values()) <= 2
    # in fact the five pairings are disjoint: all 15 pairs, each confused by exactly one modality
    assert set(per_pair) == {frozenset(p) for p in combinations(sorted(labels), 2)}
    assert set(per_pair.values()) == {1}


# --------------------------------------------------------------------------------------------------
# text and pictures are unchanged by the added modalities
# --------------------------------------------------------------------------------------------------

#: Hash of record ids, timestamps, captions, image paths and labels, and of every decodable picture's
#: pixels, for make_demo_batch(n_records=24, seed=5), taken with the generator before audio, fields
#: and streams were added (they draw from separate random streams).
GOLDEN_TEXT_IMAGE_SHA256 = "88d92484c7eb5dac91c6f974ab6a2fb8d27db17c7cdc0f2702a643a2e585fdc1"


def test_text_and_pictures_unchanged(tmp_path: Path) -> None:
    b = make_demo_batch(tmp_path / "b1", n_records=24, seed=5)
    h = hashlib.sha256()
    for o in json_lines(b).values():
        h.update(repr((o.get("record_id"), o.get("timestamp"), o.get("text"), o.get("image"), o.get("label"))).encode())
    for p in sorted((b.batch_dir / "images").iterdir()):
        try:
            with Image.open(p) as im:
                h.update(p.name.encode() + im.tobytes())
        except OSError:  # the deliberately broken files: raw bytes
            h.update(p.name.encode() + p.read_bytes())
    assert h.hexdigest() == GOLDEN_TEXT_IMAGE_SHA256


# --------------------------------------------------------------------------------------------------
# audio
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> DemoBatch:
    """The CLI's default size (240 records, 7 broken lines)."""
    return make_demo_batch(tmp_path_factory.mktemp("big") / "big-batch", n_records=240, seed=1)


def good_objs(batch: DemoBatch) -> list[dict]:
    kinds = all_kinds(batch)
    return [o for ln, o in sorted(json_lines(batch).items()) if ln not in kinds]


def test_default_size_batch_contract(big: DemoBatch) -> None:
    assert_batch_contract(big)


def test_audio_files_decode_with_expected_format(demo: DemoBatch) -> None:
    refs = {o["audio"] for o in json_lines(demo).values() if "audio" in o}
    files = {str(p.relative_to(demo.batch_dir)) for p in (demo.batch_dir / "audio").iterdir()}
    assert files == refs  # every clip referenced, every reference present (no broken audio in n_broken=7)
    for o in good_objs(demo):
        if "audio" not in o:
            continue
        rel = o["audio"]
        ext = rel.rsplit(".", 1)[1]
        assert rel == f"audio/{o['record_id']}.{ext}"
        info = sf.info(str(demo.batch_dir / rel))
        assert (info.format, info.channels, info.samplerate) == (AUDIO_FORMATS[ext][0], 1, AUDIO_SAMPLE_RATE)
        if ext in ("wav", "flac"):
            assert info.subtype == "PCM_16"
        x, sr = sf.read(str(demo.batch_dir / rel), dtype="float32")
        assert sr == AUDIO_SAMPLE_RATE and x.ndim == 1
        assert 0.85 <= len(x) / sr <= 1.1
        assert 0.2 < float(np.max(np.abs(x))) <= 1.0


def test_audio_share_and_formats(big: DemoBatch) -> None:
    b = big
    goods = good_objs(b)
    exts = Counter(o["audio"].rsplit(".", 1)[1] for o in goods if "audio" in o)
    n_audio = sum(exts.values())
    assert abs(1 - n_audio / len(goods) - P_NO_AUDIO) < 0.04
    assert set(exts) == set(AUDIO_FORMATS)
    alt = n_audio - exts["wav"]
    assert alt == round(P_ALT_AUDIO_FORMAT * n_audio)  # ~5%, split over FLAC / OGG / MP3
    assert max(exts[e] for e in ("flac", "ogg", "mp3")) - min(exts[e] for e in ("flac", "ogg", "mp3")) <= 1
    sizes = [(b.batch_dir / o["audio"]).stat().st_size for o in goods if "audio" in o]
    assert max(sizes) < 40_000  # ~1 s of 16 kHz 16-bit mono at most


def test_audio_decodes_through_the_platform(demo: DemoBatch) -> None:
    audio = pytest.importorskip("mm_platform.lib.media.audio")
    for o in good_objs(demo):
        if "audio" in o:
            dec = audio.load_audio(demo.batch_dir / o["audio"], AUDIO_SAMPLE_RATE)
            assert dec.peak > 0.1 and dec.sample_rate == AUDIO_SAMPLE_RATE


def test_make_sound_deterministic_and_category_specific() -> None:
    clips = {c.label: make_sound(c, np.random.default_rng(4)) for c in CATEGORIES}
    again = make_sound(CATEGORIES[0], np.random.default_rng(4))
    assert np.array_equal(clips["mug"], again)
    for x in clips.values():
        assert x.dtype == np.float32 and x.ndim == 1
        assert 0.9 * AUDIO_SAMPLE_RATE <= len(x) <= AUDIO_SAMPLE_RATE
        assert 0.3 - 1e-6 <= float(np.max(np.abs(x))) <= 0.9 + 1e-6
    assert len({x.tobytes() for x in clips.values()}) == len(CATEGORIES)
    # encoding is deterministic for every container (OGG's random stream serial is pinned)
    for ext in AUDIO_FORMATS:
        assert audio_bytes(again, ext) == audio_bytes(again, ext)


# --------------------------------------------------------------------------------------------------
# fields
# --------------------------------------------------------------------------------------------------

FIELD_TYPES = {
    "price": (float,), "weight_g": (int,), "rating": (int,), "material": (str,), "colour": (str,),
    "warranty_months": (int,),
}


def test_fields_types_and_nulls(big: DemoBatch) -> None:
    b = big
    goods = good_objs(b)
    with_fields = [o["fields"] for o in goods if "fields" in o]
    assert abs(1 - len(with_fields) / len(goods) - P_NO_FIELDS) < 0.04
    nulls = Counter()
    for f in with_fields:
        assert list(f) == list(FIELD_TYPES)
        for k, v in f.items():
            if v is None:
                nulls[k] += 1
                continue
            assert isinstance(v, FIELD_TYPES[k]) and not isinstance(v, bool), (k, v)
        if f["rating"] is not None:
            assert 1 <= f["rating"] <= 5
        if f["warranty_months"] is not None:
            assert f["warranty_months"] in (12, 24)
        if f["price"] is not None:
            assert f["price"] > 0 and round(f["price"], 2) == f["price"]
    n = len(with_fields)
    for k in ("price", "weight_g", "rating", "material", "colour"):
        assert 0.01 < nulls[k] / n < 2.5 * P_FIELD_NULL, (k, nulls[k])
    assert nulls["warranty_months"] / n > P_FIELD_NULL  # also null by design
    # fields carry the category (budget / mid / premium tiers): median price rises with the tier
    by_label: dict[str, list[float]] = {}
    for o in goods:
        if "fields" in o and o["fields"]["price"] is not None:
            by_label.setdefault(o["label"], []).append(o["fields"]["price"])
    med = {k: float(np.median(v)) for k, v in by_label.items()}
    assert med["mug"] < med["teapot"] < med["trail_shoe"]
    assert med["headphones"] < med["backpack"] < med["desk_lamp"]


def test_make_fields_deterministic() -> None:
    for cat in CATEGORIES:
        assert make_fields(cat, np.random.default_rng(2)) == make_fields(cat, np.random.default_rng(2))


# --------------------------------------------------------------------------------------------------
# entities and the telemetry stream
# --------------------------------------------------------------------------------------------------


def read_stream(batch: DemoBatch) -> pl.DataFrame:
    return pl.read_csv(batch.batch_dir / STREAM_PATH, schema_overrides={"entity_id": pl.String})


def records_frame(batch: DemoBatch) -> pl.DataFrame:
    rows = [o for ln, o in sorted(json_lines(batch).items()) if "entity_id" in o]
    return pl.DataFrame({
        "record_id": [o["record_id"] for o in rows],
        "entity_id": [o["entity_id"] for o in rows],
        "label": [o["label"] for o in rows],
        "timestamp": [o["timestamp"] for o in rows],
    }).with_columns(pl.col("timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC"))


def test_entities(big: DemoBatch) -> None:
    b = big
    goods = good_objs(b)
    ents = Counter(o["entity_id"] for o in goods)
    assert len(ents) == 240 // 8
    assert all(e.startswith("dev-") and len(e) == 7 for e in ents)
    own = sum(entity_category(int(o["entity_id"][4:])).label == o["label"] for o in goods)
    assert 0.8 < own / len(goods) < 1.0  # mostly the entity's own category, sometimes another


def test_stream_csv(demo: DemoBatch) -> None:
    df = read_stream(demo)
    assert tuple(df.columns) == STREAM_COLUMNS
    assert df.height > 3 * len(demo.labels)  # readings every 1.5-4 min in a 16-50 min window per record
    assert df.null_count().row(0) == (0,) * len(STREAM_COLUMNS)
    assert df["timestamp"].str.ends_with("Z").all()
    ts = df["timestamp"].str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC")
    assert not ts.is_sorted()  # shipped unsorted: consumers must sort
    assert df["temperature_c"].dtype == df["vibration"].dtype == df["power_w"].dtype == pl.Float64
    assert (df["vibration"] > 0).all() and (df["power_w"] >= 0).all()
    rec_ents = set(records_frame(demo)["entity_id"])
    stream_ents = set(df["entity_id"])
    assert rec_ents <= stream_ents
    unknown = stream_ents - rec_ents
    assert unknown and df.filter(pl.col("entity_id").is_in(sorted(unknown))).height >= 3


def test_stream_alignment_with_tolerance(big: DemoBatch) -> None:
    b = big
    assert DEMO_STREAM_TOLERANCE == "10m"
    df = read_stream(b).with_columns(
        pl.col("timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC")).sort("entity_id", "timestamp")
    recs = records_frame(b).sort("entity_id", "timestamp")
    unmatched = {}
    for strategy in ("backward", "forward", "nearest"):
        j = recs.join_asof(df, on="timestamp", by="entity_id", strategy=strategy, tolerance=DEMO_STREAM_TOLERANCE,
                           check_sortedness=False)
        unmatched[strategy] = set(j.filter(pl.col("temperature_c").is_null())["record_id"])
    n = recs.height
    assert unmatched["backward"] == unmatched["forward"] == unmatched["nearest"]  # gap records: nothing near
    assert abs(len(unmatched["nearest"]) / n - P_STREAM_GAP) < 0.03
    # a tighter tolerance than intended barely loses more (readings every 1.5-4 minutes)
    j5 = recs.join_asof(df, on="timestamp", by="entity_id", strategy="backward", tolerance="5m",
                        check_sortedness=False)
    assert j5["temperature_c"].null_count() == len(unmatched["backward"])
    # telemetry carries the entity's category: temperature levels differ by profile
    j = recs.join_asof(df, on="timestamp", by="entity_id", strategy="nearest", tolerance="10m",
                       check_sortedness=False).drop_nulls("temperature_c")
    t = dict(j.group_by("label").agg(pl.col("temperature_c").median()).iter_rows())
    assert max(t["mug"], t["trail_shoe"]) < min(t["backpack"], t["desk_lamp"])
    assert max(t["backpack"], t["desk_lamp"]) < min(t["teapot"], t["headphones"])


# --------------------------------------------------------------------------------------------------
# new broken kinds: audio and fields
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_broken(tmp_path_factory: pytest.TempPathFactory) -> DemoBatch:
    """Every broken kind once (n_broken = len(BROKEN_KINDS))."""
    return make_demo_batch(tmp_path_factory.mktemp("ab") / "all-broken", n_records=40, seed=8,
                           n_broken=len(BROKEN_KINDS))


def test_all_broken_kinds_once(all_broken: DemoBatch) -> None:
    b = all_broken
    assert sorted(b.broken.values()) == sorted(k for k in BROKEN_KINDS if k not in PARTIAL_KINDS)
    assert list(b.partial.values()) == ["invalid_field_value"]
    assert list(all_kinds(b).values()) == expected_kind_sequence(b)
    assert b.n_records_expected_aligned == 40 + 1
    assert_batch_contract(b)


def test_new_broken_lines_content(all_broken: DemoBatch) -> None:
    b = all_broken
    objs = json_lines(b)
    line = {kind: ln for ln, kind in all_kinds(b).items()}
    for kind in ("unreadable_audio", "silent_audio"):
        o = objs[line[kind]]
        assert set(o) == {"record_id", "timestamp", "audio", "label"}  # audio only: no record once rejected
        assert o["audio"].endswith(".wav") and o["record_id"] not in b.labels
    garbage = b.batch_dir / objs[line["unreadable_audio"]]["audio"]
    with pytest.raises(sf.LibsndfileError):
        sf.read(str(garbage))
    x, sr = sf.read(str(b.batch_dir / objs[line["silent_audio"]]["audio"]), dtype="int16")
    assert sr == AUDIO_SAMPLE_RATE and len(x) == AUDIO_SAMPLE_RATE and not x.any()
    p = objs[line["invalid_field_value"]]
    assert set(p) == {"record_id", "timestamp", "entity_id", "text", "fields", "label"}
    assert p["fields"]["price"] == "n/a" and b.labels[p["record_id"]] == p["label"]


def test_decode_level_reasons(all_broken: DemoBatch) -> None:
    """silent_audio and invalid_field_value are reported when the platform decodes the clip / types the
    fields against the batch; nothing else in the batch trips them."""
    audio = pytest.importorskip("mm_platform.lib.media.audio")
    tabular = pytest.importorskip("mm_platform.lib.features.tabular")
    from mm_platform.lib.media import MediaError

    b = all_broken
    vb = validate_batch(b.batch_dir)
    silent = {ln for ln, k in b.broken.items() if k == "silent_audio"}
    for r in vb.records:
        if r.audio is None:
            continue
        if r.line_number in silent:
            with pytest.raises(MediaError) as exc:
                audio.load_audio(b.batch_dir / r.audio, None)
            assert exc.value.reason == "silent_audio"
        else:
            audio.load_audio(b.batch_dir / r.audio, None)
    with_fields = [r for r in vb.records if r.fields is not None]
    state = tabular.fit_tabular([r.fields for r in with_fields])
    kinds = {f.name: f.kind for f in state.fields}
    assert kinds == {"price": "numeric", "weight_g": "numeric", "rating": "numeric", "material": "categorical",
                     "colour": "categorical", "warranty_months": "numeric"}
    typed = tabular.type_rows(state, [r.fields for r in with_fields])
    problems = {(with_fields[p.row].line_number, p.field, p.reason) for p in typed.problems}
    assert problems == {(ln, "price", k) for ln, k in b.partial.items()}


def test_small_batch_manifest_and_stream_bytes_are_pinned(tmp_path: Path) -> None:
    """The generator's output for one small seed, pinned: the manifest and stream digests were taken
    before the generator was split into per-modality builders (the split must not change a byte).
    Only the text files are pinned (PNG/FLAC/MP3 bytes depend on codec library versions)."""
    d = tmp_path / "b13"
    make_demo_batch(d, n_records=13, seed=11, n_broken=12, id_prefix="x")
    digest = {p: hashlib.sha256((d / p).read_bytes()).hexdigest() for p in ("records.jsonl", STREAM_PATH)}
    assert digest == {
        "records.jsonl": "801d603ac46e569619ba9f91223b878d326463f1974595b595d664387b8fee9d",
        STREAM_PATH: "6fde6e035e08c95bac17bf32e91221fdedcbf1041197601459cd345d7240f74a",
    }
