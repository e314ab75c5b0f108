"""Tests for mm_platform.lib.media.audio: probing, decoding, resampling and every rejection reason.

All audio is synthesised and written with soundfile (libsndfile) into tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mm_platform.lib.media import audio as A
from mm_platform.lib.media import MediaError, inspect_audio

SECONDS = 1.0


def tone(freq: float, sr: int, seconds: float = SECONDS, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int, fmt: str = "WAV", subtype: str = "PCM_16") -> Path:
    sf.write(str(path), data, sr, format=fmt, subtype=subtype)
    return path


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


def reason_of(fn: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(MediaError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return info.value.reason


@pytest.fixture(scope="module")
def wav44(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("a") / "tone.wav", tone(440, 44_100), 44_100)


# ---------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_wav_decodes_at_native_rate(tmp_path: Path, subtype: str) -> None:
    x = tone(440, 22_050)
    p = write(tmp_path / "a.wav", x, 22_050, subtype=subtype)
    d = A.load_audio(p, None)
    assert d.sample_rate == 22_050 and d.waveform.dtype == np.float32 and d.waveform.ndim == 1
    assert len(d.waveform) == len(x) and d.duration_s == pytest.approx(SECONDS)
    np.testing.assert_allclose(d.waveform, x, atol=1e-4 if subtype == "PCM_16" else 1e-6)
    assert d.peak == pytest.approx(0.5, abs=1e-3) and d.rms == pytest.approx(0.5 / np.sqrt(2), abs=1e-3)
    m = d.meta
    assert (m.format, m.subtype, m.sample_rate, m.channels, m.frames) == ("WAV", subtype, 22_050, 1, len(x))
    assert m.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() and m.n_bytes == p.stat().st_size


def test_stereo_is_mixed_to_mono(tmp_path: Path) -> None:
    left = tone(440, 16_000)
    stereo = np.stack([left, -0.5 * left], axis=1)
    p = write(tmp_path / "st.wav", stereo, 16_000, subtype="FLOAT")
    d = A.load_audio(p, None)
    assert d.meta.channels == 2 and d.waveform.shape == (16_000,)
    np.testing.assert_allclose(d.waveform, 0.25 * left, atol=1e-6)


@pytest.mark.parametrize(
    ("fmt", "subtype", "ext", "sr"),
    [
        ("WAV", "PCM_16", "wav", 44_100),
        ("WAV", "FLOAT", "wav", 8_000),
        ("FLAC", "PCM_24", "flac", 22_050),
        ("OGG", "VORBIS", "ogg", 48_000),
        ("MP3", "MPEG_LAYER_III", "mp3", 44_100),
        ("MP3", "MPEG_LAYER_III", "mp3", 24_000),
    ],
)
@pytest.mark.parametrize("target", [16_000, 48_000])
def test_formats_resample_keep_duration_and_pitch(
    tmp_path: Path, fmt: str, subtype: str, ext: str, sr: int, target: int
) -> None:
    p = write(tmp_path / f"a.{ext}", tone(440, sr), sr, fmt=fmt, subtype=subtype)
    d = A.load_audio(p, target)
    assert d.sample_rate == target and d.meta.sample_rate == sr and d.meta.format == fmt
    assert d.waveform.dtype == np.float32
    # lossy codecs may add encoder delay/padding; the duration stays within a few ms
    assert d.duration_s == pytest.approx(SECONDS, abs=0.06 if fmt == "MP3" else 1e-3)
    assert peak_hz(d.waveform, target) == pytest.approx(440, abs=2)
    assert inspect_audio(p).format == ext


def test_resample_exact_lengths_and_identity() -> None:
    x = tone(440, 44_100)
    y = A.resample(x, 44_100, 16_000)
    assert y.dtype == np.float32 and len(y) == 16_000
    assert peak_hz(y, 16_000) == pytest.approx(440, abs=1)
    assert A.resample(x, 44_100, 44_100) is not None and len(A.resample(x, 44_100, 44_100)) == len(x)
    assert len(A.resample(tone(440, 8_000), 8_000, 48_000)) == 48_000
    with pytest.raises(ValueError):
        A.resample(x, 0, 16_000)
    with pytest.raises(ValueError):
        A.resample(np.zeros((2, 10), np.float32), 8_000, 16_000)


def test_probe_does_not_decode(wav44: Path) -> None:
    m = A.probe_audio(wav44)
    assert (m.format, m.sample_rate, m.frames, m.channels) == ("WAV", 44_100, 44_100, 1)
    assert m.duration_s == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- rejections


def test_garbage_and_unknown_bytes_are_unreadable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, data in [
        ("garbage.wav", rng.bytes(4000)),
        ("fake.mp3", b"ID3\x03\x00fake"),
        ("text.ogg", b"this is not audio at all\n" * 20),
        ("noext", b"xx"),
    ]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(MediaError) as info:
            A.probe_audio(p)
        assert info.value.reason == "unreadable_audio", name
        assert str(p) in info.value.detail
        assert "does not exist" not in info.value.detail  # libsndfile's misleading message is replaced
        assert reason_of(A.load_audio, p, 16_000) == "unreadable_audio"


def test_truncated_wav_and_header_only(tmp_path: Path, wav44: Path) -> None:
    data = wav44.read_bytes()
    half = tmp_path / "half.wav"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as info:
        A.load_audio(half, 16_000)
    assert info.value.reason == "unreadable_audio" and "truncated" in info.value.detail
    header_only = tmp_path / "hdr.wav"
    header_only.write_bytes(data[:44])
    assert reason_of(A.probe_audio, header_only) == "unreadable_audio"
    assert reason_of(A.probe_audio, _write(tmp_path, "h20.wav", data[:20])) == "unreadable_audio"


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    ("fmt", "subtype", "ext"),
    [("FLAC", "PCM_16", "flac"), ("MP3", "MPEG_LAYER_III", "mp3"), ("OGG", "VORBIS", "ogg")],
)
def test_truncated_compressed_files(tmp_path: Path, fmt: str, subtype: str, ext: str) -> None:
    full = write(tmp_path / f"full.{ext}", tone(440, 44_100, seconds=2.0), 44_100, fmt=fmt, subtype=subtype)
    data = full.read_bytes()
    cut = _write(tmp_path, f"cut.{ext}", data[: len(data) // 2])
    with pytest.raises(MediaError) as info:
        A.load_audio(cut, 16_000)
    assert info.value.reason == "unreadable_audio"


def test_empty_and_zero_frame_files(tmp_path: Path) -> None:
    assert reason_of(A.probe_audio, _write(tmp_path, "e.wav", b"")) == "empty_file"
    p = write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16_000)
    assert reason_of(A.probe_audio, p) == "empty_audio"
    assert reason_of(A.load_audio, p, 16_000) == "empty_audio"
    assert reason_of(inspect_audio, p) == "empty_audio"


def test_silent_audio(tmp_path: Path) -> None:
    assert reason_of(A.load_audio, write(tmp_path / "z.wav", np.zeros(8000, np.float32), 16_000), None) == (
        "silent_audio"
    )
    quiet = write(tmp_path / "q.wav", tone(440, 16_000, amp=5e-5), 16_000, subtype="FLOAT")
    assert reason_of(A.load_audio, quiet, None) == "silent_audio"
    A.load_audio(write(tmp_path / "ok.wav", tone(440, 16_000, amp=1e-3), 16_000, subtype="FLOAT"), None)
    # stereo channels that cancel out mix to silence
    x = tone(440, 16_000)
    assert reason_of(A.load_audio, write(tmp_path / "c.wav", np.stack([x, -x], 1), 16_000, subtype="FLOAT"),
                     None) == "silent_audio"  # fmt: skip
    # content only above the target Nyquist disappears when resampling
    faded = tone(15_000, 48_000, amp=0.05) * np.hanning(48_000).astype(np.float32)  # no onset click
    high = write(tmp_path / "h.wav", faded, 48_000, subtype="FLOAT")
    assert A.load_audio(high, None).peak > 0.04
    with pytest.raises(MediaError) as info:
        A.load_audio(high, 16_000)
    assert info.value.reason == "silent_audio" and "resampling" in info.value.detail


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_wav(tmp_path: Path, bad: float) -> None:
    x = tone(440, 16_000)
    x[1234] = bad
    p = write(tmp_path / "nan.wav", x, 16_000, subtype="FLOAT")
    A.probe_audio(p)  # the header is fine
    with pytest.raises(MediaError) as info:
        A.load_audio(p, 16_000)
    assert info.value.reason == "non_finite_audio" and "1 NaN/Inf" in info.value.detail


def test_limits(tmp_path: Path, wav44: Path) -> None:
    assert reason_of(A.probe_audio, wav44, max_seconds=0.5) == "audio_too_long"
    assert reason_of(A.load_audio, wav44, 16_000, max_seconds=0.5) == "audio_too_long"
    assert reason_of(inspect_audio, wav44, max_seconds=0.5) == "audio_too_long"
    assert A.probe_audio(wav44, max_seconds=1.0).frames == 44_100  # the limit itself is allowed
    assert reason_of(A.probe_audio, wav44, max_bytes=100) == "file_too_large"
    assert reason_of(A.load_audio, wav44, None, max_bytes=100) == "file_too_large"
    assert reason_of(inspect_audio, wav44, max_bytes=100) == "file_too_large"


def test_unsupported_container(tmp_path: Path) -> None:
    aiff = write(tmp_path / "a.aiff", tone(440, 16_000), 16_000, fmt="AIFF")
    with pytest.raises(MediaError) as info:
        A.load_audio(aiff, 16_000)
    assert info.value.reason == "unsupported_audio_format" and "AIFF" in info.value.detail
    au = write(tmp_path / "a.au", tone(440, 16_000), 16_000, fmt="AU")
    assert reason_of(inspect_audio, au) == "unsupported_audio_format"


def test_invalid_sample_rate(tmp_path: Path) -> None:
    p = write(tmp_path / "slow.wav", tone(10, 500), 500)
    assert reason_of(A.probe_audio, p) == "invalid_sample_rate"


def test_missing_and_not_a_file(tmp_path: Path) -> None:
    assert reason_of(A.load_audio, tmp_path / "nope.wav", 16_000) == "missing_file"
    assert reason_of(A.probe_audio, tmp_path) == "not_a_file"


def test_bad_target_sr(wav44: Path) -> None:
    with pytest.raises(ValueError):
        A.load_audio(wav44, 0)


def test_corrupted_bytes_only_raise_media_errors(tmp_path: Path) -> None:
    """Random corruption of valid files of each format: only MediaError (or success) comes out."""
    rng = np.random.default_rng(7)
    sources = [
        write(tmp_path / "s.wav", tone(440, 16_000, 0.3), 16_000),
        write(tmp_path / "s.flac", tone(440, 16_000, 0.3), 16_000, fmt="FLAC"),
        write(tmp_path / "s.ogg", tone(440, 16_000, 0.3), 16_000, fmt="OGG", subtype="VORBIS"),
        write(tmp_path / "s.mp3", tone(440, 16_000, 0.3), 16_000, fmt="MP3", subtype="MPEG_LAYER_III"),
    ]
    for src in sources:
        data = bytearray(src.read_bytes())
        for k in range(6):
            mutated = bytearray(data)
            for pos in rng.integers(0, min(len(data), 200), size=4):
                mutated[int(pos)] = int(rng.integers(0, 256))
            cut = int(rng.integers(1, len(data) + 1)) if k % 2 else len(data)
            p = _write(tmp_path, f"m{k}{src.suffix}", bytes(mutated[:cut]))
            try:
                A.load_audio(p, 16_000)
            except MediaError:
                pass


def test_wav_streaming_size_fields_are_accepted(tmp_path: Path) -> None:
    """A WAV whose RIFF/data sizes are 0xFFFFFFFF (streamed writers) is not called truncated."""
    x = (tone(440, 16_000) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 16_000, 32_000, 2, 16)
    data = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    data += b"data" + struct.pack("<I", 0xFFFFFFFF) + x
    p = _write(tmp_path, "stream.wav", data)
    try:
        d = A.load_audio(p, None)
    except MediaError as exc:  # libsndfile may refuse the header itself; it must not be "truncated"
        assert "truncated" not in exc.detail
    else:
        assert abs(len(d.waveform) - 16_000) <= 1


def test_inspect_audio_uses_probe(tmp_path: Path) -> None:
    p = write(tmp_path / "x.flac", tone(440, 32_000, 0.25), 32_000, fmt="FLAC")
    info = inspect_audio(p)
    assert (info.format, info.sample_rate) == ("flac", 32_000)
    assert info.duration_s == pytest.approx(0.25)
    assert info.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() and info.n_bytes == os.path.getsize(p)
