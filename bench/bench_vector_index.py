"""Embedded vector index benchmark: qdrant-edge vs qdrant-client local mode, through ``QdrantStore``.

Same synthetic corpus for both backends: N points with the real fused dimension (1,928; clustered, so
neighbours are meaningful), a ``batch_id`` payload (10 values) for the filtered search, written through
``QdrantStore.upsert`` exactly as the vector_index asset does (uuid5 ids, payloads, chunks of 256); edge runs
once per ``--quantization`` value (``MM_QDRANT_QUANTIZATION``: int8, the default, and/or none).
Reports, per backend and size: upsert points/s, index build time (edge: optimise on close), search p50/p95
(k=10) without and with a payload filter, and recall@10 against exact (numpy) cosine neighbours.
Local mode scans every point per query; for sizes above --local-max it is not run and its search time is
extrapolated linearly from the largest measured size (printed as such).

    python bench/bench_vector_index.py [--sizes 20000,100000] [--local-max 2000] [--dim 1928] [--queries 50]
        [--wal off,on] [--payload full|minimal] [--no-search]

``--wal`` runs edge once per ``MM_QDRANT_WAL`` value: ``off`` (the default: unlogged writes bracketed by the
dirty marker, flushed at the end of each upsert call) and/or ``on`` (write-ahead log), so both paths are
measured in the same run. ``--payload full`` (default) gives every point a payload shaped like the one
``vector_points`` writes (12 keys: batch_id, label, cluster_id, timestamp, modalities, models, fusion, text,
image_uri, audio_uri, entity_id, record_id); ``minimal`` only batch_id (what this bench used before).
``upsert pts/s`` is the time inside ``QdrantStore.upsert``; ``+flush pts/s`` adds a final ``flush()`` (the
logged path otherwise flushes only on close), i.e. the rate at which points are durable without a WAL.
``--no-search`` stops after the upsert: no HNSW build, no searches, no exact neighbours (for 1M upserts).

1,000,000 points is opt-in (``--sizes ...,1000000``): ~8 GB of vectors on disk, and the HNSW build took
296 s for 100k points on 2 shared cores, so expect most of an hour there; skipped when memory is short.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mm_platform.lib.storage.qdrant import PointData, QdrantStore

CHUNK = 5_000
N_BATCHES = 10


def corpus_chunks(n: int, dim: int, seed: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 block) pairs; 200 cluster centres + noise, generated chunk by chunk."""
    centres = np.random.default_rng(seed).normal(size=(200, dim)).astype(np.float32)
    for start in range(0, n, CHUNK):
        rng = np.random.default_rng(seed + 1 + start)
        m = min(CHUNK, n - start)
        block = centres[rng.integers(0, len(centres), m)] + rng.normal(scale=0.7, size=(m, dim)).astype(np.float32)
        yield start, block


def queries(nq: int, dim: int) -> np.ndarray:
    centres = np.random.default_rng(0).normal(size=(200, dim)).astype(np.float32)
    rng = np.random.default_rng(999)
    return centres[rng.integers(0, 200, nq)] + rng.normal(scale=0.7, size=(nq, dim)).astype(np.float32)


def exact_top10(n: int, dim: int, q: np.ndarray, batch: str | None) -> list[set[str]]:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for start, block in corpus_chunks(n, dim):
        ids = np.arange(start, start + len(block))
        if batch is not None:
            keep = ids % N_BATCHES == int(batch[1:])
            block, ids = block[keep], ids[keep]
        s = qn @ (block / np.linalg.norm(block, axis=1, keepdims=True)).T
        best_s = np.concatenate([best_s, s], axis=1)
        best_i = np.concatenate([best_i, np.broadcast_to(ids, s.shape)], axis=1)
        top = np.argsort(-best_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(best_s, top, 1), np.take_along_axis(best_i, top, 1)
    return [{f"r{i}" for i in row} for row in best_i]


def payload(i: int, full: bool) -> dict:
    """The point's payload: only batch_id, or shaped like ``lib/vectors/points.build_points``'s."""
    batch = f"b{i % N_BATCHES}"
    if not full:
        return {"batch_id": batch}
    return {"batch_id": batch, "label": f"label{i % 17}", "cluster_id": i % 50, "timestamp": None,
            "modalities": ["text", "image", "audio", "tabular"],
            "models": {"text": "all-MiniLM-L6-v2@abc123", "image": "efficientnet-lite0@def456",
                       "audio": "logmel@1", "tabular": "tabular@1"},
            "fusion": "early:text=1,image=1,audio=1,tabular=1",
            "text": f"record {i}: a short description of the item, as the text preview keeps up to 300 chars",
            "image_uri": f"file:///data/landing/{batch}/images/{i}.png", "audio_uri": None, "entity_id": None}


def run(backend: str, n: int, dim: int, q: np.ndarray, root: Path, quant: str = "", wal: str = "",
        full_payload: bool = True, search: bool = True) -> dict:
    """One backend at one size; ``quant`` sets MM_QDRANT_QUANTIZATION and ``wal`` MM_QDRANT_WAL for the edge
    collection."""
    if quant:
        os.environ["MM_QDRANT_QUANTIZATION"] = quant
    if wal:
        os.environ["MM_QDRANT_WAL"] = wal
    path = root / f"{backend}-{n}"
    t_upsert = 0.0  # time inside QdrantStore.upsert only (not the synthetic data generation)
    with QdrantStore("bench", path=path, backend=backend, open_timeout_s=5) as s:
        s.ensure_collection({"fused": dim})
        for start, block in corpus_chunks(n, dim):
            pts = [PointData(f"r{start + j}", {"fused": v}, payload(start + j, full_payload))
                   for j, v in enumerate(block)]
            t = time.perf_counter()
            s.upsert(pts)
            t_upsert += time.perf_counter() - t
        t = time.perf_counter()
        if backend == "edge":
            s.client.shard("bench").flush()
            if not search:  # bench only: skip the HNSW build that close() runs for a written collection
                s.client._dirty.clear()
        t_flush = time.perf_counter() - t
        t_close = time.perf_counter()
    build_s = time.perf_counter() - t_close  # close: edge optimises (HNSW) and flushes
    name = "/".join([backend, *([quant] if quant else []), *([f"wal-{wal}"] if wal else [])])
    out = {"backend": name, "n": n, "upsert_pts_s": n / t_upsert if t_upsert else 0.0,
           "durable_pts_s": n / (t_upsert + t_flush) if t_upsert else 0.0, "build_s": build_s,
           "load": os.getloadavg()[0]}
    if not search:
        shutil.rmtree(path, ignore_errors=True)
        return out
    with QdrantStore("bench", path=path, backend=backend, open_timeout_s=5) as s:
        assert s.count() == n
        for label, where in (("", None), ("_filter", {"batch_id": "b3"})):
            s.search(q[0], using="fused", k=10, where=where)  # warm
            lat, got = [], []
            for v in q:
                t = time.perf_counter()
                hits = s.search(v, using="fused", k=10, where=where)
                lat.append((time.perf_counter() - t) * 1000)
                got.append({h.record_id for h in hits})
                assert where is None or all(h.payload["batch_id"] == "b3" for h in hits)
            truth = exact_top10(n, dim, q, where["batch_id"] if where else None)
            out[f"p50{label}"], out[f"p95{label}"] = np.percentile(lat, 50), np.percentile(lat, 95)
            out[f"recall{label}"] = float(np.mean([len(a & b) / 10 for a, b in zip(got, truth, strict=True)]))
        if backend == "edge":
            info = s.client.shard("bench").info()
            out["indexed"] = f"{info.indexed_vectors_count}/{info.points_count}"
    shutil.rmtree(path, ignore_errors=True)
    return out


def free_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,100000")
    ap.add_argument("--local-max", type=int, default=2_000, help="largest size run in local mode")
    ap.add_argument("--dim", type=int, default=1928)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--quantization", default="int8", help="edge runs, comma-separated: int8,none")
    ap.add_argument("--wal", default="off,on", help="edge runs, comma-separated MM_QDRANT_WAL values: off,on")
    ap.add_argument("--payload", choices=("full", "minimal"), default="full")
    ap.add_argument("--no-search", action="store_true", help="upsert only: no HNSW build, searches or recall")
    ap.add_argument("--skip-memory-check", action="store_true",
                    help="run sizes the float32 estimate (vectors + HNSW + copies) says may not fit (int8 needs less)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the temp dir (GBs) is removed on kill
    sizes = [int(x) for x in args.sizes.split(",")]
    q = queries(args.queries, args.dim)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-vi-") as tmp:
        root = Path(tmp)
        local_sizes = sorted({min(args.local_max, n) for n in sizes} - {0})
        full, search = args.payload == "full", not args.no_search
        for n in local_sizes:
            rows.append(run("local", n, args.dim, q, root, full_payload=full, search=search))
            print(rows[-1], flush=True)
        for n in sizes:
            need = n * args.dim * 4 * (2.5 if search else 1.2) / 1024**3  # vectors + HNSW + copies in optimise
            if need > free_gb() - 2 and not args.skip_memory_check:
                print(f"SKIP edge n={n}: needs ~{need:.1f} GB, {free_gb():.1f} GB available", flush=True)
                continue
            for quant in args.quantization.split(","):
                for wal in args.wal.split(","):
                    rows.append(run("edge", n, args.dim, q, root, quant.strip(), wal.strip(), full, search))
                    print(rows[-1], flush=True)
    print(f"\n| backend | points | upsert pts/s | +flush pts/s | load | index build s | p50 ms | p95 ms | p50 filter ms "
          f"| p95 filter ms | recall@10 | recall@10 filter |   (dim {args.dim}, {args.queries} queries, "
          f"payload {args.payload})")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tail = (f"{r['build_s']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p50_filter']:.1f} | "
                f"{r['p95_filter']:.1f} | {r['recall']:.3f} | {r['recall_filter']:.3f}") if "p50" in r else \
            "not run (--no-search) | | | | | |"
        print(f"| {r['backend']} | {r['n']:,} | {r['upsert_pts_s']:,.0f} | {r['durable_pts_s']:,.0f} | "
              f"{r['load']:.1f} | {tail} |")
    by = {(r["n"], r["backend"]): r for r in rows}
    for (n, name), r in by.items():
        if "wal-off" in name and (n, name.replace("wal-off", "wal-on")) in by:
            on = by[(n, name.replace("wal-off", "wal-on"))]
            print(f"ratio at {n:,}: upsert unlogged/logged {r['upsert_pts_s'] / on['upsert_pts_s']:.2f}x, "
                  f"durable (+flush) {r['durable_pts_s'] / on['durable_pts_s']:.2f}x")
    local = [r for r in rows if r["backend"] == "local" and r["n"] > 0]  # --local-max 0: none
    if local and "p50" in local[0]:
        big = max(local, key=lambda r: r["n"])
        for n in sizes:
            if n > big["n"]:
                f = n / big["n"]
                print(f"local mode at {n:,}: NOT RUN; extrapolated linearly from {big['n']:,}: search p50 "
                      f"~{big['p50'] * f:,.0f} ms, upsert ~{n / big['upsert_pts_s'] / 60:,.0f} min")
    for r in rows:
        if r["backend"].startswith("edge"):
            for lr in local:
                if lr["n"] == r["n"]:
                    if "p50" in r and "p50" in lr:
                        print(f"ratio at {r['n']:,}: upsert edge/local {r['upsert_pts_s'] / lr['upsert_pts_s']:.1f}x,"
                              f" search p50 local/edge {lr['p50'] / r['p50']:.1f}x")


if __name__ == "__main__":
    main()
