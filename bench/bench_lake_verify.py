"""Cost of verifying the lake (``Lake.verify``, run by every `mm-platform ingest`, even the no-op one), measured
in one run and printed as ratios.

Builds a lake of B batches x every partitioned table (R rows each, vectors of dim 512 in the embedding and
fused tables), then times: the Delta commit with its write-time recording (sha256 of each data file)
against a plain Parquet write, a clean verification (a stat and a small JSON read per file), and a verification where every file's
mtime changed (so every file is hashed).

    python bench/bench_lake_verify.py [--batches 100] [--rows 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from mm_platform.lib.storage import lake as lake_mod
from mm_platform.lib.storage.lake import PARTITIONED_TABLES, Lake


def frame(table: str, batch_id: str, rows: int, rng: np.random.Generator) -> pl.DataFrame:
    cols: dict[str, object] = {}
    for c, t in PARTITIONED_TABLES[table].items():
        if c == "batch_id":
            cols[c] = [batch_id] * rows
        elif c == "record_id":
            cols[c] = [f"{batch_id}-{i}" for i in range(rows)]
        elif c == "embedding":
            cols[c] = list(rng.standard_normal((rows, 512), dtype=np.float32))
        else:
            cols[c] = pl.Series(c, [None] * rows, dtype=t)
    return pl.DataFrame(cols).with_columns(pl.col("embedding").cast(pl.List(pl.Float32))) \
        if "embedding" in cols else pl.DataFrame(cols)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--rows", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(Path(tmp) / "lake")
        lake.ensure_initialized()
        frames = {t: frame(t, "x", args.rows, rng) for t in PARTITIONED_TABLES}
        # plain write vs write + record, on the same frames (best of 3 each)
        plain = recorded = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for t, df in frames.items():
                lake_mod.atomic_write_parquet(lake_mod.conform(t, df), Path(tmp) / "plain" / t / "part.parquet")
            plain = min(plain, time.perf_counter() - t0)
            t0 = time.perf_counter()
            for t, df in frames.items():
                lake.write_partition(t, "probe", df)
            recorded = min(recorded, time.perf_counter() - t0)
        for b in range(args.batches):
            for t, df in frames.items():
                lake.write_partition(t, f"b{b}", df.with_columns(pl.lit(f"b{b}").alias("batch_id")))
        files = len(list((lake.root / lake_mod.FILES_DIR).glob("*/*/*.json")))  # one record per Delta data file
        size = sum(p.stat().st_size for p in lake.root.rglob(f"{lake_mod.PART}=*/*.parquet"))
        t0 = time.perf_counter()
        assert lake.verify() == []
        clean = time.perf_counter() - t0
        for p in lake.root.rglob(f"{lake_mod.PART}=*/*.parquet"):
            os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 1))
        t0 = time.perf_counter()
        assert lake.verify() == []
        hashed = time.perf_counter() - t0
        t0 = time.perf_counter()
        lake.verify()
        again = time.perf_counter() - t0
    print(f"lake: {args.batches} batches x {len(PARTITIONED_TABLES)} tables = {files} files, {size / 1e6:.1f} MB")
    print(f"write of one batch (all tables): plain Parquet {plain * 1e3:.0f} ms, Delta commit + size/mtime/sha256 record "
          f"{recorded * 1e3:.0f} ms (x{recorded / plain:.2f})")
    print(f"verify, clean lake (stat + record read per file): {clean * 1e3:.0f} ms "
          f"({clean / files * 1e6:.0f} us/file)")
    print(f"verify, every mtime changed (hash every file, records refreshed): {hashed * 1e3:.0f} ms "
          f"(x{hashed / clean:.1f} the clean check); the next verify: {again * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
