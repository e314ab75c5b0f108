"""Explorer service latency, measured in one run, printed as numbers and ratios.

1. demo corpus (N records, offline profile) ingested with the CLI, then `mm-platform serve` in a subprocess:
   first (cold, model-loading) query vs warm p50/p95 over HTTP for text, fused, filtered, image-upload
   searches, the record page, the cluster gallery and the map payload;
2. the CLI: `mm-platform search` with the service running vs in-process (`--no-service`), and `status`;
3. scale: a synthetic collection of P points (384-d, like MiniLM text vectors) in embedded Qdrant, searched
   directly; a synthetic embedding_map of P points served by a second service and drawn in chromium (draw
   time of one frame and hover hit-test time, as the page records them).

    python bench/bench_serve.py [--records 240] [--points 100000] [--queries 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

TEXTS = ["waterproof backpack for rain", "something to keep my tea warm", "bright lamp for reading",
         "comfortable headphones for the office", "trail shoes with good grip", "a ceramic mug", "gift for a friend",
         "light and sturdy", "battery lasts all week", "stays dry in heavy rain"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env: dict, *args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mm_platform.cli", *args], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        sys.exit(f"mm-platform {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - t0


def start_service(env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mm_platform.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"serve exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/api/health", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("serve did not start")


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"p50 {statistics.median(xs):7.1f} ms  p95 {xs[int(0.95 * (len(xs) - 1))]:7.1f} ms  (n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=240)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--only-scale", action="store_true", help="skip the demo corpus part")
    ap.add_argument("--skip-qdrant-scale", action="store_true", help="scale: only the map")
    args = ap.parse_args()
    if args.only_scale:
        scale(args.points, qdrant=not args.skip_qdrant_scale)
        return

    import httpx

    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {**os.environ, "MM_DATA_DIR": str(root / "data"), "MM_MODEL_PROFILE": "offline", "HF_HUB_OFFLINE": "1",
           "DAGSTER_HOME": str(root / "dagster_home")}
    for var in ("MM_LANDING_DIR", "MM_LAKE_DIR", "MM_DUCKDB_PATH", "MM_QDRANT_PATH", "QDRANT_URL", "MM_SERVE_TOKEN"):
        env.pop(var, None)
    Path(env["DAGSTER_HOME"]).mkdir(parents=True)
    cli(env, "make-demo-data", "--records", str(args.records), "--seed", "5")
    t_ingest = cli(env, "ingest")
    print(f"demo corpus: {args.records} records ingested in {t_ingest:.1f} s")

    cold_cli = cli(env, "search", "--text", "tea", "--no-service")
    status_cli = cli(env, "status")
    proc, url = start_service(env)
    try:
        c = httpx.Client(base_url=url, timeout=60)
        t0 = time.perf_counter()
        c.post("/api/search", json={"text": "first query"}).raise_for_status()
        first = (time.perf_counter() - t0) * 1000
        image = next((Path(env["MM_DATA_DIR"]) / "landing").rglob("*.png")).read_bytes()
        label = c.get("/api/facets").json()["labels"][0]
        rids = c.get("/api/map/meta").json()["record_ids"]
        c.post("/api/search", files={"image": ("q.png", image, "image/png")}).raise_for_status()  # load image model
        n = args.queries
        rows = {
            "search text": timed(lambda i: c.post("/api/search", json={"text": TEXTS[i % 10] + f" {i}"}).raise_for_status(), n),
            "search text→fused": timed(lambda i: c.post("/api/search", json={"text": TEXTS[i % 10], "modality": "fused"}).raise_for_status(), n),
            "search text, label filter": timed(lambda i: c.post("/api/search", json={"text": TEXTS[i % 10], "label": label}).raise_for_status(), n),
            "search image upload": timed(lambda i: c.post("/api/search", files={"image": ("q.png", image, "image/png")}).raise_for_status(), n),
            "record page API": timed(lambda i: c.get(f"/api/record/{rids[i % len(rids)]}").raise_for_status(), n),
            "cluster gallery API": timed(lambda i: c.get("/api/clusters").raise_for_status(), n),
            "map points": timed(lambda i: c.get("/api/map/points").raise_for_status(), n),
        }
        print(f"\nservice, first query after start (text model warmed in the background): {first:.0f} ms")
        for name, xs in rows.items():
            print(f"  {name:28s} {pct(xs)}")
        warm = statistics.median(rows["search text"])
        print(f"  warm text search p50 / 100 ms goal: {warm / 100:.2f}")
        served_cli = statistics.median([cli(env, "search", "--text", TEXTS[i], "-k", "5") for i in range(3)])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("\nCLI (process start included):")
    print(f"  search, service running:    {served_cli:5.2f} s")
    print(f"  search, in-process (cold):  {cold_cli:5.2f} s   ratio {cold_cli / served_cli:.1f}x")
    print(f"  status:                     {status_cli:5.2f} s")

    if args.points:
        scale(args.points, qdrant=not args.skip_qdrant_scale)
    shutil.rmtree(root, ignore_errors=True)


def scale(n_points: int, qdrant: bool = True) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-serve-scale-"))
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n_points, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    if qdrant:
        scale_qdrant(root, vecs, rng)
    scale_map(root, n_points, rng)
    shutil.rmtree(root, ignore_errors=True)


def scale_qdrant(root: Path, vecs: np.ndarray, rng: np.random.Generator) -> None:
    from mm_platform.lib.storage.qdrant import PointData, QdrantStore

    n_points = len(vecs)
    t0 = time.perf_counter()
    with QdrantStore("bench", path=root / "qdrant", upsert_chunk=2048) as store:
        store.ensure_collection({"text": 384})
        store.upsert(PointData(f"r{i:06d}", {"text": vecs[i]}, {"label": f"l{i % 7}", "cluster_id": i % 12})
                     for i in range(n_points))
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    with QdrantStore("bench", path=root / "qdrant") as store:
        reopen = time.perf_counter() - t0
        qs = rng.standard_normal((30, 384)).astype(np.float32)
        xs = timed(lambda i: store.search(qs[i], using="text", k=12), 30)
        xf = timed(lambda i: store.search(qs[i], using="text", k=12, where={"label": "l3"}), 30)
    print(f"\nscale: {n_points:,} synthetic 384-d points in embedded Qdrant (built in {build:.0f} s, "
          f"opened in {reopen:.1f} s)")
    print(f"  vector search k=12          {pct(xs)}")
    print(f"  with a payload filter       {pct(xf)}")


def scale_map(root: Path, n_points: int, rng: np.random.Generator) -> None:
    import polars as pl

    from mm_platform.lib.storage.lake import Lake

    # the map: a synthetic embedding_map served by a service over a lake holding only that table
    data = root / "data"
    lake = Lake(data / "lake")
    lake.ensure_initialized()
    centres = rng.standard_normal((12, 2)) * 6
    cl = rng.integers(0, 12, n_points)
    xy = centres[cl] + rng.standard_normal((n_points, 2))
    lake.write_global("embedding_map", pl.DataFrame({
        "record_id": [f"r{i:06d}" for i in range(n_points)], "batch_id": ["b"] * n_points,
        "x": xy[:, 0], "y": xy[:, 1], "cluster_id": cl.astype(np.int32), "label": [f"l{i % 7}" for i in range(n_points)],
        "method": ["synthetic"] * n_points, "space": ["fused"] * n_points, "run_id": ["bench"] * n_points}))
    env = {**os.environ, "MM_DATA_DIR": str(data), "MM_MODEL_PROFILE": "offline", "HF_HUB_OFFLINE": "1",
           "DAGSTER_HOME": str(root / "dh")}
    proc, url = start_service(env)
    try:
        import httpx

        t0 = time.perf_counter()
        blob = httpx.get(url + "/api/map/points", timeout=120).content
        first = time.perf_counter() - t0
        xm = timed(lambda i: httpx.get(url + "/api/map/points", timeout=60), 5)
        meta = len(httpx.get(url + "/api/map/meta", timeout=60).content)
        print(f"  map payload: {len(blob) / 1e6:.1f} MB binary + {meta / 1e6:.1f} MB ids (JSON); first (reads the "
              f"table) {first * 1000:.0f} ms, cached {pct(xm)}")
        chromium = shutil.which("chromium")
        if chromium:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as pw:
                b = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = b.new_page(viewport={"width": 1360, "height": 900})
                t0 = time.perf_counter()
                page.goto(url + "/#/map")
                page.wait_for_function("window.__mapStats && window.__mapStats.n > 0", timeout=120_000)
                loaded = time.perf_counter() - t0
                draws, hovers = [], []
                box = page.locator("#map").bounding_box()
                for i in range(20):
                    page.mouse.move(box["x"] + box["width"] * (0.3 + i / 50), box["y"] + box["height"] * 0.5)
                    page.mouse.wheel(0, -120 if i % 2 else 120)
                    page.wait_for_timeout(60)
                    st = page.evaluate("window.__mapStats")
                    draws.append(st["drawMs"])
                    hovers.append(st.get("hoverMs", 0.0))
                b.close()
            print(f"  browser: page to first frame {loaded:.1f} s; one frame {pct(draws)}; hover hit-test {pct(hovers)}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
