"""open_clip text + image encoders sharing one embedding space.

Weights are located *before* anything is loaded (:func:`locate_clip_weights`): a local checkpoint file, or a
pretrained tag whose file is already in the Hugging Face / open_clip cache, loads with the Hub forced
offline (no network call at all); a tag that would have to be downloaded is only fetched when the caller
allows it (the hub answered a probe), otherwise :class:`EncoderUnavailable` is raised at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from mm_platform.lib.device import DeviceConfig, LazyModule, OOMBackoff, autocast_context, resolve_device
from mm_platform.lib.encoders.base import (
    EncoderUnavailable,
    ModelInfo,
    ProgressFn,
    check_texts,
    content_version,
    empty_vectors,
    hub_offline,
    state_dict_hash,
)
from mm_platform.lib.encoders.image import TorchImageEncoder

if TYPE_CHECKING:
    import torch
else:  # imported on first use (lib/device.py LazyModule)
    torch = LazyModule("torch")

logger = logging.getLogger(__name__)

CLIP_HINT = (
    "Set MM_CLIP_PRETRAINED to an open_clip pretrained tag whose weights are cached locally (or downloadable) "
    "or to a local checkpoint file, MM_CLIP_ARCH to the matching open_clip architecture, and MM_CLIP_CONFIG "
    "to a model-config JSON for a custom architecture; or set MM_MODEL_PROFILE=offline to use the bundled "
    "MiniLM + EfficientNet-Lite0 encoders."
)
DEFAULT_HF_ENDPOINT = "https://huggingface.co"


def normalise_arch(arch: str) -> str:
    """open_clip's spelling of an architecture name (``ViT-B/32`` -> ``ViT-B-32``)."""
    return arch.strip().replace("/", "-")


def unavailable(msg: str) -> EncoderUnavailable:
    """An :class:`EncoderUnavailable` for CLIP whose message ends with the configuration hint."""
    return EncoderUnavailable(f"{msg}. {CLIP_HINT}")


# --------------------------------------------------------------------------------------------------------
# architecture configs

_CONFIG_LOCK = threading.Lock()


def register_clip_config(config_path: str | os.PathLike[str], arch: str) -> None:
    """Register a custom open_clip model-config JSON so ``arch`` can be created.

    open_clip names a config by its file stem, so the file must be ``<arch>.json``. Registering the same
    content again is a no-op.

    Raises:
        EncoderUnavailable: the file is missing, not a valid config, or named differently from ``arch``.
    """
    import open_clip

    path = Path(config_path).expanduser()
    if not path.is_file():
        raise unavailable(f"CLIP model config {str(path)!r} does not exist")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise unavailable(f"CLIP model config {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise unavailable(f"CLIP model config {str(path)!r} lacks embed_dim / vision_cfg / text_cfg")
    if path.stem != arch:
        raise unavailable(
            f"CLIP model config {str(path)!r} defines architecture {path.stem!r} (open_clip uses the file "
            f"name), but the architecture asked for is {arch!r}; rename the file or set MM_CLIP_ARCH={path.stem}"
        )
    with _CONFIG_LOCK:
        if open_clip.get_model_config(arch) == cfg:
            return
        open_clip.add_model_config(path)


# --------------------------------------------------------------------------------------------------------
# locating weights


@dataclass(frozen=True)
class ClipWeights:
    """Where CLIP weights for (arch, pretrained) are.

    Attributes:
        status: ``"file"`` (a local checkpoint path), ``"cached"`` (a tag whose file is in the local cache),
            ``"remote"`` (a known tag not cached: needs a download from ``host``) or ``"missing"``.
        path: the local file for ``file`` / ``cached``.
        host: ``(hostname, port)`` a download would come from, for ``remote``.
        detail: a human-readable explanation.
    """

    status: str
    path: str | None = None
    host: tuple[str, int] | None = None
    detail: str = ""

    @property
    def local(self) -> bool:
        return self.status in ("file", "cached")


def _host_of(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return (u.hostname or "huggingface.co", u.port or (80 if u.scheme == "http" else 443))


def hf_endpoint() -> str:
    """The Hugging Face Hub endpoint in use (``HF_ENDPOINT`` or https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_HF_ENDPOINT


def _hf_cached(repo_id: str, filenames: Sequence[str]) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - dependency
        return None
    for name in filenames:
        try:
            found = try_to_load_from_cache(repo_id=repo_id, filename=name)
        except Exception:  # noqa: BLE001 - malformed repo ids etc. just mean "not cached"
            found = None
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def locate_clip_weights(arch: str, pretrained: str) -> ClipWeights:
    """Find CLIP weights without touching the network (``arch`` must already be registered if custom)."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import get_pretrained_cfg

    if not pretrained or not pretrained.strip():
        return ClipWeights("missing", detail="no CLIP pretrained tag or checkpoint path given")
    expanded = os.path.expanduser(pretrained)
    cfg = get_pretrained_cfg(arch, pretrained)
    if not cfg:
        if os.path.isfile(expanded):
            return ClipWeights("file", path=expanded, detail=f"local checkpoint {expanded}")
        looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
        if looks_like_path:
            return ClipWeights("missing", detail=f"CLIP checkpoint file {pretrained!r} does not exist")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        return ClipWeights(
            "missing",
            detail=f"{pretrained!r} is neither a known open_clip pretrained tag for {arch} "
            f"(known: {', '.join(tags) or 'none'}) nor an existing checkpoint file",
        )
    if cfg.get("file"):
        f = os.path.expanduser(cfg["file"])
        if os.path.isfile(f):
            return ClipWeights("cached", path=f, detail=f"tag {pretrained} -> {f}")
        return ClipWeights("missing", detail=f"tag {pretrained} points at missing file {f}")
    hf_hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    # open_clip prefers the HF hub source whenever a tag has one (huggingface_hub is installed).
    if hf_hub:
        repo_id, filename = os.path.split(hf_hub)
        names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME] if not filename else [filename]
        if filename.endswith((".bin", ".pth")) and filename != HF_WEIGHTS_NAME:
            names.insert(0, filename[:-4] + ".safetensors")
        found = _hf_cached(repo_id, names)
        if found:
            return ClipWeights("cached", path=found, detail=f"tag {pretrained} cached at {found}")
        return ClipWeights(
            "remote",
            host=_host_of(hf_endpoint()),
            detail=f"tag {pretrained} (hf-hub {repo_id}) is not in the local Hugging Face cache",
        )
    if url:
        target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(target):
            return ClipWeights("cached", path=target, detail=f"tag {pretrained} cached at {target}")
        return ClipWeights(
            "remote", host=_host_of(url), detail=f"tag {pretrained} is not in the local cache ({target})"
        )
    return ClipWeights("missing", detail=f"tag {pretrained} for {arch} has no download source")


# --------------------------------------------------------------------------------------------------------
# model


def _image_size(model: Any) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(max(size) if isinstance(size, (tuple, list)) else size)


@dataclass
class ClipBundle:
    """A loaded open_clip model with its preprocessing and tokenizer, shared by both encoders."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: torch.device
    config: DeviceConfig
    arch: str
    model_id: str
    model_version: str
    dim: int
    image_size: int
    context_length: int
    load_seconds: float

    @property
    def space(self) -> str:
        # Weights + config decide comparability (the version hashes both), not how they were named.
        return f"open_clip/{self.arch}@{self.model_version}"

    def info(self, modality: str) -> ModelInfo:
        return ModelInfo(self.model_id, self.model_version, self.dim, self.space, modality)


def _clip_identity(arch: str, pretrained: str, where: ClipWeights, weights_file: str | None,
                   model_cfg: dict[str, Any]) -> tuple[str, str | None, int]:
    """``(model_id, version or None, dim)`` of open_clip weights; version None when no weights file is
    known (then only the loaded tensors can be hashed)."""
    extra = {"arch": arch, "model_cfg": model_cfg}
    version = content_version([weights_file], extra=extra) if weights_file else None
    label = Path(where.path).name if where.status == "file" and where.path else pretrained
    return f"open_clip/{arch}:{label}", version, int(model_cfg["embed_dim"])


def clip_model_info(arch: str, pretrained: str, modality: str,
                    config_path: str | os.PathLike[str] | None = None) -> ModelInfo | None:
    """The identity :func:`load_clip`'s encoders will report, without loading the model, when the weights
    are local; None otherwise (a download, or an unknown architecture: only loading tells)."""
    import open_clip

    arch = normalise_arch(arch)
    if config_path:
        register_clip_config(config_path, arch)
    model_cfg = open_clip.get_model_config(arch)
    where = locate_clip_weights(arch, pretrained)
    if model_cfg is None or not where.local:
        return None
    model_id, version, dim = _clip_identity(arch, pretrained, where, where.path, model_cfg)
    if version is None:
        return None
    return ModelInfo(model_id, version, dim, f"open_clip/{arch}@{version}", modality)


def load_clip(
    arch: str,
    pretrained: str,
    device: DeviceConfig | None = None,
    config_path: str | os.PathLike[str] | None = None,
    allow_download: bool = False,
) -> ClipBundle:
    """Load an open_clip model, fast-failing when its weights cannot be had.

    Args:
        arch: open_clip architecture (built-in, or defined by ``config_path``).
        pretrained: an open_clip pretrained tag or a local checkpoint path.
        device: where to run and how.
        config_path: custom model-config JSON (file named ``<arch>.json``).
        allow_download: fetch a tag that is not cached (only pass True when the hub is reachable).

    Raises:
        EncoderUnavailable: unknown architecture, weights missing, or not cached and downloads not allowed.
    """
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - dependency
        raise unavailable(f"open_clip is not installed ({exc})") from exc

    config = device or DeviceConfig()
    torch_device = resolve_device(config.device)
    t0 = time.perf_counter()
    arch = normalise_arch(arch)
    if config_path:
        register_clip_config(config_path, arch)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise unavailable(
            f"unknown open_clip architecture {arch!r} (no built-in config; pass a model-config JSON)"
        )
    where = locate_clip_weights(arch, pretrained)
    if where.status == "missing":
        raise unavailable(f"CLIP weights for {arch} unavailable: {where.detail}")
    if where.status == "remote" and not allow_download:
        raise unavailable(
            f"CLIP weights for {arch}:{pretrained} unavailable: {where.detail} and the hub is not reachable"
        )
    ctx: contextlib.AbstractContextManager[object] = (
        hub_offline() if where.local else contextlib.nullcontext()
    )
    source = where.path if where.status == "file" else pretrained
    try:
        with ctx:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=source, device=torch_device, precision="fp32"
            )
            tokenizer = open_clip.get_tokenizer(arch)
    except EncoderUnavailable:
        raise
    except Exception as exc:
        raise unavailable(f"cannot load CLIP {arch}:{pretrained}: {type(exc).__name__}: {exc}") from exc
    model.eval()

    if where.local:
        weights_file = where.path
    else:  # downloaded just now: hash the cached file if it can be found, else the tensors
        after = locate_clip_weights(arch, pretrained)
        weights_file = after.path if after.local else None
    model_id, version, dim = _clip_identity(arch, pretrained, where, weights_file, model_cfg)
    if version is None:
        h = hashlib.sha256(state_dict_hash(model).encode())
        h.update(json.dumps({"arch": arch, "model_cfg": model_cfg}, sort_keys=True, default=str).encode())
        version = h.hexdigest()[:12]
    text_cfg = model_cfg.get("text_cfg", {})
    bundle = ClipBundle(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=torch_device,
        config=config,
        arch=arch,
        model_id=model_id,
        model_version=version,
        dim=dim,
        image_size=_image_size(model),
        context_length=int(getattr(tokenizer, "context_length", None) or text_cfg.get("context_length", 77)),
        load_seconds=time.perf_counter() - t0,
    )
    logger.info("loaded %s (%s) on %s in %.2fs", bundle.model_id, version, torch_device, bundle.load_seconds)
    return bundle


class ClipTextEncoder:
    """CLIP text tower: unit-norm vectors in the same space as :class:`ClipImageEncoder`'s."""

    def __init__(self, bundle: ClipBundle) -> None:
        self.bundle = bundle
        self.info = bundle.info("text")
        self._max_chars = bundle.context_length * 32

    def _encode_chunk(self, chunk: list[str]) -> np.ndarray:
        b = self.bundle
        tokens = b.tokenizer(chunk).to(b.device)
        with autocast_context(b.device, b.config.precision):
            feats = b.model.encode_text(tokens)
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        """Encode ``texts`` (truncated at the model's context length) into ``(n, dim)`` float32 unit rows."""
        items = [t[: self._max_chars] for t in check_texts(texts)]
        n = len(items)
        if n == 0:
            return empty_vectors(self.info.dim)
        step = self.bundle.config.batch_size
        backoff = OOMBackoff(step)
        out: list[np.ndarray] = []
        done = 0
        with torch.inference_mode():
            for start in range(0, n, step):
                batch = items[start : start + step]
                out.extend(backoff.run(self._encode_chunk, batch))
                done += len(batch)
                if progress is not None:
                    progress(done, n)
        return np.concatenate(out, axis=0)


class ClipImageEncoder(TorchImageEncoder):
    """CLIP image tower with open_clip's inference preprocessing."""

    def __init__(self, bundle: ClipBundle) -> None:
        self.bundle = bundle
        super().__init__(
            info=bundle.info("image"),
            forward=bundle.model.encode_image,
            transform=bundle.preprocess,
            config=bundle.config,
            device=bundle.device,
            draft_size=2 * bundle.image_size,
        )
