"""Warm encoders: named, detached Ray actors that each hold one loaded encoder and outlive a run.

An actor's name is derived from everything that decides which weights run where (modality, model settings,
device settings), so one actor serves exactly one model id + weights version; the version it loaded is
reported by :meth:`EncoderActor.describe` and recorded with every vector. Actors live in a Ray namespace
derived from the data dir (:func:`namespace_for`), so two data dirs (two tests, two deployments) never
share or kill each other's actors. ``ray`` is imported lazily: nothing here costs anything in local mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from mm_platform.lib.device import DeviceConfig
from mm_platform.lib.encoders.registry import EncoderSettings
from mm_platform.lib.settings import setting_float

ACTOR_PREFIX = "mm-encoder-"


def namespace_for(data_dir: str | os.PathLike[str]) -> str:
    """The Ray namespace of one data dir: its warm actors are found (and stopped) only from there."""
    real = os.path.realpath(os.fspath(data_dir))
    return "mm_platform-" + hashlib.sha256(real.encode()).hexdigest()[:12]


def actor_name(modality: str, settings: EncoderSettings, device: DeviceConfig) -> str:
    """A stable name for the actor holding ``modality``'s encoder under these settings."""
    key = json.dumps([modality, asdict(settings), asdict(device)], sort_keys=True, default=str)
    return f"{ACTOR_PREFIX}{modality}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class EncoderActor:
    """Holds one encoder (loaded once, in ``__init__``) and encodes already-decoded batches.

    Runs as a detached Ray actor (see :func:`ensure_actor`); also usable as a plain object, which is how the
    unit tests check that it computes exactly what the in-process encoders compute.
    """

    def __init__(self, modality: str, settings: EncoderSettings, device: DeviceConfig,
                 torch_threads: int = 0) -> None:
        import torch

        from mm_platform.lib.encoders.registry import load_encoders

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        started = time.perf_counter()
        self.modality = modality
        self.encoder = load_encoders(settings, device).encoder(modality)
        self.load_s = time.perf_counter() - started
        self.calls = 0

    def describe(self) -> dict[str, Any]:
        """Identity (``ModelInfo`` as a dict), load time, process id, calls served and, for images, the
        preprocessing the decode tasks must apply (the same as the in-process DataLoader's)."""
        out: dict[str, Any] = {"info": self.encoder.info.as_dict(), "load_s": self.load_s, "pid": os.getpid(),
                               "calls": self.calls}
        if self.modality == "image":
            from PIL import Image
            from ray import cloudpickle

            # pickled here, unpickled only in the decode tasks: the driver never imports torchvision
            out["transform"] = cloudpickle.dumps(self.encoder.transform)
            out["shape"] = tuple(self.encoder.transform(Image.new("RGB", (32, 32))).shape)
            out["draft_size"] = self.encoder.draft_size
        if self.modality == "audio":
            out["sample_rate"] = self.encoder.sample_rate
        return out

    def encode(self, payload: Any) -> np.ndarray:
        """Encode one decoded batch: texts (list of str), images (``(B,3,H,W)`` float32 array, preprocessed)
        or audio (list of mono float32 waveforms at ``sample_rate``). ``(B, dim)`` float32 unit rows."""
        self.calls += 1
        if self.modality == "text":
            return self.encoder.encode(list(payload))
        if self.modality == "audio":
            return self.encoder.encode_waveforms([np.asarray(w, dtype=np.float32) for w in payload])
        import torch

        from mm_platform.lib.device import OOMBackoff

        batch = torch.from_numpy(np.ascontiguousarray(payload, dtype=np.float32))
        with torch.inference_mode():
            parts = OOMBackoff(max(1, int(batch.shape[0]))).run(self.encoder._embed, batch)
        return np.concatenate(list(parts), axis=0)

    def encode_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """:func:`encode_decoded` inside the actor: the direct path for small inputs (no Ray Data stage)."""
        return encode_decoded(batch, self.encoder.info.dim, self.encode)

    def decode_and_encode(self, decode: Any, batch: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """``decode`` (one of the decode-task functions, same arguments) then :meth:`encode_batch`, both in
        this process: the path for an input that fits in one batch, where a separate decode task would only
        add a worker start (a new Ray job starts new worker processes, which import torch again) and gain
        no overlap."""
        return self.encode_batch(decode(batch, **kwargs))


def encode_decoded(batch: dict[str, Any], dim: int, encode: Any) -> dict[str, Any]:
    """Encode the rows of a decoded batch that decoded (``error`` empty); failed rows keep a zero vector and
    their reason and message. Shared by the Ray Data proxy stage and the actor's direct path."""
    ok = [k for k, e in enumerate(batch["error"]) if not e]
    vectors = np.zeros((len(batch["idx"]), dim), dtype=np.float32)
    if ok:
        payload = batch["payload"]
        rows: Any = [payload[k] for k in ok]
        if isinstance(payload, np.ndarray) and payload.dtype != object and payload.ndim > 1:
            rows = np.stack(rows)
        vectors[ok] = encode(rows)
    return {"idx": np.asarray(batch["idx"]), "vector": vectors, "reason": batch["reason"], "error": batch["error"]}


def ensure_actor(modality: str, settings: EncoderSettings, device: DeviceConfig, namespace: str, *,
                 num_gpus: float = 0.0, num_cpus: float = 0.0, max_restarts: int = 4) -> Any:
    """The warm actor for this encoder: the running one when it exists, else a new detached one.

    A killed actor is restarted by Ray up to ``max_restarts`` times and the call it was serving is retried
    on the new process (``max_task_retries``), so a lost worker costs one model load, never a lost or
    duplicated vector; a run never retries forever.
    """
    import ray

    name = actor_name(modality, settings, device)
    threads = 0 if num_gpus else (os.cpu_count() or 1)  # Ray pins actors to num_cpus threads otherwise
    remote = ray.remote(EncoderActor).options(
        name=name, namespace=namespace, lifetime="detached", get_if_exists=True, num_cpus=num_cpus,
        num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=2,
    )
    return remote.remote(modality, settings, device, threads)


def list_actors(namespace: str) -> list[str]:
    """Names of the live warm encoder actors of ``namespace`` (Ray must be connected)."""
    from ray.util import list_named_actors

    return sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                  if a.get("namespace") == namespace and a["name"].startswith(ACTOR_PREFIX))


def stop_actors(namespace: str) -> list[str]:
    """Kill every warm encoder actor of ``namespace`` (no restart); returns their names."""
    import ray

    names = list_actors(namespace)
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
        except ValueError:  # already gone
            pass
    return names


def require_cluster(address: str, timeout_s: float) -> None:
    """Raise ``ConnectionError`` unless something answers at the Ray cluster ``address`` (``host:port`` or
    ``ray://host:port``) within ``timeout_s`` seconds (tried every half second, so a head that is starting is
    waited for). ``ray.init`` alone waits for a stopped cluster's GCS for many minutes: a run must fail fast
    and say why instead. ``auto`` (Ray's own lookup) is left to Ray."""
    target = address.strip().removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    host = host.strip("[]") or "127.0.0.1"
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=max(0.2, min(2.0, deadline - time.monotonic()))).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"no Ray cluster answers at RAY_ADDRESS={address} ({exc}; waited {timeout_s:g} s, "
                    "MM_RAY_CONNECT_TIMEOUT_S): start it (`ray start --head`), fix RAY_ADDRESS, or unset it to "
                    "run on a local Ray instance") from exc
        time.sleep(0.5)


def warm_actor_command(action: str, address: str, data_dir: str | os.PathLike[str]) -> list[str]:
    """``mm-platform compute status|stop``: the warm actors of ``data_dir`` on the cluster at ``address``
    (lines to print). Without an address there is nothing to list: a local Ray instance, and its actors,
    end with the run process that started it."""
    if not address:
        return ["RAY_ADDRESS is not set: without a cluster, warm actors live only inside a run process."]
    import ray

    namespace = namespace_for(data_dir)
    require_cluster(address, setting_float("MM_RAY_CONNECT_TIMEOUT_S"))
    ray.init(address=address, namespace=namespace, log_to_driver=False)
    try:
        names = stop_actors(namespace) if action == "stop" else list_actors(namespace)
    finally:
        ray.shutdown()
    verb = "stopped" if action == "stop" else "running"
    return [f"{len(names)} warm encoder actors {verb} in namespace {namespace}", *names]
