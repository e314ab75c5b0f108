"""The REAL global-layer assets (``clusters``, ``cluster_summary``, ``embedding_map``) at scale: peak memory
and time, materialized with Dagster on a synthetic Delta lake.

    PYTHONPATH=. python bench/bench_global_assets.py --sizes 100000 [--partition-rows 50000] [--dir /tmp/x]

For each size, a child process writes N synthetic records as batch partitions of a real lake (``Lake``):
raw_records, aligned_records, raw_text, text_embeddings (384-d), image_embeddings (1,544-d) and
fused_vectors (their weighted concatenation, 1,928-d, the real fused dimension), 24 clustered centres plus
noise, labels = centre. Then a fresh child process materializes ``clusters``, ``cluster_summary`` and
``embedding_map`` with ``dagster.materialize`` and the real resources (offline encoder profile), exactly the
code the ingest job runs: above ``global_layer.GLOBAL_SAMPLE`` (20k) records the fusion comparison runs on
a sample and the clustering, representatives and map read one partition at a time
(``lib/analysis/global_layer.py``). Prints each step's wall time and the child's peak RSS (``VmHWM``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.measure` from a plain script run
from bench.measure import child_result, peak_rss_gb, reset_peak, run_child  # noqa: E402

TEXT_DIM, IMAGE_DIM = 384, 1544




def generate(lake_dir: Path, n: int, part_rows: int, seed: int = 0) -> None:
    import numpy as np
    import polars as pl

    from mm_platform.lib.storage.lake import Lake
    from mm_platform.lib.arrays import matrix_series

    lake = Lake(lake_dir)
    rng = np.random.default_rng(seed)
    ct = rng.standard_normal((24, TEXT_DIM)).astype(np.float32)
    ci = rng.standard_normal((24, IMAGE_DIM)).astype(np.float32)
    words = [f"topic{c} word{c}a word{c}b" for c in range(24)]
    for p, start in enumerate(range(0, n, part_rows)):
        b = f"b{p:04d}"
        m = min(part_rows, n - start)
        c = rng.integers(0, 24, m)
        T = ct[c] + 1.5 * rng.standard_normal((m, TEXT_DIM)).astype(np.float32)
        Im = ci[c] + 1.5 * rng.standard_normal((m, IMAGE_DIM)).astype(np.float32)
        T /= np.linalg.norm(T, axis=1, keepdims=True)
        Im /= np.linalg.norm(Im, axis=1, keepdims=True)
        F = np.concatenate([T, Im], axis=1) / np.sqrt(2)
        ids = [f"rec-{i:08d}" for i in range(start, start + m)]
        day = dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=p)
        labels = [f"c{x}" for x in c.tolist()]
        common = {"record_id": ids, "batch_id": [b] * m}
        lake.write_partition("raw_records", b, pl.DataFrame({
            **common, "line_number": list(range(1, m + 1)), "op": ["upsert"] * m, "timestamp": [day] * m,
            "label": labels, "text_declared": [True] * m, "image_path": [None] * m, "audio_path": [None] * m,
            "entity_id": [None] * m, "fields_json": ["{}"] * m, "manifest_sha256": ["m" * 64] * m,
            "ingested_at": [day] * m, "landed_at": [day] * m}))
        lake.write_partition("aligned_records", b, pl.DataFrame({
            **common, "line_number": list(range(1, m + 1)), "timestamp": [day] * m, "label": labels,
            "has_text": [True] * m, "has_image": [True] * m, "has_audio": [False] * m, "has_tabular": [False] * m,
            "text_sha256": ids, "image_sha256": ids, "audio_sha256": [None] * m, "fields_sha256": [None] * m,
            "entity_id": [None] * m, "streams_matched": [0] * m, "stream_features_json": [None] * m}))
        texts = [words[x] for x in c.tolist()]
        lake.write_partition("raw_text", b, pl.DataFrame({
            **common, "line_number": list(range(1, m + 1)), "text": texts, "text_sha256": ids,
            "n_chars": [len(t) for t in texts]}))
        for table, X, d in (("text_embeddings", T, TEXT_DIM), ("image_embeddings", Im, IMAGE_DIM)):
            lake.write_partition(table, b, pl.DataFrame({
                **common, "model": ["synthetic"] * m, "model_version": ["1"] * m, "space": [table] * m,
                "dim": [d] * m, "content_sha256": ids, "embedding": matrix_series(X), "cache_hit": [False] * m}))
        lake.write_partition("fused_vectors", b, pl.DataFrame({
            **common, "fusion": ["early:text=1,image=1"] * m, "modalities": [["text", "image"]] * m,
            "dim": [TEXT_DIM + IMAGE_DIM] * m, "embedding": matrix_series(F), "weights_json": ["{}"] * m,
            "weights_source": ["configured"] * m}))


def run_assets(root: Path, out: mp.Queue) -> None:
    import dagster as dg

    from mm_platform.definitions import defs
    from mm_platform.defs.resources import (
        ComputeResource,
        EncodersResource,
        PipelineConfigResource,
        TorchDeviceResource,
        WarehouseResource,
    )

    resources = {
        "warehouse": WarehouseResource(lake_dir=str(root / "lake"), duckdb_path=str(root / "wh.duckdb")),
        "pipeline": PipelineConfigResource(cluster_k_max=12),
        "encoders": EncodersResource(profile="offline", device=TorchDeviceResource(device="cpu", batch_size=32,
                                                                                   num_workers=0)),
        "compute": ComputeResource(),
    }
    times, peaks = {}, {}
    with dg.instance_for_test() as instance:
        # the assets as the code location loads them (clusters is the multi-asset writing recluster_assignments)
        for node, key in (("clusters", "recluster_assignments"), ("cluster_summary", "cluster_summary"),
                          ("embedding_map", "embedding_map")):
            asset = defs.get_assets_def(key)
            reset_peak()
            t = time.perf_counter()
            res = dg.materialize([asset], instance=instance, resources=resources)
            assert res.success
            times[node] = time.perf_counter() - t
            peaks[node] = peak_rss_gb()
            md = res.asset_materializations_for_node(node)[0].metadata
            if node == "clusters":
                times["_k"] = md["k"].value
    out.put({"times": times, "peaks": peaks, "peak_gb": max(peaks.values())})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--partition-rows", type=int, default=50_000)
    ap.add_argument("--dir", default=None, help="scratch dir (default: a temp dir, removed afterwards)")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="mm-global-assets-"))
    print("| records | write s | asset | seconds | peak RSS GB (assets child) |")
    print("|---|---|---|---|---|")
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            root = base / f"n{n}"
            shutil.rmtree(root, ignore_errors=True)
            write_s = run_child(generate, root / "lake", n, args.partition_rows)
            r, total = child_result(run_assets, root)
            k = r["times"].pop("_k", None)
            for step, s in r["times"].items():
                print(f"| {n:,} | {write_s:.0f} | {step} | {s:.1f} | {r['peaks'].get(step, 0):.2f} |")
            print(f"| {n:,} | | **total (child, imports included)**, k={k} | {total:.1f} | **{r['peak_gb']:.2f}** (max of the assets) |",
                  flush=True)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
