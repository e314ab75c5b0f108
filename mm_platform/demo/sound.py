"""Demo sound clips: hum/bell/buzz timbre families with pitch variants and coloured noise, and their
deterministic WAV/FLAC/OGG/MP3 encoding."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import soundfile as sf

from mm_platform.demo.categories import AUDIO_SAMPLE_RATE, AUDIO_SECONDS, P_VARIANT_CUE, Category

# Lowest fundamental (Hz) of each timbre family; variant 0 draws its pitch 0-6 semitones above it,
# variant 1 3-9 semitones above (so the two ranges half overlap).
_SOUND_BASE_HZ = {"hum": 110.0, "bell": 420.0, "buzz": 180.0}
_BELL_RATIOS = np.array([1.0, 2.76, 5.40, 8.93, 13.34])
_BELL_AMPS = np.array([1.0, 0.6, 0.45, 0.3, 0.2])


def _partials(t: np.ndarray, freqs: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Sum of sinusoids: ``sum_k amps[k] * sin(2 pi freqs[k] t + phases[k])`` (vectorised)."""
    return amps @ np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None])


_TABLE_SIZE = 2048


def _harmonic_tone(t: np.ndarray, f0: float, k: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """``sum_k amps[k] * sin(2 pi k f0 t + phases[k])`` through a one-period wavetable (cheap for many
    harmonics; the table is band-limited, so no aliasing)."""
    x = np.arange(_TABLE_SIZE + 1) / _TABLE_SIZE
    table = _partials(x, k.astype(np.float64), amps, phases)
    return np.interp((f0 * t) % 1.0, x, table)


def _ramp_envelope(t: np.ndarray, attack: float, release: float) -> np.ndarray:
    dur = t[-1] if len(t) else 0.0
    return np.clip(np.minimum(t / attack, (dur - t) / release), 0.0, 1.0)


def _sound_hum(rng: np.random.Generator, t: np.ndarray, f0: float) -> np.ndarray:
    k = np.arange(1, 41, dtype=np.float64)
    k = k[k * f0 < 5000.0]
    amps = (1.0 / k) ** rng.uniform(0.9, 1.3)
    tone = _harmonic_tone(t, f0, k, amps, rng.uniform(0, 2 * np.pi, size=len(k)))
    tremolo = 1.0 + rng.uniform(0.15, 0.45) * np.sin(2 * np.pi * rng.uniform(4.0, 7.0) * t)
    return tone * tremolo * _ramp_envelope(t, rng.uniform(0.03, 0.15), rng.uniform(0.1, 0.25))


def _sound_bell(rng: np.random.Generator, t: np.ndarray, f0: float) -> np.ndarray:
    freqs = f0 * _BELL_RATIOS * (1.0 + rng.normal(0.0, 0.01, size=len(_BELL_RATIOS)))
    keep = freqs < 7500.0
    freqs = freqs[keep]
    amps = _BELL_AMPS[keep] * rng.uniform(0.7, 1.3, size=len(freqs))
    tau = rng.uniform(0.2, 0.45) / (1.0 + 0.5 * np.arange(len(freqs)))
    phases = rng.uniform(0, 2 * np.pi, size=len(freqs))
    onsets = [0.0] + ([float(rng.uniform(0.3, 0.6))] if rng.random() < 0.5 else [])
    out = np.zeros_like(t)
    for onset in onsets:
        i0 = int(np.searchsorted(t, onset))
        dt = (t[i0:] - t[i0]).astype(np.float32)
        decay = np.exp(-dt[None, :] / tau[:, None].astype(np.float32))
        ring = np.sin(2 * np.pi * freqs[:, None].astype(np.float32) * dt[None, :] + phases[:, None].astype(np.float32))
        out[i0:] += amps.astype(np.float32) @ (decay * ring)
    return out * _ramp_envelope(t, 0.002, 0.05)


def _fft_len(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()  # a power of two >= n: FFTs of odd lengths are slow


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """Unit-RMS noise band-limited to ``[lo, hi]`` Hz."""
    m = _fft_len(n)
    spec = np.fft.rfft(rng.normal(size=m))
    f = np.fft.rfftfreq(m, 1.0 / AUDIO_SAMPLE_RATE)
    spec[(f < lo) | (f > hi)] = 0.0
    x = np.fft.irfft(spec, m)[:n]
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def _sound_buzz(rng: np.random.Generator, t: np.ndarray, f0: float) -> np.ndarray:
    k = np.arange(1, 40, 2, dtype=np.float64)
    k = k[k * f0 < 4000.0]
    tone = _harmonic_tone(t, f0, k, 1.0 / k, rng.uniform(0, 0.3, size=len(k)))
    tone /= max(float(np.sqrt(np.mean(tone**2))), 1e-12)
    centre, width = rng.uniform(1000.0, 2500.0), rng.uniform(400.0, 800.0)
    tone = tone + rng.uniform(0.25, 0.5) * _band_noise(rng, len(t), centre - width / 2, centre + width / 2)
    duty = rng.uniform(-0.3, 0.3)  # threshold of the smooth square gate
    gate = 0.5 * (1.0 + np.tanh(8.0 * (np.sin(2 * np.pi * rng.uniform(3.0, 6.0) * t + rng.uniform(0, 2 * np.pi)) - duty)))
    return tone * gate * _ramp_envelope(t, 0.01, 0.05)


_SOUNDS = {"hum": _sound_hum, "bell": _sound_bell, "buzz": _sound_buzz}


def _coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS noise with a 1/f^alpha power spectrum, alpha in [0, 1.5] (white to reddish)."""
    m = _fft_len(n)
    spec = np.fft.rfft(rng.normal(size=m))
    f = np.maximum(np.fft.rfftfreq(m, 1.0 / AUDIO_SAMPLE_RATE), 20.0)
    x = np.fft.irfft(spec / f ** (rng.uniform(0.0, 1.5) / 2), m)[:n]
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def make_sound(cat: Category, rng: np.random.Generator) -> np.ndarray:
    """A jittered ~1 s mono clip (float32, peak 0.3-0.9, :data:`AUDIO_SAMPLE_RATE`) in ``cat``'s timbre
    family, with background noise at 6-30 dB SNR."""
    n = int(round(AUDIO_SAMPLE_RATE * AUDIO_SECONDS * rng.uniform(0.9, 1.0)))
    t = np.arange(n, dtype=np.float64) / AUDIO_SAMPLE_RATE
    variant = cat.sound_variant if rng.random() < P_VARIANT_CUE else 1 - cat.sound_variant
    f0 = _SOUND_BASE_HZ[cat.sound] * 2.0 ** ((rng.uniform(0.0, 6.0) + 3.0 * variant) / 12.0)
    tone = _SOUNDS[cat.sound](rng, t, f0)
    tone /= max(float(np.sqrt(np.mean(tone**2))), 1e-12)
    x = tone + _coloured_noise(rng, n) * 10.0 ** (-rng.uniform(6.0, 30.0) / 20.0)
    x *= rng.uniform(0.3, 0.9) / max(float(np.max(np.abs(x))), 1e-12)
    return x.astype(np.float32)


#: Audio container per file extension: (libsndfile format, subtype).
AUDIO_FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
_ALT_AUDIO_EXTS = ("flac", "ogg", "mp3")


def _ogg_crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return tuple(table)


_OGG_CRC = _ogg_crc_table()


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _ogg_set_serial(data: bytes, serial: int) -> bytes:
    """Rewrite the stream serial number of every Ogg page (and its CRC): libsndfile draws it from the
    clock, which would make OGG output differ between runs."""
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos:pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_seg = out[pos + 26]
        length = 27 + n_seg + sum(out[pos + 27:pos + 27 + n_seg])
        out[pos + 14:pos + 18] = struct.pack("<I", serial)
        out[pos + 22:pos + 26] = b"\0\0\0\0"
        out[pos + 22:pos + 26] = struct.pack("<I", _ogg_crc(bytes(out[pos:pos + length])))
        pos += length
    return bytes(out)


def audio_bytes(samples: np.ndarray, ext: str = "wav", sample_rate: int = AUDIO_SAMPLE_RATE) -> bytes:
    """Encode a mono float clip (full scale 1.0) as 16-bit WAV/FLAC, OGG Vorbis or MP3 (``ext``),
    deterministically."""
    fmt, subtype = AUDIO_FORMATS[ext]
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format=fmt, subtype=subtype)
    data = buf.getvalue()
    if ext == "ogg":
        data = _ogg_set_serial(data, zlib.crc32(pcm.tobytes()) & 0x7FFFFFFF)
    return data
