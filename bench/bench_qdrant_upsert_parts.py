"""Where an embedded Qdrant upsert spends its time, per point: the parts of ``QdrantStore.upsert`` (edge) timed
one by one on the same points in one run (1,928-d, the 12-key payload ``vector_points`` writes).

    python bench/bench_qdrant_upsert_parts.py [--n 8000] [--dim 1928]

Prints microseconds per point (best of 3 for the Python-side parts) and the load average. The engine parts
write real shards in a temp dir (removed at the end).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from bench.bench_vector_index import payload
from mm_platform.lib.storage.qdrant import POINT_NAMESPACE, PointData, _as_buffer, _edge_upsert_ops, point_uuid

SHARED = ("batch_id", "modalities", "models", "fusion")


def best_us(n: int, f: Callable[[], object], reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best * 1e6 / n


def engine_us(root: Path, n: int, dim: int, wal: bool, pts: list, shared: dict | None) -> tuple[float, float, float]:
    """(upsert_points, set_payload, flush) microseconds per point into a fresh int8 shard with the 3 indexes."""
    path = root / f"wal-{wal}-{shared is not None}"
    shard = qe.EdgeShard.create(str(path), qe.EdgeConfig(
        vectors={"fused": qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)}, wal_enabled=wal,
        quantization_config=qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True)))
    for key, schema in (("batch_id", qe.PayloadSchemaType.Keyword), ("label", qe.PayloadSchemaType.Keyword),
                        ("cluster_id", qe.PayloadSchemaType.Integer)):
        shard.update(qe.UpdateOperation.create_field_index(key, schema))
    t_up = t_set = 0.0
    for i in range(0, n, 256):
        chunk = pts[i:i + 256]
        t = time.perf_counter()
        shard.update(qe.UpdateOperation.upsert_points(chunk))
        t_up += time.perf_counter() - t
        if shared is not None:
            t = time.perf_counter()
            shard.update(qe.UpdateOperation.set_payload([p.id for p in chunk], shared))
            t_set += time.perf_counter() - t
    t = time.perf_counter()
    shard.flush()
    t_flush = time.perf_counter() - t
    shard.close()
    shutil.rmtree(path, ignore_errors=True)
    return t_up * 1e6 / n, t_set * 1e6 / n, t_flush * 1e6 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--dim", type=int, default=1928)
    args = ap.parse_args()
    n, dim = args.n, args.dim
    X = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    points = [PointData(f"r{i}", {"fused": X[i]}, payload(i, True)) for i in range(n)]
    ids = [point_uuid(p.record_id) for p in points]
    views = [_as_buffer(p.vectors["fused"]) for p in points]
    full = [{**p.payload, "record_id": p.record_id} for p in points]
    own = [{k: v for k, v in q.items() if k not in SHARED} for q in full]
    rows = {
        "uuid.uuid5 (before)": best_us(n, lambda: [str(uuid.uuid5(POINT_NAMESPACE, p.record_id)) for p in points]),
        "point_uuid (hashlib)": best_us(n, lambda: [point_uuid(p.record_id) for p in points]),
        "memoryviews": best_us(n, lambda: [_as_buffer(p.vectors["fused"]) for p in points]),
        "qe.Point, vector only": best_us(n, lambda: [qe.Point(ids[i], {"fused": views[i]}, {}) for i in range(n)]),
        "qe.Point, full payload": best_us(n, lambda: [qe.Point(ids[i], {"fused": views[i]}, full[i])
                                                      for i in range(n)]),
        "qe.Point, per-point keys only": best_us(n, lambda: [qe.Point(ids[i], {"fused": views[i]}, own[i])
                                                             for i in range(n)]),
        "_edge_upsert_ops, one op (logged)": best_us(
            n, lambda: [_edge_upsert_ops(points[i:i + 256], False) for i in range(0, n, 256)]),
        "_edge_upsert_ops, split (unlogged)": best_us(
            n, lambda: [_edge_upsert_ops(points[i:i + 256], True) for i in range(0, n, 256)]),
    }
    shared = {k: full[0][k] for k in SHARED}
    with tempfile.TemporaryDirectory(prefix="bench-qparts-") as tmp:
        for wal in (False, True):
            one = [qe.Point(ids[i], {"fused": views[i]}, full[i]) for i in range(n)]
            up, _, fl = engine_us(Path(tmp), n, dim, wal, one, None)
            rows[f"engine upsert_points, full payload, WAL {'on' if wal else 'off'}"] = up
            rows[f"engine flush after it, WAL {'on' if wal else 'off'}"] = fl
        split = [qe.Point(ids[i], {"fused": views[i]}, own[i]) for i in range(n)]
        up, sp, fl = engine_us(Path(tmp), n, dim, False, split, shared)
        rows["engine upsert_points, per-point keys, WAL off"] = up
        rows["engine set_payload of the shared keys, WAL off"] = sp
    print(f"{n:,} points x {dim}, load {os.getloadavg()[0]:.1f}")
    print("| part | us/point |\n|---|---|")
    for name, us in rows.items():
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
