"""The corpus builders' record-writing logic, on tiny fake package folders built here (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from bench.corpora import asterisk, emoji, tuxpaint
from bench.corpora.common import Item, stratified_subsample, write_batch
from mm_platform.demo.generator import audio_bytes
from mm_platform.lib.landing.manifest import validate_batch


def _png(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (8, 8), (*colour, 255)).save(path)
    return path


def _records(batch: Path) -> dict[str, dict]:
    lines = (batch / "records.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["record_id"]: r for r in map(json.loads, lines)}


def _fake_stamps(root: Path) -> Path:
    stamps = root / "usr/share/tuxpaint/stamps"
    frog = _png(stamps / "animals/amphibians/frog.png", (0, 200, 0))
    frog.with_suffix(".txt").write_text("A frog.\nde.utf8=Ein Frosch.\n", encoding="utf-8")
    tone = 0.3 * np.sin(np.linspace(0, 400 * np.pi, 8000)).astype(np.float32)
    frog.with_suffix(".ogg").write_bytes(audio_bytes(tone, "ogg"))
    frog.with_suffix(".dat").write_text("colorable\nnoflip\nscale=15%\n", encoding="utf-8")
    _png(stamps / "animals/amphibians/frog_mirror.png", (0, 200, 0))  # Tux Paint's mirrored copy
    apple = _png(stamps / "food/fruit/apple.png", (220, 0, 0))
    apple.with_suffix(".txt").write_text("An apple.\n", encoding="utf-8")
    _png(stamps / "food/cartoon/pie.png", (1, 2, 3)).with_suffix(".txt").write_text("A pie.\n")
    _png(stamps / "symbols/arrow.png", (9, 9, 9)).with_suffix(".txt").write_text("An arrow.\n")
    return root


def test_tuxpaint_writes_one_valid_record_per_photo_stamp(tmp_path: Path) -> None:
    src = _fake_stamps(tmp_path / "pkg")
    summary = tuxpaint.build(tmp_path / "batch", source=src, min_class=1)
    recs = _records(tmp_path / "batch")
    assert sorted(recs) == ["tp-animals-amphibians-frog", "tp-food-fruit-apple"]  # no drawings, no mirror copy
    frog, apple = recs["tp-animals-amphibians-frog"], recs["tp-food-fruit-apple"]
    assert (frog["label"], frog["text"], frog["audio"]) == ("animals", "A frog.", "audio/tp-animals-amphibians-frog.ogg")
    assert frog["fields"] == {"colorable": 1, "tintable": 0, "mirrorable": 1, "flippable": 0, "scale_pct": 15.0}
    assert "audio" not in apple and apple["fields"]["flippable"] == 1 and apple["fields"]["scale_pct"] is None
    assert summary["modalities"] == {"text": 2, "image": 2, "audio": 1, "tabular": 2}
    checked = validate_batch(tmp_path / "batch")
    assert checked.rejections == [] and len(checked.images) == 2 and len(checked.audio) == 1


def test_tuxpaint_options_keep_drawings_and_drop_small_labels(tmp_path: Path) -> None:
    src = _fake_stamps(tmp_path / "pkg")
    tuxpaint.build(tmp_path / "all", source=src, include_drawings=True, min_class=1)
    assert {r["label"] for r in _records(tmp_path / "all").values()} == {"animals", "food", "symbols"}
    tuxpaint.build(tmp_path / "big", source=src, include_drawings=True, min_class=2)
    assert [r["label"] for r in _records(tmp_path / "big").values()] == ["food", "food"]


def _fake_emoji(root: Path) -> tuple[Path, Path]:
    ds, eb = root / "emoji-datasource-twitter", root / "emojibase-data"
    entries = [
        {"unified": "1F600", "image": "1f600.png", "name": "GRINNING FACE", "category": "Smileys & Emotion",
         "added_in": "1.0", "has_img_twitter": True, "has_img_apple": True, "sort_order": 1},
        {"unified": "270B", "image": "270b.png", "name": "RAISED HAND", "category": "People & Body",
         "added_in": "0.6", "has_img_twitter": True, "skin_variations": {"1F3FB": {}}, "sort_order": 2},
        {"unified": "1F3FB", "image": "1f3fb.png", "category": "Component", "has_img_twitter": True},
        {"unified": "1F1EA-1F1EC", "image": "1f1ea-1f1ec.png", "name": "Egypt Flag", "category": "Flags",
         "added_in": "2.0", "has_img_twitter": True},
        {"unified": "1F9CC", "image": "1f9cc.png", "category": "People & Body", "has_img_twitter": False},
    ]
    (ds / "img/twitter/64").mkdir(parents=True)
    for e in entries:
        _png(ds / "img/twitter/64" / e["image"], (200, 200, 0))
    (ds / "emoji.json").write_text(json.dumps(entries), encoding="utf-8")
    (eb / "en").mkdir(parents=True)
    (eb / "en/data.json").write_text(json.dumps([
        {"hexcode": "1F600", "label": "grinning face", "tags": ["face", "grin"]},
        {"hexcode": "270B", "label": "raised hand", "tags": ["hand", "high 5"]},
    ]), encoding="utf-8")
    return ds, eb


def test_emoji_writes_name_keywords_group_and_real_fields(tmp_path: Path) -> None:
    ds, eb = _fake_emoji(tmp_path)
    emoji.build(tmp_path / "batch", source=ds, keywords=eb)
    recs = _records(tmp_path / "batch")
    assert sorted(recs) == ["emoji-1f1ea-1f1ec", "emoji-1f600", "emoji-270b"]  # no Component, no missing image
    hand = recs["emoji-270b"]
    assert (hand["label"], hand["text"]) == ("People & Body", "raised hand: hand, high 5")
    assert hand["fields"] == {"unicode_version": 0.6, "skin_tones": 1, "codepoints": 1, "vendor_images": 1}
    assert recs["emoji-1f1ea-1f1ec"]["text"] == "egypt flag"  # no keywords: the data source's name
    assert recs["emoji-1f1ea-1f1ec"]["fields"]["codepoints"] == 2
    assert "sort_order" not in hand["fields"]
    assert validate_batch(tmp_path / "batch").rejections == []


def test_subsample_is_deterministic_and_keeps_each_labels_share(tmp_path: Path) -> None:
    items = [Item(f"a{i:03d}", "a") for i in range(300)] + [Item(f"b{i:03d}", "b") for i in range(100)]
    first = stratified_subsample(items, 40)
    assert [it.record_id for it in first] == [it.record_id for it in stratified_subsample(items[::-1], 40)]
    assert sum(it.label == "a" for it in first) == 30 and sum(it.label == "b" for it in first) == 10
    assert len(stratified_subsample(items, None)) == 400
    summary = write_batch(tmp_path / "b", first)
    assert summary["records"] == 40 and not (tmp_path / "b" / ".records.jsonl.tmp").exists()


def test_asterisk_pairs_each_prompt_with_its_transcript_and_duration(tmp_path: Path) -> None:
    voice = tmp_path / "pkg/usr/share/asterisk/sounds/en_US_f_Allison"
    tone = 0.3 * np.sin(np.linspace(0, 800 * np.pi, 16000)).astype(np.float32)
    for name in ("vm-youhave", "vm-goodbye", "digits/5", "silence/1", "conf-nobody"):
        (voice / name).parent.mkdir(parents=True, exist_ok=True)
        (voice / f"{name}.wav").write_bytes(audio_bytes(tone, "wav"))
    notes = tmp_path / "core-sounds-en.txt"
    notes.write_text("; Core Asterisk Sounds in English\n\nvm-youhave: you have\nvm-goodbye: Goodbye!\n"
                     "digits/5: five\nsilence/1: [1 second of silence]\n", encoding="utf-8")
    summary = asterisk.build(tmp_path / "batch", source=tmp_path / "pkg", transcripts_file=notes, min_class=1)
    recs = _records(tmp_path / "batch")
    assert sorted(recs) == ["ast-digits-5", "ast-vm-goodbye", "ast-vm-youhave"]  # no transcript, silence: out
    assert (recs["ast-vm-youhave"]["label"], recs["ast-vm-youhave"]["text"]) == ("vm", "you have")
    assert recs["ast-digits-5"]["label"] == "digits" and recs["ast-digits-5"]["audio"] == "audio/ast-digits-5.wav"
    assert recs["ast-vm-goodbye"]["fields"]["duration_s"] > 0
    assert summary["modalities"] == {"text": 3, "audio": 3, "tabular": 3}
    checked = validate_batch(tmp_path / "batch")
    assert checked.rejections == [] and len(checked.audio) == 3
    asterisk.build(tmp_path / "big", source=tmp_path / "pkg", transcripts_file=notes, min_class=2)
    assert {r["label"] for r in _records(tmp_path / "big").values()} == {"vm"}
