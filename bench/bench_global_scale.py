"""The global layer (clusters, summaries, map, Qdrant payloads) on synthetic records of the real fused
dimension, chunk by chunk: peak memory and time per step.

    PYTHONPATH=. python bench/bench_global_scale.py --sizes 100000,300000 [--dim 1928] [--partition-rows 50000]

For each size, a child process writes N synthetic unit vectors (24 clustered centres plus noise, float32) as
``fused_vectors`` partitions of ``--partition-rows`` rows (List(Float32) Parquet, as the lake stores them);
then a fresh child process runs the global layer over them, reading one partition at a time with the
zero-copy reader (``lib/arrays.py``):

1. ``sample``: a seeded 20k-row sample (one pass);
2. ``clusters``: PCA-16 fitted on the sample (``cluster_stability.fit_projection``), every row reduced chunk
   by chunk (``global_chunks.reduce_chunks``), K-Means with k by silhouette on the reduced rows
   (``clustering.kmeans_auto``: MiniBatchKMeans on a 20k sample above 20k rows);
3. ``summaries``: representatives per cluster in two passes (``global_chunks.chunked_representatives``);
4. ``map``: the map projection fitted on the sample (``map_projection.fit_map_projection``) and every row
   placed chunk by chunk; then a +10% batch placed against the stored projection (the refresh path);
5. ``payloads``: the payload groups ``QdrantStore.set_payloads`` sends (uuid5 id per record, grouped by
   cluster) -- the Python side only; the Qdrant calls are measured by bench_vector_index.py.

Peak memory is the child's ``VmHWM`` (peak RSS) from /proc, and ``ru_maxrss`` as a check. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.measure` from a plain script run
from bench.measure import child_result, peak_rss_gb, run_child  # noqa: E402




def generate(root: Path, n: int, dim: int, part_rows: int, seed: int = 0) -> None:
    import numpy as np
    import polars as pl

    from mm_platform.lib.arrays import matrix_series

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((24, dim)).astype(np.float32)
    for p, start in enumerate(range(0, n, part_rows)):
        m = min(part_rows, n - start)
        X = centres[rng.integers(0, 24, m)] + 1.5 * rng.standard_normal((m, dim)).astype(np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        df = pl.DataFrame({"record_id": [f"rec-{i:08d}" for i in range(start, start + m)],
                           "batch_id": f"b{p:04d}", "embedding": matrix_series(X)})
        out = root / f"batch_id=b{p:04d}"
        out.mkdir(parents=True)
        df.write_parquet(out / "part.parquet")


def global_layer(root: Path, n: int, out: mp.Queue) -> None:
    import numpy as np
    import polars as pl

    from mm_platform.lib.analysis.clustering.stability import fit_projection
    from mm_platform.lib.analysis.clustering import kmeans_auto
    from mm_platform.lib.device import apply_thread_policy
    from mm_platform.lib.analysis.global_chunks import chunked_representatives, reduce_chunks, sample_rows
    from mm_platform.lib.analysis.map_projection import fit_map_projection
    from mm_platform.lib.storage.qdrant import point_id
    from mm_platform.lib.arrays import embedding_matrix

    apply_thread_policy()
    files = sorted(root.glob("batch_id=*/part.parquet"))

    def chunks():
        for f in files:
            df = pl.read_parquet(f, columns=["record_id", "embedding"])
            yield df["record_id"].to_list(), embedding_matrix(df)

    times: dict[str, float] = {}
    t = time.perf_counter()
    S = sample_rows(chunks, n, 20_000, seed=0)
    times["sample (1 pass)"] = time.perf_counter() - t
    t = time.perf_counter()
    mean, comps, _ = fit_projection(S, 16, seed=0)
    Z = reduce_chunks(chunks, mean, comps)
    res = kmeans_auto(Z, k_max=12, seed=0)
    times["clusters (PCA-16, reduce, k-means)"] = time.perf_counter() - t
    t = time.perf_counter()
    reps = chunked_representatives(chunks, res.labels, n=3)
    times["summaries (representatives, 2 passes)"] = time.perf_counter() - t
    t = time.perf_counter()
    proj, _ = fit_map_projection(S, "pca", seed=0)
    coords = np.concatenate([proj.transform(X) for _, X in chunks()])
    times["map (fit on sample + place all, 1 pass)"] = time.perf_counter() - t
    t = time.perf_counter()
    _, first = next(iter(chunks()))  # one partition read and placed, as a refresh after one new batch does
    proj.transform(first)
    times["map refresh (read + place one partition)"] = time.perf_counter() - t
    t = time.perf_counter()
    groups: dict[str, tuple[dict, list[str]]] = {}
    labels = res.labels.tolist()
    i = 0
    for rids, _ in ((f_ids, None) for f_ids in (pl.read_parquet(f, columns=["record_id"])["record_id"].to_list()
                                                for f in files)):
        for r in rids:
            payload = {"cluster_id": int(labels[i])}
            groups.setdefault(json.dumps(payload, sort_keys=True), (payload, []))[1].append(point_id(r))
            i += 1
    times["payloads (build set_payload groups)"] = time.perf_counter() - t
    out.put({"times": times, "k": res.k, "reps": len(reps), "coords_finite": bool(np.isfinite(coords).all()),
             "peak_gb": peak_rss_gb(), "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,300000")
    ap.add_argument("--dim", type=int, default=1928)
    ap.add_argument("--partition-rows", type=int, default=50_000)
    ap.add_argument("--dir", default=None, help="scratch dir (default: a temp dir, removed afterwards)")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="mm-global-scale-"))
    print("| records | dim | write s | step | seconds | peak RSS GB (whole run) |")
    print("|---|---|---|---|---|---|")
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            root = base / f"n{n}"
            shutil.rmtree(root, ignore_errors=True)
            write_s = run_child(generate, root, n, args.dim, args.partition_rows)
            r, total = child_result(global_layer, root, n)
            for step, s in r["times"].items():
                print(f"| {n:,} | {args.dim} | {write_s:.0f} | {step} | {s:.1f} | |")
            print(f"| {n:,} | {args.dim} | | **total (child process, imports included)** | {total:.1f} | "
                  f"**{r['peak_gb']:.2f}** (ru_maxrss {r['maxrss_gb']:.2f}); k={r['k']}, "
                  f"coords finite: {r['coords_finite']} |", flush=True)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
