"""Compute-tier benchmark (issue 12): `MM_COMPUTE=ray` against the in-process path, ratios measured in one run.

Three parts (each can be skipped):
  step   the image-embedding step against the bare encoder on the same JPEGs and batch size, in-process:
         bare = decode + preprocess + forward in one loop; local step = `encode_paths` (DataLoader workers);
         ray step = `RayEncoder.run` (Ray Data decode tasks -> warm actor; timed after one warm-up run).
         Prints images/s and step / bare throughput ratios (goal >= 0.90 both). Honours MM_DEVICE (e.g. cuda)
         and `--vit` adds ViT-B-32 with random weights (no download) beside the offline EfficientNet-Lite0.
  ingest a full `mm-platform ingest` (CLI process) of the same demo batch with MM_COMPUTE=local and =ray;
         ray runs on a local cluster started once with `ray start --head` (RAY_ADDRESS), as deployed.
         Prints local time / ray time (goal >= 0.90).
  inc    in ray mode, a +10% batch after a full ingest of `--inc-records` (200): ratio (goal <= 0.25).

    python bench/bench_compute.py [--records 2000] [--inc-records 200] [--images 256] [--batch-size 64]
                                  [--vit] [--skip step,ingest,inc]
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_jpegs(out: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` 640x480 JPEGs of smooth noise and shapes (a camera-sized decode cost)."""
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((640, 480), Image.BILINEAR)
        d = ImageDraw.Draw(im)
        x, y = rng.integers(0, 500), rng.integers(0, 340)
        d.ellipse((x, y, x + 140, y + 140), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        p = out / f"img{i:05d}.jpg"
        im.save(p, quality=90)
        paths.append(str(p))
    return paths


def vit_b32_settings(work: Path):
    """EncoderSettings for ViT-B-32 with random weights saved locally (nothing downloaded)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from mm_platform.lib.encoders.registry import EncoderSettings

    ckpt = work / "vit-b-32-random.safetensors"
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None, device="cpu")
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(ckpt))
    return EncoderSettings(profile="clip", clip_arch="ViT-B-32", clip_pretrained=str(ckpt))


def bare(encoder, paths: list[str], bs: int) -> float:
    """Decode + preprocess + forward, one loop, no workers; seconds."""
    import torch

    from mm_platform.lib.encoders.image import open_rgb

    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(paths), bs):
            x = torch.stack([encoder.transform(open_rgb(p, encoder.draft_size)) for p in paths[s:s + bs]])
            encoder._embed(x)
    return time.perf_counter() - t0


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_step(args: argparse.Namespace, work: Path) -> None:
    from mm_platform.lib.compute.ray_pipeline import RayConfig, RayEncoder
    from mm_platform.lib.compute.warm_actors import namespace_for, stop_actors
    from mm_platform.lib.device import DeviceConfig
    from mm_platform.lib.encoders.registry import EncoderSettings, load_encoders

    import ray

    paths = write_jpegs(work / "jpegs", args.images)
    device = DeviceConfig(device=os.environ.get("MM_DEVICE", "auto"), batch_size=args.batch_size,
                          num_workers=int(os.environ.get("MM_NUM_WORKERS", "2")))
    models = [("EfficientNet-Lite0 (offline)", EncoderSettings(profile="offline"))]
    if args.vit:
        models.append(("ViT-B-32 (random init)", vit_b32_settings(work)))
    cfg = RayConfig(namespace=namespace_for(work / "step"), num_cpus=os.cpu_count() or 2)
    print(f"\nimage-embedding step vs bare encoder: {len(paths)} JPEGs 640x480, batch {args.batch_size}, "
          f"device {device.device}, {os.cpu_count()} CPU cores")
    for label, settings in models:
        enc = load_encoders(settings, device).image()
        enc.encode_paths(paths[: args.batch_size])  # warm-up (lazy init, allocator)
        t_bare = min(bare(enc, paths, args.batch_size) for _ in range(2))
        t_local = min(timed(lambda e=enc: e.encode_paths(paths)) for _ in range(2))
        n = len(paths)
        print(f"  {label}: bare {n / t_bare:6.1f} img/s | local step {n / t_local:6.1f} img/s, "
              f"ratio {t_bare / t_local:.2f} (goal >= 0.90)")
        for path, min_items in (("direct tasks", n), ("Ray Data", 0)):
            renc = RayEncoder("image", settings, device, dataclasses.replace(cfg, data_min_items=min_items))
            renc.run(paths[: args.batch_size])  # warm-up: actor load, Ray workers
            t_ray = min(timed(lambda r=renc: r.run(paths)) for _ in range(2))
            print(f"      ray step ({path}) {n / t_ray:6.1f} img/s, ratio {t_bare / t_ray:.2f} (goal >= 0.90)")
    stop_actors(cfg.namespace)
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(work: Path) -> tuple[subprocess.Popen, str]:
    """A local Ray head (`ray start --head --block`) in its own session, as a deployment would have."""
    port = free_port()
    ray_bin = Path(sys.executable).parent / "ray"
    proc = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}",
                             "--include-dashboard=false", f"--num-cpus={os.cpu_count() or 2}"],
                            stdout=open(work / "ray_head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    import ray

    for _ in range(120):
        try:
            ray.init(address=address, log_to_driver=False)
            ray.shutdown()
            return proc, address
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
    proc.kill()
    sys.exit(f"the Ray head did not start; see {work / 'ray_head.log'}")


def cli(env: dict, *args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mm_platform.cli", *args], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        sys.exit(f"mm-platform {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def data_env(work: Path, name: str, mode: str, address: str) -> dict:
    env = {**os.environ, "MM_DATA_DIR": str(work / name), "DAGSTER_HOME": str(work / f"{name}_home"),
           "MM_MODEL_PROFILE": "offline", "HF_HUB_OFFLINE": "1", "MM_COMPUTE": mode,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if mode == "ray":
        env["RAY_ADDRESS"] = address
    return env


def bench_ingest(args: argparse.Namespace, work: Path, address: str, skip: set[str]) -> None:
    if "ingest" not in skip:
        times = {}
        for mode in ("local", "ray"):
            env = data_env(work, f"ingest_{mode}", mode, address)
            cli(env, "make-demo-data", "--records", str(args.records), "--seed", "0",
                "--out", str(work / f"ingest_{mode}" / "landing" / "full"))
            times[mode] = cli(env, "ingest")
        print(f"\nfull ingest of {args.records} demo records (CLI process, offline profile): "
              f"local {times['local']:.1f} s, ray {times['ray']:.1f} s; "
              f"ray throughput / local = {times['local'] / times['ray']:.2f} (goal >= 0.90)")
    if "inc" not in skip:
        env = data_env(work, "inc_ray", "ray", address)
        landing = work / "inc_ray" / "landing"
        cli(env, "make-demo-data", "--records", str(args.inc_records), "--seed", "0", "--out", str(landing / "full"))
        t_full = cli(env, "ingest")
        cli(env, "make-demo-data", "--records", str(max(1, args.inc_records // 10)), "--seed", "1", "--broken", "0",
            "--id-prefix", "inc", "--out", str(landing / "plus10"))
        t_inc = cli(env, "ingest")
        print(f"ray mode, {args.inc_records} records: full ingest {t_full:.1f} s, +10% batch {t_inc:.1f} s "
              f"(warm actors), ratio {t_inc / t_full:.3f} (goal <= 0.25)")
        cli(env, "compute", "stop")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--inc-records", type=int, default=200)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--vit", action="store_true", help="also ViT-B-32 with random weights in the step part")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: step,ingest,inc")
    args = ap.parse_args()
    # a throw-away localhost cluster: no token auth (a real deployment keeps it and gives clients the token)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    skip = set(filter(None, args.skip.split(",")))
    # the CLI processes below load mm_platform from its bytecode cache, as an installed package does (with
    # PYTHONDONTWRITEBYTECODE set, an edited module would otherwise be compiled again by every process)
    compileall.compile_dir(str(ROOT / "mm_platform"), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="mm-bench-compute-"))
    if "step" not in skip:
        bench_step(args, work)
    if not {"ingest", "inc"} <= skip:
        head, address = start_head(work)
        try:
            bench_ingest(args, work, address, skip)
        finally:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
            current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
            if current.is_file() and current.read_text().strip().endswith(address.split(":")[-1]):
                current.unlink()  # our head is gone: do not point later `ray.init()` calls at it


if __name__ == "__main__":
    main()
