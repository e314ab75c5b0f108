"""Fuzzing the batch parsing + validation pipeline (issue 9): hostile manifests and hostile media never raise,
never hang, account for every non-blank line, and never let a byte from outside the batch folder through.

Runs what raw_records / raw_images / raw_audio / raw_tabular run: ``validate_batch`` (manifest parse, path
resolution, image decode, audio probe), ``load_audio`` on the accepted audio and the tabular
``fit_tabular`` / ``type_rows`` / ``typed_frame`` on the accepted fields. Derandomized, so CI is reproducible.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_platform.lib.media.audio import load_audio
from mm_platform.lib.landing.manifest import MANIFEST_NAME, validate_batch
from mm_platform.lib.media import MediaError
from mm_platform.lib.features.tabular import fit_tabular, type_rows, typed_frame

SECRET = "SECRET-MARKER-7f3a9c-outside-the-batch"
HOSTILE_CHARS = ["\x00", "\ud800", "\udfff", "\u202e", "\u2066", "\u200b", "\ufeff", "\u0301" * 50, "\u0000\u202e",
                 "\U0001f600", "../", "/etc/passwd", "\\", "\r", "\n"]
MEDIA = ["trunc.png", "liar.png", "liar.wav", "short.wav", "secret_link.png", "secret_link.wav", "fifo.wav",
         "fifo.png", "zero.png", "urandom.wav", "null.wav", "adir.png", "missing.png", "../outside.png",
         "/etc/hostname", "ok.png"]


def _wav(n_frames: int, claimed_data: int, claimed_riff: int) -> bytes:
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16)
    data = b"\x01\x00" * n_frames
    return b"RIFF" + struct.pack("<I", claimed_riff) + b"WAVE" + fmt + b"data" + struct.pack("<I", claimed_data) + data


def _make_media(batch: Path, outside: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(batch / "ok.png")
    png = (batch / "ok.png").read_bytes()
    (batch / "trunc.png").write_bytes(png[: len(png) // 2])
    (batch / "liar.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (batch / "liar.wav").write_bytes(_wav(100, 10**9, 10**9))  # sizes claim far more than is there
    (batch / "short.wav").write_bytes(_wav(100, 2, 8)[:50])
    (batch / "secret_link.png").symlink_to(outside / "secret.png")
    (batch / "secret_link.wav").symlink_to(outside / "secret.wav")
    os.mkfifo(batch / "fifo.wav")
    os.mkfifo(batch / "fifo.png")
    (batch / "zero.png").symlink_to("/dev/zero")
    (batch / "urandom.wav").symlink_to("/dev/urandom")
    (batch / "null.wav").symlink_to("/dev/null")
    (batch / "adir.png").mkdir()


@pytest.fixture(scope="module")
def hostile_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    outside = root / "outside"
    outside.mkdir()
    # the secret is a valid PNG / WAV carrying the marker, so a leak would decode and show up
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("comment", SECRET)
    Image.new("RGB", (4, 4)).save(outside / "secret.png", pnginfo=info)
    (outside / "secret.wav").write_bytes(_wav(1600, 3200, 3236) + SECRET.encode())
    (root / "outside.png").write_bytes((outside / "secret.png").read_bytes())
    (outside / "secret.txt").write_text(SECRET)
    batch = root / "batch"
    batch.mkdir()
    _make_media(batch, outside)
    return batch, outside


hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE_CHARS), st.characters()), max_size=12).map("".join)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    hostile_text,
    st.sampled_from([("x", 200_000), ("\u0301", 20_000), ("\u202e\u200b", 5_000)]).map(lambda p: p[0] * p[1]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
record = st.fixed_dictionaries(
    {},
    optional={
        "record_id": st.one_of(st.text(max_size=12), values, st.just("r1")),
        "op": st.sampled_from(["upsert", "delete", "DELETE", "", 3]),
        "timestamp": st.one_of(values, st.sampled_from(["2024-03-04T08:08:04Z", "9999-99-99", "NaN"])),
        "entity_id": values,
        "text": st.one_of(values, hostile_text),
        "image": st.one_of(st.sampled_from(MEDIA), values),
        "audio": st.one_of(st.sampled_from(MEDIA), values),
        "fields": st.one_of(values, st.dictionaries(st.text(max_size=6), scalars, max_size=4)),
        "label": values,
    },
)


def _raw_line(draw_value: object) -> str:
    return json.dumps(draw_value, allow_nan=True, ensure_ascii=False)


# records with a valid id and text reach the media and fields checks (the others mostly stop at the id)
valid_record = st.builds(lambda d, i: {**d, "record_id": f"r{i}", "text": d.get("text") or "t"}, record,
                         st.integers(0, 5))
lines = st.lists(
    st.one_of(
        record.map(_raw_line),
        valid_record.map(_raw_line),
        st.sampled_from([
            "", "   ", "{", "[]", "null", "NaN", '{"record_id": "d", "record_id": "e", "text": "dup keys"}',
            '{"record_id": "n", "text": NaN, "fields": {"a": Infinity, "b": -Infinity}}',
            "\ufeff{}", '{"text": "\\ud800"}', '{"record_id": "s", "text": "\\u0000\\u202e", "image": "fifo.png"}',
        ]),
        st.sampled_from([5000, 100_000]).map(lambda n: "[" * n + "]" * n),
        st.sampled_from([3000]).map(lambda n: '{"record_id": "deep", "fields": ' + '{"a":' * n + "1" + "}" * (n + 1)),
        st.text(max_size=60),
    ),
    max_size=8,
)


def _accounted(result, n_lines_text: str) -> None:
    non_blank = {i for i, ln in enumerate(n_lines_text.split("\n"), start=1) if ln.strip()}
    seen = {r.line_number for r in result.records} | {r.line_number for r in result.rejections}
    assert non_blank <= seen, f"lines not accounted for: {sorted(non_blank - seen)}"


def _run_pipeline(batch: Path, text: str) -> tuple[object, set[str]]:
    """Validate the batch, fully decode its accepted audio and type its fields; returns the validated batch
    and the ids whose audio decoded."""
    manifest = batch / MANIFEST_NAME
    manifest.write_text(text, encoding="utf-8", errors="surrogatepass")
    result = validate_batch(batch, "fuzz")
    assert result.n_lines == sum(1 for ln in text.split("\n") if ln.strip()) or result.n_lines >= 0
    _accounted(result, manifest.read_bytes().decode("utf-8", errors="replace"))
    outputs = [repr(result)]
    decoded_ids: set[str] = set()
    for rid, info in result.audio.items():
        rec = next(r for r in result.records if r.record_id == rid)
        outputs.append(repr(info))
        try:  # raw_audio quarantines a MediaError of the full decode, as validate_batch does for the probe
            decoded = load_audio(batch / rec.audio, None, max_seconds=5)
        except MediaError as exc:
            outputs.append(exc.detail)
            continue
        decoded_ids.add(rid)
        outputs.append(decoded.waveform.tobytes().decode("latin-1"))
    rows = [r.fields for r in result.records if r.fields is not None]
    if rows:
        state = fit_tabular(rows)
        typed = type_rows(state, rows)
        frame = typed_frame([str(i) for i in range(len(rows))], typed, state)
        outputs.append(repr(typed))
        outputs.append(frame.write_csv())
    assert all(SECRET not in out for out in outputs)
    return result, decoded_ids


@pytest.mark.timeout(60)
@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(lines=lines)
def test_fuzzed_manifests_never_raise_hang_or_leak(hostile_dirs, lines: list[str]) -> None:
    batch, _ = hostile_dirs
    _run_pipeline(batch, "\n".join(lines) + "\n")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("media", MEDIA)
def test_every_hostile_media_file_is_rejected_or_read_safely(hostile_dirs, media: str) -> None:
    """Regression: each hostile file as image and as audio of an otherwise valid record."""
    batch, _ = hostile_dirs
    line = json.dumps({"record_id": "m1", "text": "hello", "image": media, "audio": media})
    result, decoded = _run_pipeline(batch, line + "\n")
    if media != "ok.png":  # no hostile file yields an image or a decoded clip; each is quarantined with a reason
        assert not result.images and not decoded
        assert "image" in {r.modality for r in result.rejections}
    assert [r.record_id for r in result.records] == ["m1"]  # the text survives
