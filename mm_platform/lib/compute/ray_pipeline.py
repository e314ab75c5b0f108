"""Per-modality embedding as a streaming Ray Data pipeline.

    items (index, path or text) ──map_batches(decode, CPU tasks)──▶ decoded batches
        ──map_batches(EncodeProxy, actor pool)──▶ warm encoder actor (detached, GPU when present) ──▶ vectors

Decoding runs in stateless CPU tasks anywhere in the cluster; encoding runs in the warm actor of the model
(:mod:`mm_platform.lib.compute.warm_actors`), reached through a one-actor pool of thin proxies so Ray Data
streams and back-pressures the batches. A file that fails to decode is never raised inside a task (so Ray
never retries it, and the run never loops): it flows through the pipeline as a failure row with its reason
and comes back to the caller, who quarantines it. ``ray`` is imported lazily.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mm_platform.lib.compute.warm_actors import actor_name, encode_decoded, ensure_actor, require_cluster
from mm_platform.lib.device import DeviceConfig
from mm_platform.lib.encoders.base import ModelInfo
from mm_platform.lib.encoders.registry import EncoderSettings


@dataclass(frozen=True)
class RayConfig:
    """How to reach Ray and how big the local instance is.

    Attributes:
        address: an existing cluster (``RAY_ADDRESS``: ``ray://host:10001`` or ``host:6379``); empty = start a
            local Ray instance inside this process (it ends with the process).
        namespace: the Ray namespace of the data dir (warm actors live there).
        num_cpus / object_store_mb: size of a local instance (ignored with ``address``); 0 = Ray's default.
        encoder_gpus: GPUs per encoder actor; ``-1`` = 1 when the device setting is CUDA, or ``auto`` on a
            cluster with a GPU; else 0.
        data_min_items: inputs larger than this go through Ray Data; smaller ones take the direct path.
        connect_timeout_s: how long a cluster at ``address`` may take to answer before connecting fails.
        encoder_cpus: logical CPUs each warm actor reserves. 0 by default: a warm actor is idle between runs
            and must not starve the decode tasks of a small cluster (it still uses every core when it runs).
    """

    address: str = ""
    namespace: str = "mm_platform"
    num_cpus: int = 0
    object_store_mb: int = 0
    encoder_gpus: float = -1.0
    encoder_cpus: float = 0.0
    data_min_items: int = 256
    connect_timeout_s: float = 20.0


_CONNECT_LOCK = threading.Lock()
#: clusters that did not answer (address -> (when, error)): connects within ``_UNREACHABLE_FOR_S`` raise the same
#: error at once instead of waiting again (the background connect and each embedding step of a run)
_UNREACHABLE: dict[str, tuple[float, ConnectionError]] = {}
_UNREACHABLE_FOR_S = 60.0


def connect(cfg: RayConfig) -> None:
    """Connect this process to Ray once (a cluster at ``cfg.address``, else a new local instance)."""
    with _CONNECT_LOCK:  # a connect started by connect_in_background finishes first
        failed = _UNREACHABLE.get(cfg.address)
        if failed is not None and time.monotonic() - failed[0] < _UNREACHABLE_FOR_S:
            raise failed[1]  # waited MM_RAY_CONNECT_TIMEOUT_S for it a moment ago: do not wait again
        try:
            _connect(cfg)
        except ConnectionError as exc:
            _UNREACHABLE[cfg.address] = (time.monotonic(), exc)
            raise


def connect_in_background(cfg: RayConfig) -> threading.Thread:
    """Start :func:`connect` in a daemon thread, so importing Ray and reaching the cluster overlap the steps
    that run before the first embedding; a later :func:`connect` waits for it. A failure here is dropped:
    that later call connects again and raises it. (Off the main thread Ray installs no SIGTERM handler of
    its own, which leaves the run's signal handling as it is.)"""

    def run() -> None:
        worker_log = logging.getLogger("ray._private.worker")
        level = worker_log.level
        worker_log.setLevel(logging.ERROR)  # "SIGTERM handler is not set": on purpose, see above
        try:
            connect(cfg)
        except Exception:  # noqa: BLE001 - reported by the next connect() (at once when nothing answered)
            pass
        finally:
            worker_log.setLevel(level)

    thread = threading.Thread(target=run, name="mm-ray-connect", daemon=True)
    thread.start()
    return thread


def _connect(cfg: RayConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": cfg.namespace, "log_to_driver": False, "ignore_reinit_error": True}
    kwargs["address"] = cfg.address or "local"  # never a stale /tmp/ray/ray_current_cluster
    if cfg.address:
        require_cluster(cfg.address, cfg.connect_timeout_s)
    if not cfg.address:
        kwargs["include_dashboard"] = False
        if cfg.num_cpus > 0:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.object_store_mb > 0:
            kwargs["object_store_memory"] = cfg.object_store_mb << 20
    ray.init(**kwargs)


def _quiet_ray_data() -> None:
    """No progress bars from Ray Data (imported only when a pipeline runs: the direct path never needs it)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.verbose_progress = False


def gpus_for(cfg: RayConfig, device: DeviceConfig) -> float:
    if cfg.encoder_gpus >= 0:
        return cfg.encoder_gpus
    spec = device.device.strip().lower()
    if spec == "cpu":
        return 0.0
    if spec.startswith("cuda"):
        return 1.0
    # auto: a GPU when the cluster has one. The driver's own CUDA says nothing about the workers (Dagster on a
    # CPU host, GPU workers on the cluster), and asking torch would import it into the run process.
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


# --------------------------------------------------------------------------------------------------------
# decode tasks (module-level functions: pickled by reference into CPU tasks)


def decode_images(batch: dict[str, np.ndarray], transform: Any, draft_size: int | None,
                  shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Open, convert and preprocess each image exactly as the in-process DataLoader does; a file that fails
    gets a zero tensor, its reason and a message instead of an exception."""
    from mm_platform.lib.encoders.base import ImageDecodeError
    from mm_platform.lib.encoders.image import open_rgb

    if isinstance(transform, bytes):  # as the warm actor describes it (see EncoderActor.describe)
        import pickle

        transform = pickle.loads(transform)
    pixels = np.zeros((len(batch["idx"]), *shape), dtype=np.float32)
    reasons, errors = [], []
    for k, path in enumerate(batch["item"]):
        try:
            pixels[k] = transform(open_rgb(str(path), draft_size)).numpy()
            reasons.append("")
            errors.append("")
        except ImageDecodeError as exc:
            reasons.append("missing_file" if not os.path.exists(str(path)) else "corrupt_image")
            errors.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - any preprocessing failure is reported per file
            reasons.append("corrupt_image")
            errors.append(f"cannot preprocess image {str(path)!r}: {type(exc).__name__}: {exc}")
    return {"idx": batch["idx"], "payload": pixels, "reason": np.array(reasons, dtype=object),
            "error": np.array(errors, dtype=object)}


def decode_audio(batch: dict[str, np.ndarray], sample_rate: int, max_bytes: int,
                 max_seconds: float) -> dict[str, Any]:
    """Decode each clip to a mono float32 waveform at ``sample_rate`` (the encoder's own ``decode``)."""
    from mm_platform.lib.media.audio import load_audio
    from mm_platform.lib.media import MediaError

    waves, reasons, errors = [], [], []
    for path in batch["item"]:
        try:
            waves.append(load_audio(str(path), sample_rate, max_bytes=max_bytes, max_seconds=max_seconds).waveform)
            reasons.append("")
            errors.append("")
        except MediaError as exc:
            waves.append(np.zeros(1, dtype=np.float32))
            reasons.append(exc.reason)
            errors.append(f"cannot decode audio {str(path)!r}: {exc.reason}: {exc.detail}")
    return {"idx": batch["idx"], "payload": waves, "reason": np.array(reasons, dtype=object),
            "error": np.array(errors, dtype=object)}


def pass_texts(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(batch["idx"])
    return {"idx": batch["idx"], "payload": batch["item"], "reason": np.array([""] * n, dtype=object),
            "error": np.array([""] * n, dtype=object)}


class EncodeProxy:
    """The Ray Data actor-pool stage: forwards the decoded rows of each batch to the warm encoder actor."""

    def __init__(self, actor_name: str, namespace: str, dim: int) -> None:
        import ray

        self.actor = ray.get_actor(actor_name, namespace=namespace)
        self.dim = dim

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        import ray

        return encode_decoded(batch, self.dim, lambda rows: ray.get(self.actor.encode.remote(rows)))


# --------------------------------------------------------------------------------------------------------
# the pipeline


@dataclass
class RayEmbedResult:
    """Vectors for every item (zero rows where it failed) and the failures: index -> (reason, message)."""

    vectors: np.ndarray
    failures: dict[int, tuple[str, str]]


class RayEncoder:
    """The encoder of one modality, run on Ray: a warm actor plus the Ray Data pipeline that feeds it.

    ``info`` comes from the actor (the model id and weights version it really loaded), so the run process
    loads no model. Construction does not wait for the actor: its description is asked for at once and
    awaited on first use, so several encoders made together load their models concurrently.
    """

    def __init__(self, modality: str, settings: EncoderSettings, device: DeviceConfig, cfg: RayConfig) -> None:
        connect(cfg)
        self.modality, self.device, self.cfg = modality, device, cfg
        self.actor = ensure_actor(modality, settings, device, cfg.namespace, num_gpus=gpus_for(cfg, device),
                                  num_cpus=cfg.encoder_cpus)
        self.actor_name = actor_name(modality, settings, device)
        self._spec_ref = self.actor.describe.remote()
        self._spec: dict[str, Any] | None = None
        self.max_audio_bytes: int | None = None
        self.max_audio_seconds: float | None = None

    @property
    def spec(self) -> dict[str, Any]:
        """What the actor reported when this encoder was made (waits for its model load the first time)."""
        if self._spec is None:
            import ray

            self._spec = ray.get(self._spec_ref)
        return self._spec

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(**self.spec["info"])

    def _decode_stage(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        if self.modality == "text":
            return pass_texts, {}
        if self.modality == "image":
            return decode_images, {"transform": self.spec["transform"], "draft_size": self.spec["draft_size"],
                                   "shape": self.spec["shape"]}
        from mm_platform.lib.media.audio import DEFAULT_MAX_AUDIO_SECONDS
        from mm_platform.lib.media import DEFAULT_MAX_AUDIO_BYTES

        return decode_audio, {"sample_rate": self.spec["sample_rate"],
                              "max_bytes": self.max_audio_bytes or DEFAULT_MAX_AUDIO_BYTES,
                              "max_seconds": max(self.max_audio_seconds or 0.0, DEFAULT_MAX_AUDIO_SECONDS)}

    def run(self, items: Sequence[str], on_batch: Callable[[int, int], None] | None = None) -> RayEmbedResult:
        """Decode and encode ``items`` (paths, or texts for the text modality), streaming; every item comes
        back exactly once, as a vector or as a failure.

        Inputs of more than ``cfg.data_min_items`` go through Ray Data (decode tasks -> actor-pool stage ->
        warm actor). Smaller ones (an incremental batch) skip Ray Data's per-run start-up: each batch is one
        decode task whose result goes straight to the warm actor (texts need no decode task). An input that
        fits in one batch (``MM_BATCH_SIZE``) is decoded and encoded in one call to the warm actor, with the
        same decode function."""
        n = len(items)
        vectors = np.zeros((n, self.info.dim), dtype=np.float32)
        failures: dict[int, tuple[str, str]] = {}
        if n == 0:
            return RayEmbedResult(vectors, failures)
        seen = np.zeros(n, dtype=bool)
        batches = self._direct(items) if n <= self.cfg.data_min_items else self._ray_data(items)
        for batch in batches:
            for k, i in enumerate(np.asarray(batch["idx"]).tolist()):
                if seen[i]:
                    raise RuntimeError(f"item {i} came back twice from the Ray pipeline")
                seen[i] = True
                if batch["error"][k]:
                    failures[i] = (str(batch["reason"][k]), str(batch["error"][k]))
                else:
                    vectors[i] = batch["vector"][k]
            if on_batch is not None:
                on_batch(int(seen.sum()), n)
        if not seen.all():
            raise RuntimeError(f"{int((~seen).sum())} of {n} items never came back from the Ray pipeline")
        return RayEmbedResult(vectors, failures)

    def _ray_data(self, items: Sequence[str]) -> Iterator[dict[str, Any]]:
        import ray.data

        _quiet_ray_data()
        n, bs = len(items), max(1, self.device.batch_size)
        decode, kwargs = self._decode_stage()
        ds = ray.data.from_items([{"idx": i, "item": str(x)} for i, x in enumerate(items)],
                                 override_num_blocks=max(1, (n + bs - 1) // bs))
        ds = ds.map_batches(decode, batch_size=bs, fn_kwargs=kwargs, num_cpus=1, batch_format="numpy")
        ds = ds.map_batches(EncodeProxy, batch_size=bs, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
                            batch_format="numpy",
                            fn_constructor_kwargs={"actor_name": self.actor_name,
                                                   "namespace": self.cfg.namespace, "dim": self.info.dim})
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")

    def _direct(self, items: Sequence[str]) -> Iterator[dict[str, Any]]:
        import ray

        bs = max(1, self.device.batch_size)
        decode, kwargs = self._decode_stage()
        if len(items) <= bs:  # one batch: decode in the warm actor itself (no task, no worker start)
            chunk = {"idx": np.arange(len(items)), "item": np.array([str(x) for x in items], dtype=object)}
            yield ray.get(self.actor.decode_and_encode.remote(decode, chunk, kwargs))
            return
        task = ray.remote(decode).options(num_cpus=1, max_retries=3)
        refs = []
        for start in range(0, len(items), bs):
            chunk = {"idx": np.arange(start, min(start + bs, len(items))),
                     "item": np.array([str(x) for x in items[start:start + bs]], dtype=object)}
            decoded = decode(chunk) if decode is pass_texts else task.remote(chunk, **kwargs)
            refs.append(self.actor.encode_batch.remote(decoded))
        for ref in refs:
            yield ray.get(ref)

    def stats(self) -> dict[str, Any]:
        """The actor's load time, pid and calls served (for metadata and tests)."""
        import ray

        spec = ray.get(self.actor.describe.remote())
        return {k: spec[k] for k in ("load_s", "pid", "calls")}
