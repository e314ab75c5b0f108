"""The Ray compute tier on a small local Ray instance: same vectors as in-process, bad media quarantined
as failure rows, warm actors reused across runs, and a killed actor costs a retry, not a vector."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from mm_platform.lib.compute.ray_pipeline import RayConfig, RayEncoder
from mm_platform.lib.compute.warm_actors import list_actors, namespace_for, stop_actors
from mm_platform.lib.device import DeviceConfig
from mm_platform.lib.encoders.registry import load_encoders
from mm_platform_tests.tiny_models import TinyClip, write_shape_images

ray = pytest.importorskip("ray")

SPECS = [(s, c, k) for s in ("circle", "square", "triangle") for c in ("red", "blue", "green") for k in (0, 4)]


@pytest.fixture(scope="module")
def ray_cfg(tmp_path_factory: pytest.TempPathFactory):
    """One small local Ray instance for the module; its warm actors are killed at the end."""
    cfg = RayConfig(namespace=namespace_for(tmp_path_factory.mktemp("ray_data_dir")), num_cpus=2,
                    object_store_mb=150)
    ray.init(address="local", num_cpus=2, object_store_memory=150 << 20, include_dashboard=False, namespace=cfg.namespace,
             log_to_driver=False)
    yield cfg
    stop_actors(cfg.namespace)
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return [str(p) for p in write_shape_images(tmp_path_factory.mktemp("shapes"), SPECS, fmt="JPEG")]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_vectors_equal_local_and_corrupt_image_is_a_failure_row(
    ray_cfg: RayConfig, tiny_clip: TinyClip, images: list[str], tmp_path: Path
) -> None:
    device = DeviceConfig(device="cpu", batch_size=4, num_workers=0)
    settings = tiny_clip.settings()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = images[:5] + [str(bad)] + images[5:] + [str(tmp_path / "gone.jpg")]

    local = load_encoders(settings, device)
    want = local.image().encode_paths(images)
    ok = [i for i, p in enumerate(paths) if p in images]
    for cfg in (ray_cfg, dataclasses.replace(ray_cfg, data_min_items=0)):  # direct path, then Ray Data
        result = RayEncoder("image", settings, device, cfg).run(paths)
        assert _cos(result.vectors[ok], want).min() >= 0.9999
        assert set(result.failures) == {5, len(paths) - 1}
        assert result.failures[5][0] == "corrupt_image" and "bad.jpg" in result.failures[5][1]
        assert result.failures[len(paths) - 1][0] == "missing_file"
        assert not result.vectors[5].any()

    texts = ["a red circle", "a blue square", "", "ünïcödé text"]
    text_vectors = RayEncoder("text", settings, device, ray_cfg).run(texts).vectors
    assert _cos(text_vectors, local.text().encode(texts)).min() >= 0.9999


def test_one_batch_is_decoded_in_the_warm_actor_with_the_same_answers(
    ray_cfg: RayConfig, tiny_clip: TinyClip, images: list[str], tmp_path: Path
) -> None:
    """An input that fits in one batch (an incremental batch) takes one actor call, no decode task, and gives
    the vectors and failure rows of the multi-batch paths."""
    settings = tiny_clip.settings()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = images[:3] + [str(bad), str(tmp_path / "gone.jpg")] + images[3:6]
    ok = [0, 1, 2, 5, 6, 7]
    want = load_encoders(settings, DeviceConfig(device="cpu", batch_size=4, num_workers=0)).image().encode_paths(
        images[:6])
    encoder = RayEncoder("image", settings, DeviceConfig(device="cpu", batch_size=len(paths), num_workers=0),
                         ray_cfg)
    calls = encoder.stats()["calls"]
    result = encoder.run(paths)
    assert encoder.stats()["calls"] == calls + 1  # one call of the warm actor
    assert _cos(result.vectors[ok], want).min() >= 0.9999
    assert {i: r for i, (r, _) in result.failures.items()} == {3: "corrupt_image", 4: "missing_file"}
    assert "bad.jpg" in result.failures[3][1] and not result.vectors[3:5].any()


def test_warm_actor_is_reused_and_stoppable(ray_cfg: RayConfig, tiny_clip: TinyClip, images: list[str]) -> None:
    device = DeviceConfig(device="cpu", batch_size=8, num_workers=0)
    first = RayEncoder("image", tiny_clip.settings(), device, ray_cfg)
    first.run(images[:3])
    before = first.stats()
    second = RayEncoder("image", tiny_clip.settings(), device, ray_cfg)  # a new run, same model
    second.run(images[3:6])
    after = second.stats()
    assert after["pid"] == before["pid"] and after["load_s"] == before["load_s"]  # no second model load
    assert after["calls"] == before["calls"] + 1
    assert second.info == first.info
    names = list_actors(ray_cfg.namespace)
    assert second.actor_name in names
    assert set(stop_actors(ray_cfg.namespace)) == set(names)
    assert list_actors(ray_cfg.namespace) == []


def test_actor_killed_mid_run_retries_without_loss_or_duplicates(
    ray_cfg: RayConfig, tiny_clip: TinyClip, images: list[str]
) -> None:
    device = DeviceConfig(device="cpu", batch_size=2, num_workers=0)
    encoder = RayEncoder("image", tiny_clip.settings(), device, dataclasses.replace(ray_cfg, data_min_items=0))
    victim = encoder.stats()["pid"]
    killed: list[int] = []

    def kill_after_first_batch(done: int, total: int) -> None:
        if not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(done)

    result = encoder.run(images, on_batch=kill_after_first_batch)  # raises on a duplicate or a lost item

    assert killed and killed[0] < len(images)  # the kill happened while items were still in flight
    assert result.failures == {}
    local = load_encoders(tiny_clip.settings(), device).image().encode_paths(images)
    assert _cos(result.vectors, local).min() >= 0.9999
    assert encoder.stats()["pid"] != victim  # Ray restarted the actor and retried the batch on it


def test_gpus_per_actor_follow_the_setting_and_the_clusters_gpus(ray_cfg: RayConfig) -> None:
    """An explicit count wins; cpu asks none and cuda one; auto asks one only when the cluster has a GPU
    (this local instance has none), decided without importing torch into the driver."""
    from mm_platform.lib.compute.ray_pipeline import gpus_for

    assert gpus_for(dataclasses.replace(ray_cfg, encoder_gpus=0.5), DeviceConfig(device="cuda")) == 0.5
    assert gpus_for(ray_cfg, DeviceConfig(device="cpu")) == 0.0
    assert gpus_for(ray_cfg, DeviceConfig(device="cuda:1")) == 1.0
    assert gpus_for(ray_cfg, DeviceConfig(device="auto")) == float(ray.cluster_resources().get("GPU", 0) >= 1)


def test_a_cluster_that_does_not_answer_fails_fast_and_says_so() -> None:
    """``ray.init`` alone waits for a stopped cluster's GCS for many minutes; connecting fails within
    ``MM_RAY_CONNECT_TIMEOUT_S`` naming the address, and a background connect that failed is not waited for
    a second time. A cluster that answers (or one that comes up within the timeout) is connected to."""
    import socket
    import subprocess
    import sys
    import threading
    import time

    from mm_platform.lib.compute.warm_actors import require_cluster

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"RAY_ADDRESS=127.0.0.1:{dead}"):
        require_cluster(f"127.0.0.1:{dead}", 1.0)
    assert 0.9 < time.monotonic() - t0 < 5
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    threading.Timer(0.6, listener.listen).start()  # a head that comes up while we wait
    try:
        require_cluster(f"ray://127.0.0.1:{port}", 10.0)
    finally:
        listener.close()
    code = (
        "import time; from mm_platform.lib.compute.ray_pipeline import RayConfig, connect, connect_in_background\n"
        f"cfg = RayConfig(address='127.0.0.1:{dead}', connect_timeout_s=1.5)\n"
        "connect_in_background(cfg).join()\n"
        "t = time.monotonic()\n"
        "try:\n    connect(cfg)\nexcept ConnectionError as exc:\n"
        "    print('refused', round(time.monotonic() - t, 2), exc)\n")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.startswith("refused "), out.stdout + out.stderr
    assert float(out.stdout.split()[1]) < 0.5 and "MM_RAY_CONNECT_TIMEOUT_S" in out.stdout
    assert time.monotonic() - t0 < 60
