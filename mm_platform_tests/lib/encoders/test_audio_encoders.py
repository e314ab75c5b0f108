"""Tests for mm_platform.lib.encoders.audio: the log-mel/MFCC encoder, CLAP (tiny random model), and
``EncoderSet.audio()`` selection. Everything runs offline on CPU with synthetic audio.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mm_platform.lib.media.audio import load_audio
from mm_platform.lib.device import DeviceConfig
from mm_platform.lib.encoders import (
    LOGMEL_DIM,
    AudioDecodeError,
    AudioEncoder,
    ClapAudioEncoder,
    EncoderSettings,
    EncoderUnavailable,
    LogMelAudioEncoder,
    load_encoders,
    locate_clap_weights,
    registry,
    resolve_audio,
)
from mm_platform.lib.encoders.audio import dct_matrix, find_clap_weights, mel_filterbank
from mm_platform_tests.network import refuse_network
from mm_platform_tests.tiny_models import TINY_CLAP_DIM, TinyClip, build_tiny_clap, build_tiny_clip

CPU = DeviceConfig(device="cpu", batch_size=8, num_workers=0)
SR = 16_000


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(registry, "_probe_cache", {})


@pytest.fixture(scope="module")
def logmel() -> LogMelAudioEncoder:
    return LogMelAudioEncoder(CPU)


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clap(tmp_path_factory.mktemp("tiny_clap"))


@pytest.fixture(scope="module")
def clap(tiny_clap: Path) -> ClapAudioEncoder:
    return ClapAudioEncoder(DeviceConfig(device="cpu", batch_size=4, num_workers=0), str(tiny_clap))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def t_axis(seconds: float, sr: int = SR) -> np.ndarray:
    return np.arange(int(round(seconds * sr))) / sr


def sine(freq: float, seconds: float = 1.0, amp: float = 0.5, sr: int = SR) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * t_axis(seconds, sr))).astype(np.float32)


def harmonic(freq: float, seconds: float = 1.0, amp: float = 0.5, n: int = 15) -> np.ndarray:
    """Band-limited square-ish wave: odd harmonics with 1/k amplitudes."""
    t = t_axis(seconds)
    x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 2 * n, 2) if freq * k < SR / 2)
    return (amp * x / np.max(np.abs(x))).astype(np.float32)


def noisy(x: np.ndarray, seed: int, snr_db: float = 30.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rms = float(np.sqrt(np.mean(x**2)))
    gain = float(rng.uniform(0.5, 1.0))
    return (gain * (x + rng.standard_normal(len(x)) * rms * 10 ** (-snr_db / 20))).astype(np.float32)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------------------------------- log-mel


def test_logmel_info_shape_norm(logmel: LogMelAudioEncoder) -> None:
    assert isinstance(logmel, AudioEncoder)
    info = logmel.info
    assert (info.model_id, info.dim, info.space, info.modality) == (
        "mm_platform/logmel-mfcc-stats",
        LOGMEL_DIM,
        "logmel-mfcc-stats",
        "audio",
    )
    assert LOGMEL_DIM == 200 and len(info.model_version) == 12 and logmel.sample_rate == SR
    assert LogMelAudioEncoder(CPU).info == info  # version is a pure function of the feature config
    v = logmel.encode_waveforms([sine(440), harmonic(220, 2.5), noisy(sine(880), 1)])
    assert v.shape == (3, LOGMEL_DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(v).all()


def test_logmel_building_blocks() -> None:
    fb = mel_filterbank()
    assert fb.shape == (64, 257) and (fb.sum(axis=1) > 0).all()  # no empty band
    assert fb[:, 0].sum() == 0 and fb[:, 257 * 30 // 8000 + 3 :].any()
    d = dct_matrix()
    assert d.shape == (20, 64)
    np.testing.assert_allclose(d @ d.T, np.eye(20), atol=1e-5)  # orthonormal rows
    np.testing.assert_allclose(d.sum(axis=1), 0.0, atol=1e-4)  # c0 (loudness) left out


def test_logmel_deterministic_batch_independent_and_loudness_invariant(logmel: LogMelAudioEncoder) -> None:
    waves = [noisy(harmonic(330, 1.3), 1), sine(440, 0.2), noisy(sine(1000, 3.0), 2), harmonic(110, 0.05)]
    a = logmel.encode_waveforms(waves)
    b = logmel.encode_waveforms(waves)
    np.testing.assert_array_equal(a, b)
    singles = np.concatenate([logmel.encode_waveforms([w]) for w in waves])
    np.testing.assert_allclose(a, singles, atol=2e-5)  # padding/masking does not leak between clips
    quiet = logmel.encode_waveforms([w * 0.05 for w in waves])
    np.testing.assert_allclose(a, quiet, atol=2e-4)


def test_logmel_separates_timbres(logmel: LogMelAudioEncoder) -> None:
    pure = [noisy(sine(220, 1.5), s) for s in (1, 2)]
    rich = [noisy(harmonic(220, 1.5), s) for s in (3, 4)]
    high = [noisy(sine(1760, 1.5), s) for s in (5, 6)]
    v = logmel.encode_waveforms(pure + rich + high)
    same = [cos(v[0], v[1]), cos(v[2], v[3]), cos(v[4], v[5])]
    different = [cos(v[i], v[j]) for i in (0, 1) for j in (2, 3, 4, 5)] + [cos(v[i], v[j]) for i in (2, 3)
                                                                            for j in (4, 5)]  # fmt: skip
    assert min(same) > 0.98
    assert max(different) < min(same) - 0.2


def test_logmel_short_silent_and_empty_inputs(logmel: LogMelAudioEncoder) -> None:
    short = [np.array([0.3], np.float32), sine(440, 0.005), sine(440, 0.02), np.zeros(50, np.float32)]
    v = logmel.encode_waveforms(short)
    assert v.shape == (4, LOGMEL_DIM) and np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert logmel.encode_waveforms([]).shape == (0, LOGMEL_DIM)
    assert logmel.encode_paths([]).shape == (0, LOGMEL_DIM)
    batch2d = np.stack([sine(440, 0.5), sine(660, 0.5)])
    assert logmel.encode_waveforms(batch2d).shape == (2, LOGMEL_DIM)


@pytest.mark.parametrize(
    ("waves", "error", "match"),
    [
        ([np.zeros(0, np.float32)], ValueError, "empty"),
        ([np.array([0.1, np.nan], np.float32)], ValueError, "NaN"),
        ([np.zeros((2, 100), np.float32)], ValueError, "1-D"),
        (np.zeros(100, np.float32), TypeError, "wrap it in a list"),
        ("x.wav", TypeError, "encode_paths"),
    ],
)
def test_logmel_rejects_bad_waveforms(
    logmel: LogMelAudioEncoder, waves: object, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        logmel.encode_waveforms(waves)  # type: ignore[arg-type]


def test_logmel_batching_progress_and_groups(logmel: LogMelAudioEncoder) -> None:
    enc = LogMelAudioEncoder(DeviceConfig(device="cpu", batch_size=3, num_workers=0))
    waves = [sine(200 + 50 * i, 0.1 + 0.05 * (i % 4)) for i in range(8)]
    calls: list[tuple[int, int]] = []
    v = enc.encode_waveforms(waves, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (8, 8) and [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) == 3
    np.testing.assert_allclose(v, logmel.encode_waveforms(waves), atol=2e-5)
    groups = enc._groups([10, 5, 7, 1, 9, 2, 3])
    assert sorted(i for g in groups for i in g) == list(range(7)) and max(len(g) for g in groups) <= 3


def test_logmel_paths_decode_resample_and_threads(logmel: LogMelAudioEncoder, tmp_path: Path) -> None:
    specs = [
        (sine(440, 1.0, sr=44_100), 44_100, "a.wav"),
        (harmonic(220, 1.0), SR, "b.flac"),
        (sine(880, 0.7, sr=48_000), 48_000, "c.ogg"),
        (noisy(sine(300, 1.0), 3), SR, "d.wav"),
    ]
    paths = []
    for x, sr, name in specs:
        sf.write(str(tmp_path / name), x, sr)
        paths.append(tmp_path / name)
    expected = logmel.encode_waveforms([load_audio(p, SR).waveform for p in paths])
    np.testing.assert_allclose(logmel.encode_paths(paths), expected, atol=1e-6)
    threaded = LogMelAudioEncoder(DeviceConfig(device="cpu", batch_size=2, num_workers=2))
    calls: list[tuple[int, int]] = []
    got = threaded.encode_paths([str(p) for p in paths], progress=lambda d, n: calls.append((d, n)))
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert calls == [(2, 4), (4, 4)]
    with pytest.raises(TypeError, match="wrap it in a list"):
        logmel.encode_paths(paths[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_encode_paths_names_the_bad_file(tmp_path: Path, workers: int) -> None:
    enc = LogMelAudioEncoder(DeviceConfig(device="cpu", batch_size=2, num_workers=workers))
    good = tmp_path / "good.wav"
    sf.write(str(good), sine(440), SR)
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio" * 100)
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(SR, np.float32), SR)
    with pytest.raises(AudioDecodeError, match="bad.mp3") as info:
        enc.encode_paths([good, good, good, bad, silent])
    assert info.value.reason == "unreadable_audio" and info.value.path == str(bad)
    with pytest.raises(AudioDecodeError, match="silent_audio"):
        enc.encode_paths([silent])
    with pytest.raises(AudioDecodeError) as too_long:
        LogMelAudioEncoder(CPU, max_audio_seconds=0.5).encode_paths([good])
    assert too_long.value.reason == "audio_too_long"


# ---------------------------------------------------------------------------------------------- CLAP


def test_clap_tiny_model(clap: ClapAudioEncoder, tiny_clap: Path) -> None:
    assert isinstance(clap, AudioEncoder)
    info = clap.info
    assert (info.dim, info.modality, info.model_id) == (TINY_CLAP_DIM, "audio", tiny_clap.name)
    assert info.space == f"clap:{tiny_clap.name}" and len(info.model_version) == 12
    assert clap.sample_rate == 16_000 and clap.window_samples == 16_000
    waves = [sine(440, 0.5), noisy(harmonic(220, 1.0), 1), sine(1000, 0.01)]
    v = clap.encode_waveforms(waves)
    assert v.shape == (3, TINY_CLAP_DIM) and v.dtype == np.float32 and np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(clap.encode_waveforms(waves), v, atol=1e-6)  # deterministic
    singles = np.concatenate([clap.encode_waveforms([w]) for w in waves])
    np.testing.assert_allclose(singles, v, atol=1e-5)  # batch composition does not matter
    assert clap.encode_waveforms([]).shape == (0, TINY_CLAP_DIM)
    with pytest.raises(ValueError, match="empty"):
        clap.encode_waveforms([np.zeros(0, np.float32)])


def test_clap_long_clips_average_windows(clap: ClapAudioEncoder) -> None:
    long = noisy(harmonic(330, 3.5), 2)
    wins = clap.windows(long)
    assert len(wins) == 4 and all(len(w) == clap.window_samples for w in wins)
    np.testing.assert_array_equal(wins[0], long[: clap.window_samples])
    np.testing.assert_array_equal(wins[-1], long[-clap.window_samples :])
    assert len(clap.windows(noisy(sine(200, 60.0), 1))) == clap.max_windows
    calls: list[tuple[int, int]] = []
    v = clap.encode_waveforms(
        [sine(440, 0.3), long, sine(880, 0.3)], progress=lambda d, n: calls.append((d, n))
    )
    expected = clap.encode_waveforms(wins).mean(axis=0)
    np.testing.assert_allclose(v[1], expected / np.linalg.norm(expected), atol=1e-5)
    assert calls[-1] == (3, 3) and len(calls) == 2  # 6 windows, 4 per batch


def test_clap_version_stable_and_paths(clap: ClapAudioEncoder, tiny_clap: Path, tmp_path: Path) -> None:
    again = ClapAudioEncoder(CPU, str(tiny_clap))
    rebuilt = ClapAudioEncoder(CPU, str(build_tiny_clap(tmp_path / "rebuilt")))
    assert again.info == clap.info
    assert rebuilt.info.model_version == clap.info.model_version  # same content, same version
    p44 = tmp_path / "a.wav"
    sf.write(str(p44), sine(440, 0.8, sr=44_100), 44_100)
    p16 = tmp_path / "b.flac"
    sf.write(str(p16), harmonic(220, 1.2), SR)
    got = clap.encode_paths([p44, p16])
    expected = clap.encode_waveforms([load_audio(p44, 16_000).waveform, load_audio(p16, 16_000).waveform])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(AudioDecodeError, match="bad.wav"):
        clap.encode_paths([p44, bad])


def test_clap_unavailable_fails_fast(tiny_clap: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(EncoderUnavailable, match="MM_CLAP_MODEL") as info:
        ClapAudioEncoder(CPU, "mm-test/no-such-clap")
    assert "not in the local Hugging Face cache" in str(info.value)
    with pytest.raises(EncoderUnavailable, match="does not exist"):
        ClapAudioEncoder(CPU, str(tmp_path / "missing_dir"))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((tiny_clap / "config.json").read_bytes())
    with pytest.raises(EncoderUnavailable, match="incomplete: preprocessor_config.json"):
        ClapAudioEncoder(CPU, str(partial))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.json", "preprocessor_config.json"):
        (broken / f).write_bytes((tiny_clap / f).read_bytes())
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(EncoderUnavailable, match="cannot load CLAP model"):
        ClapAudioEncoder(CPU, str(broken))
    assert time.monotonic() - t0 < 5


def test_locate_clap_weights(tiny_clap: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert locate_clap_weights(str(tiny_clap)) == (True, f"local CLAP directory {tiny_clap}")
    local, detail = locate_clap_weights("laion/clap-htsat-unfused")
    assert not local and "not in the local Hugging Face cache" in detail
    assert locate_clap_weights("") == (False, "no CLAP model given")
    assert not locate_clap_weights("not a valid id!")[0]
    assert find_clap_weights("mm-test/x").host == ("huggingface.co", 443)

    # a hub id whose files sit in the Hugging Face cache: located and loaded without any network call
    import huggingface_hub.constants as hf_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hub" / "models--mm-test--tiny-clap"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in ("config.json", "preprocessor_config.json", "model.safetensors"):
        os.symlink(tiny_clap / f, snap / f)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    where = find_clap_weights("mm-test/tiny-clap")
    assert where.status == "cached" and len(where.files) == 3
    connects = refuse_network(monkeypatch)
    try:
        enc = ClapAudioEncoder(CPU, "mm-test/tiny-clap")
    except EncoderUnavailable as exc:  # pragma: no cover - transformers resolved its cache path at import
        pytest.skip(f"transformers does not follow a patched HF_HUB_CACHE here: {exc}")
    assert connects == []
    assert enc.info.model_id == "mm-test/tiny-clap" and enc.info.space == "clap:mm-test/tiny-clap"
    direct = ClapAudioEncoder(CPU, str(tiny_clap))
    assert enc.info.model_version == direct.info.model_version


# ---------------------------------------------------------------------------------------------- EncoderSet


def test_encoder_set_offline_uses_logmel() -> None:
    es = load_encoders(EncoderSettings(profile="offline"), CPU)
    assert es.audio_reason == ""
    enc = es.audio()
    assert isinstance(enc, LogMelAudioEncoder) and es.encoder("audio") is enc
    assert "offline" in es.audio_reason
    assert es.shares_space("audio", "audio") and not es.shares_space("audio", "text")
    assert not es.shares_space("text", "image")
    with pytest.raises(ValueError, match="audio"):
        es.shares_space("audio", "video")


def test_encoder_set_clip_profile_uses_local_clap(tiny_clip: TinyClip, tiny_clap: Path) -> None:
    settings = tiny_clip.settings(clap_model=str(tiny_clap))
    assert resolve_audio(settings, "clip")[:2] == ("clap", False)
    es = load_encoders(settings, CPU)
    enc = es.audio()
    assert isinstance(enc, ClapAudioEncoder) and es.audio() is enc
    assert enc.info.space == f"clap:{tiny_clap.name}" and "locally" in es.audio_reason
    assert es.shares_space("text", "image")
    assert not es.shares_space("audio", "image") and not es.shares_space("text", "audio")
    assert es.encoder("audio").encode_waveforms([sine(440)]).shape == (1, TINY_CLAP_DIM)


def test_encoder_set_clip_profile_falls_back_to_logmel(
    tiny_clip: TinyClip, tiny_clap: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    es = load_encoders(tiny_clip.settings(clap_model="mm-test/uncached-clap"), CPU)
    enc = es.audio()
    assert isinstance(enc, LogMelAudioEncoder)
    assert "not in the local Hugging Face cache" in es.audio_reason and "HF_HUB_OFFLINE" in es.audio_reason
    assert time.monotonic() - t0 < 3
    # a located directory that fails to load also falls back, with the error in the reason
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.json", "preprocessor_config.json"):
        (broken / f).write_bytes((tiny_clap / f).read_bytes())
    (broken / "model.safetensors").write_bytes(b"garbage")
    es = load_encoders(tiny_clip.settings(clap_model=str(broken)), CPU)
    assert isinstance(es.audio(), LogMelAudioEncoder) and "failed to load" in es.audio_reason


def test_encoder_set_unreachable_hub_is_quick(tiny_clip: TinyClip, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HF_HUB_OFFLINE the probe runs; against a closed local port it fails at once."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    kind, download, reason = resolve_audio(
        tiny_clip.settings(clap_model="mm-test/uncached-clap", probe_timeout_s=1.0), "clip"
    )
    assert (kind, download) == ("logmel", False) and "not reachable" in reason
    assert time.monotonic() - t0 < 3
