"""Audio encoders: an offline log-mel/MFCC statistics embedding (torch only) and the CLAP audio tower.

Both take mono float32 waveforms at their own ``sample_rate`` (:meth:`encode_waveforms`) or audio files
(:meth:`encode_paths`, decoded and resampled by :func:`mm_platform.lib.media.audio.load_audio` in a small thread
pool that runs one batch ahead of inference).

:class:`LogMelAudioEncoder` needs no weights: 16 kHz, STFT (512-point Hann, hop 10 ms), 64 HTK mel bands
(30 Hz - 8 kHz, Slaney area-normalised), log-mel in dB floored 80 dB below the clip's maximum, 20 MFCCs
(orthonormal DCT-II of the log-mel, c1..c20; c0 is loudness) and per-clip statistics over time:

============  ====  =====================================================================================
group         dims  content
============  ====  =====================================================================================
mel_mean        64  mean log-mel per band minus the clip's overall mean (spectral shape, loudness-free)
mel_std         64  std of log-mel per band over time
mfcc_mean       20  mean of c1..c20
mfcc_std        20  std of c1..c20
delta_std       20  std of the frame-to-frame MFCC differences
spectral        12  mean and std of centroid, bandwidth, flatness, 85% roll-off, zero-crossing rate and
                    frame RMS relative to the clip's loudest frame (each mapped to a signed, ~unit scale)
============  ====  =====================================================================================

Each group is divided by ``max(||group||, ref * sqrt(dims))`` (capped at unit norm, but near-zero groups,
e.g. the flat spectral shape of noise, are not blown up into random directions), weighted, concatenated and
L2-normalised: :data:`LOGMEL_DIM` = 200. Scaling a clip's amplitude leaves its vector unchanged.

:class:`ClapAudioEncoder` runs the audio tower of a transformers ``ClapModel`` (e.g.
``laion/clap-htsat-unfused``: 48 kHz, 10 s windows). Clips longer than one window are cut into up to
``max_windows`` evenly spaced windows whose embeddings are averaged (deterministic: the feature extractor's
random crop is never used).

Layout: :mod:`.waveform` (shared base), :mod:`.logmel`, :mod:`.weights` (CLAP weight discovery) and
:mod:`.clap`; this package re-exports their public names.
"""

from __future__ import annotations

from mm_platform.lib.encoders.audio.clap import (
    ClapAudioEncoder,
    clap_model_info,
)
from mm_platform.lib.encoders.audio.logmel import (
    LOGMEL_ACTIVE_DB,
    LOGMEL_DIM,
    LOGMEL_FMAX,
    LOGMEL_FMIN,
    LOGMEL_GROUPS,
    LOGMEL_HOP,
    LOGMEL_MODEL_ID,
    LOGMEL_N_FFT,
    LOGMEL_N_MELS,
    LOGMEL_N_MFCC,
    LOGMEL_ROLLOFF,
    LOGMEL_SAMPLE_RATE,
    LOGMEL_SPACE,
    LOGMEL_TOP_DB,
    LogMelAudioEncoder,
    dct_matrix,
    logmel_config,
    logmel_model_info,
    mel_filterbank,
)
from mm_platform.lib.encoders.audio.waveform import (
    WaveformAudioEncoder,
    check_waveforms,
)
from mm_platform.lib.encoders.audio.weights import (
    CLAP_HINT,
    CLAP_MAX_WINDOWS,
    DEFAULT_CLAP_MODEL,
    ClapWeights,
    clap_unavailable,
    find_clap_weights,
    locate_clap_weights,
)

__all__ = [
    "CLAP_HINT",
    "CLAP_MAX_WINDOWS",
    "DEFAULT_CLAP_MODEL",
    "LOGMEL_ACTIVE_DB",
    "LOGMEL_DIM",
    "LOGMEL_FMAX",
    "LOGMEL_FMIN",
    "LOGMEL_GROUPS",
    "LOGMEL_HOP",
    "LOGMEL_MODEL_ID",
    "LOGMEL_N_FFT",
    "LOGMEL_N_MELS",
    "LOGMEL_N_MFCC",
    "LOGMEL_ROLLOFF",
    "LOGMEL_SAMPLE_RATE",
    "LOGMEL_SPACE",
    "LOGMEL_TOP_DB",
    "ClapAudioEncoder",
    "ClapWeights",
    "LogMelAudioEncoder",
    "WaveformAudioEncoder",
    "check_waveforms",
    "clap_model_info",
    "clap_unavailable",
    "dct_matrix",
    "find_clap_weights",
    "locate_clap_weights",
    "logmel_config",
    "logmel_model_info",
    "mel_filterbank",
]
