"""Encoder profile resolution and the lazily-built :class:`EncoderSet`.

Profiles:
    ``offline``: MiniLM (text, 384-d) + EfficientNet-Lite0 (image, 1280-d), both bundled in pip packages;
        two separate vector spaces.
    ``clip``: one open_clip model for text and image, one shared space.
    ``auto``: ``clip`` when the CLIP weights are local (checkpoint file, or tag already cached) or the hub
        answers a TCP connect within ``probe_timeout_s``; else ``offline``.

Audio (:meth:`EncoderSet.audio`): ``offline`` uses the log-mel/MFCC statistics encoder; ``clip`` uses the CLAP
audio tower (``clap_model``) when it is local (directory or cached hub id) or downloadable (the hub answers),
else falls back to log-mel; the choice and its reason are in ``EncoderSet.audio_reason``. Audio never shares
a space with text or image.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from mm_platform.lib.device import DeviceConfig, check_device
from mm_platform.lib.encoders.audio import (
    DEFAULT_CLAP_MODEL,
    ClapAudioEncoder,
    LogMelAudioEncoder,
    clap_model_info,
    find_clap_weights,
    logmel_model_info,
)
from mm_platform.lib.encoders.base import (
    MODALITIES,
    AudioEncoder,
    EncoderUnavailable,
    ImageEncoder,
    ModelInfo,
    TextEncoder,
)
from mm_platform.lib.encoders.clip import (
    CLIP_HINT,
    ClipBundle,
    ClipImageEncoder,
    ClipTextEncoder,
    ClipWeights,
    clip_model_info,
    load_clip,
    locate_clip_weights,
    normalise_arch,
    register_clip_config,
    unavailable,
)

from mm_platform.lib.settings import BY_NAME  # noqa: E402 - after the encoder imports

logger = logging.getLogger(__name__)

PROFILES: tuple[str, ...] = ("auto", "offline", "clip")
_PROBE_CACHE_S = 30.0


@dataclass(frozen=True)
class EncoderSettings:
    """Which encoders to use.

    Attributes:
        profile: ``"auto"``, ``"offline"`` or ``"clip"``.
        clip_arch: open_clip architecture name.
        clip_pretrained: an open_clip pretrained tag, or a path to a local checkpoint file.
        clip_config: optional custom open_clip model-config JSON (named ``<clip_arch>.json``).
        probe_timeout_s: how long ``auto`` / ``clip`` wait for the hub to answer a TCP connect.
        clap_model: CLAP model for audio in the ``clip`` profile: a hub id or a local directory.
    """

    profile: str = BY_NAME["MM_MODEL_PROFILE"].default
    clip_arch: str = BY_NAME["MM_CLIP_ARCH"].default
    clip_pretrained: str = BY_NAME["MM_CLIP_PRETRAINED"].default
    clip_config: str | None = None
    probe_timeout_s: float = 2.0
    clap_model: str = DEFAULT_CLAP_MODEL

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(
                f"invalid encoder profile {self.profile!r}: expected one of {', '.join(PROFILES)}"
            )
        if not self.probe_timeout_s >= 0:
            raise ValueError(f"probe_timeout_s must be >= 0, got {self.probe_timeout_s!r}")


# --------------------------------------------------------------------------------------------------------
# hub probe

_probe_cache: dict[tuple[str, int], tuple[float, bool, str]] = {}
_probe_lock = threading.Lock()


def hub_offline_requested() -> bool:
    """True when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set in the environment."""
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def probe_host(host: tuple[str, int], timeout_s: float) -> tuple[bool, str]:
    """Whether ``host`` accepts a TCP connection within ``timeout_s`` (DNS included; never blocks longer).

    Returns ``(reachable, reason)``. Honours HF_HUB_OFFLINE (unreachable without trying). Results are
    cached for 30 s per host so repeated loads do not pay the timeout again.
    """
    if hub_offline_requested():
        return False, "HF_HUB_OFFLINE is set"
    now = time.monotonic()
    with _probe_lock:
        hit = _probe_cache.get(host)
        if hit is not None and now - hit[0] < _PROBE_CACHE_S:
            return hit[1], hit[2]
    result: list[tuple[bool, str]] = []

    def attempt() -> None:
        try:
            with socket.create_connection(host, timeout=max(timeout_s, 0.01)):
                result.append((True, f"{host[0]}:{host[1]} reachable"))
        except OSError as exc:
            result.append((False, f"{host[0]}:{host[1]} unreachable ({type(exc).__name__}: {exc})"))

    # getaddrinfo ignores socket timeouts, so the attempt runs in a daemon thread with a hard deadline.
    thread = threading.Thread(target=attempt, name="mm-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.05)
    reachable, reason = (
        result[0] if result else (False, f"{host[0]}:{host[1]} no answer within {timeout_s:g}s")
    )
    with _probe_lock:
        _probe_cache[host] = (time.monotonic(), reachable, reason)
    return reachable, reason


# --------------------------------------------------------------------------------------------------------
# profile resolution


def _clip_weights(settings: EncoderSettings) -> ClipWeights:
    arch = normalise_arch(settings.clip_arch)
    if settings.clip_config:
        register_clip_config(settings.clip_config, arch)  # raises EncoderUnavailable
    import open_clip

    if open_clip.get_model_config(arch) is None:
        return ClipWeights("missing", detail=f"unknown open_clip architecture {arch!r}")
    return locate_clip_weights(arch, settings.clip_pretrained)


def no_clip_weights_here(settings: EncoderSettings) -> str | None:
    """Why no CLIP weights can be had on this machine, told without importing open_clip (4 s: torch and
    torchvision); None when only open_clip can tell. Exact, never a guess: downloads are off
    (``HF_HUB_OFFLINE``), the pretrained setting is a tag (not a checkpoint path), no custom config is given,
    and neither the Hugging Face cache nor open_clip's own download cache (``~/.cache/clip``) holds any model."""
    if not hub_offline_requested() or settings.clip_config:
        return None
    pretrained = settings.clip_pretrained or ""
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        return None  # a checkpoint path: open_clip's lookup says whether it exists, and names it if not
    from huggingface_hub import constants

    hub_cache = constants.HF_HUB_CACHE
    if os.path.isdir(hub_cache) and any(name.startswith("models--") for name in os.listdir(hub_cache)):
        return None
    clip_cache = os.path.expanduser("~/.cache/clip")
    if os.path.isdir(clip_cache) and os.listdir(clip_cache):
        return None
    return (f"no CLIP weights on this machine (no model in the Hugging Face cache {hub_cache} or in {clip_cache}) "
            "and downloads are off (HF_HUB_OFFLINE)")


def _clip_plan(settings: EncoderSettings) -> tuple[bool, bool, str]:
    """``(usable, needs_download, reason)`` for the configured CLIP weights, without loading anything."""
    try:
        where = _clip_weights(settings)
    except EncoderUnavailable as exc:
        return False, False, str(exc).replace(f". {CLIP_HINT}", "")
    if where.local:
        return True, False, f"CLIP weights available locally: {where.detail}"
    if where.status == "missing":
        return False, False, where.detail
    assert where.host is not None
    reachable, why = probe_host(where.host, settings.probe_timeout_s)
    if reachable:
        return True, True, f"{where.detail}; {why}, weights will be downloaded"
    return False, True, f"{where.detail} and the hub is not reachable ({why})"


def resolve_profile(settings: EncoderSettings) -> tuple[str, str]:
    """Resolve ``settings.profile`` to ``("offline" | "clip", human-readable reason)``.

    ``offline`` / ``clip`` are returned as is. ``auto`` picks ``clip`` when its weights are available
    locally or the hub answers within ``probe_timeout_s``, else ``offline``; it never loads a model and
    takes at most about ``probe_timeout_s``.
    """
    if settings.profile in ("offline", "clip"):
        return settings.profile, f"profile {settings.profile!r} requested"
    why_not = no_clip_weights_here(settings)  # an air-gapped machine without CLIP: no open_clip import (4 s)
    if why_not is not None:
        return "offline", f"auto: CLIP not available ({why_not}); using offline MiniLM + EfficientNet-Lite0"
    usable, _, reason = _clip_plan(settings)
    if usable:
        return "clip", f"auto: {reason}"
    return "offline", f"auto: CLIP not available ({reason}); using offline MiniLM + EfficientNet-Lite0"


def resolve_audio(settings: EncoderSettings, profile: str) -> tuple[str, bool, str]:
    """Which audio encoder a resolved ``profile`` gets: ``("clap" | "logmel", allow_download, reason)``.

    ``offline`` -> log-mel. ``clip`` -> CLAP when ``settings.clap_model`` is a complete local directory or a
    cached hub id, or the hub answers a TCP connect within ``probe_timeout_s`` (then it is downloaded);
    else log-mel. Loads nothing; takes at most about ``probe_timeout_s``.
    """
    if profile != "clip":
        return "logmel", False, f"profile {profile!r}: built-in log-mel/MFCC audio encoder"
    where = find_clap_weights(settings.clap_model)
    if where.local:
        return "clap", False, f"CLAP available locally: {where.detail}"
    if where.status == "missing":
        return "logmel", False, f"CLAP not available ({where.detail}); using the log-mel/MFCC audio encoder"
    assert where.host is not None
    reachable, why = probe_host(where.host, settings.probe_timeout_s)
    if reachable:
        return "clap", True, f"{where.detail}; {why}, CLAP will be downloaded"
    return (
        "logmel",
        False,
        f"CLAP not available ({where.detail} and the hub is not reachable: {why}); "
        "using the log-mel/MFCC audio encoder",
    )


# --------------------------------------------------------------------------------------------------------
# encoder set


@dataclass
class EncoderSet:
    """The text, image and audio encoders of one profile, each built on first use and cached.

    Build with :func:`load_encoders`. Thread-safe. ``audio_reason`` says which audio encoder was chosen and
    why (empty until :meth:`audio` is first called).
    """

    profile: str
    reason: str
    settings: EncoderSettings
    device: DeviceConfig
    allow_download: bool = False
    _text: TextEncoder | None = field(default=None, init=False, repr=False)
    _image: ImageEncoder | None = field(default=None, init=False, repr=False)
    _audio: AudioEncoder | None = field(default=None, init=False, repr=False)
    audio_reason: str = field(default="", init=False)
    _clip: ClipBundle | None = field(default=None, init=False, repr=False)
    _infos: dict[str, ModelInfo] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    def _clip_bundle(self) -> ClipBundle:
        with self._lock:
            if self._clip is None:
                self._clip = load_clip(
                    self.settings.clip_arch,
                    self.settings.clip_pretrained,
                    device=self.device,
                    config_path=self.settings.clip_config,
                    allow_download=self.allow_download,
                )
            return self._clip

    def text(self) -> TextEncoder:
        """The text encoder (MiniLM, or CLIP's text tower); loaded once."""
        with self._lock:
            if self._text is None:
                if self.profile == "clip":
                    self._text = ClipTextEncoder(self._clip_bundle())
                else:
                    from mm_platform.lib.encoders.text import MiniLMTextEncoder

                    self._text = MiniLMTextEncoder(self.device)
                self._infos["text"] = self._text.info
            return self._text

    def image(self) -> ImageEncoder:
        """The image encoder (EfficientNet-Lite0, or CLIP's image tower); loaded once."""
        with self._lock:
            if self._image is None:
                if self.profile == "clip":
                    self._image = ClipImageEncoder(self._clip_bundle())
                else:
                    from mm_platform.lib.encoders.image import EfficientNetImageEncoder

                    self._image = EfficientNetImageEncoder(self.device)
                self._infos["image"] = self._image.info
            return self._image

    def audio(self) -> AudioEncoder:
        """The audio encoder (CLAP in the clip profile when it can be had, else log-mel); loaded once.

        A CLAP model that is located but fails to load also falls back to log-mel (logged as a warning);
        ``audio_reason`` records the choice either way.
        """
        with self._lock:
            if self._audio is None:
                kind, download, reason = resolve_audio(self.settings, self.profile)
                encoder: AudioEncoder | None = None
                if kind == "clap":
                    try:
                        encoder = ClapAudioEncoder(
                            self.device, self.settings.clap_model, allow_download=download
                        )
                    except EncoderUnavailable as exc:
                        reason = f"CLAP failed to load ({exc}); using the log-mel/MFCC audio encoder"
                        logger.warning("audio encoder: %s", reason)
                if encoder is None:
                    encoder = LogMelAudioEncoder(self.device)
                self._audio = encoder
                self._infos["audio"] = encoder.info
                self.audio_reason = reason
                logger.info("audio encoder %s (%s)", encoder.info.model_id, reason)
            return self._audio

    def loaded(self, modality: str) -> bool:
        """Whether the modality's encoder has been built in this process (a test and the logs ask)."""
        return {"text": self._text, "image": self._image, "audio": self._audio}[modality] is not None

    def model_info(self, modality: str) -> ModelInfo:
        """Identity of the modality's encoder (id, version, dim, space), without loading weights where the
        files tell it: MiniLM, EfficientNet-Lite0, log-mel, and local CLIP weights. The embedding cache is
        keyed by it, so a step whose contents are all cached never loads a model. A CLAP model (or CLIP to be
        downloaded) is loaded to learn it. Once the encoder is built, its own ``info`` is the answer (it differs
        from the files' only when loading fell back, e.g. CLAP to log-mel)."""
        with self._lock:
            if modality in self._infos:
                return self._infos[modality]
            info = None if self.loaded(modality) else self._peek_info(modality)
            if info is None:
                info = self.encoder(modality).info
            self._infos[modality] = info
            return info

    def _peek_info(self, modality: str) -> ModelInfo | None:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}")
        if modality == "audio":
            kind, _, _ = resolve_audio(self.settings, self.profile)
            return logmel_model_info() if kind == "logmel" else clap_model_info(self.settings.clap_model)
        if self.profile == "clip":
            return clip_model_info(self.settings.clip_arch, self.settings.clip_pretrained, modality,
                                   config_path=self.settings.clip_config)
        if modality == "text":
            from mm_platform.lib.encoders.minilm_files import minilm_model_info

            return minilm_model_info()
        from mm_platform.lib.encoders.image import efficientnet_lite0_info

        return efficientnet_lite0_info()

    def encoder(self, modality: str) -> TextEncoder | ImageEncoder | AudioEncoder:
        """``text()``, ``image()`` or ``audio()`` by modality name."""
        if modality == "text":
            return self.text()
        if modality == "image":
            return self.image()
        if modality == "audio":
            return self.audio()
        raise ValueError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}")

    def shares_space(self, a: str, b: str) -> bool:
        """True when vectors of modality ``a`` and ``b`` are directly comparable.

        ``clip``: text and image share one space. ``offline``: only a modality with itself. Audio only ever
        shares a space with audio.
        """
        for m in (a, b):
            if m not in MODALITIES:
                raise ValueError(f"unknown modality {m!r}: expected one of {', '.join(MODALITIES)}")
        return a == b or (self.profile == "clip" and {a, b} == {"text", "image"})


def load_encoders(settings: EncoderSettings, device: DeviceConfig) -> EncoderSet:
    """Resolve the profile and return an :class:`EncoderSet` (models load lazily on first use).

    Raises:
        ValueError: the device spec names a device that is not available.
        EncoderUnavailable: profile ``clip`` (asked for, or chosen by ``auto``) whose weights cannot be had:
            not a local file, not cached, and the hub does not answer (decided within ~probe_timeout_s).
    """
    check_device(device.device)  # fail early on an unavailable device (torch is imported for a CUDA spec only)
    profile, reason = resolve_profile(settings)
    allow_download = False
    if profile == "clip":
        usable, allow_download, why = _clip_plan(settings)
        if not usable:
            raise unavailable(f"CLIP profile requested but its weights cannot be had: {why}")
    logger.info("encoder profile %s (%s)", profile, reason)
    return EncoderSet(
        profile=profile, reason=reason, settings=settings, device=device, allow_download=allow_download
    )
