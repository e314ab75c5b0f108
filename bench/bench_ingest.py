"""Ingest benchmark on the demo corpus, measured in one run, printed as ratios.

Each step is a real `mm-platform` CLI process, as a user runs it (model loading included):
  1. full ingest of a demo batch of N records;
  2. re-ingest with nothing new;
  3. ingest of a second batch adding 10% new records;
  4. re-ingest of the first batch after its manifest was rewritten with the same records (a producer
     re-sending a batch): everything comes from the embedding cache.
Prints wall times, records/s, the ratios against the full ingest, the embedding cache hit rate of each
step, peak memory, and cluster quality (NMI/ARI of each space against the demo labels).

    python bench/bench_ingest.py [--records 600] [--profile offline]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cli(*args: str, env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mm_platform.cli", *args], env=env, capture_output=True, text=True,
                          check=False)
    dt = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"mm-platform {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return dt, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=600)
    ap.add_argument("--profile", default="offline")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mm-bench-"))
    env = {**os.environ, "MM_DATA_DIR": str(work / "data"), "DAGSTER_HOME": str(work / "dagster_home"),
           "MM_MODEL_PROFILE": args.profile, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    landing = work / "data" / "landing"
    n_inc = max(1, args.records // 10)
    cli("make-demo-data", "--records", str(args.records), "--seed", "0", "--out", str(landing / "full"), env=env)

    t_full, _ = cli("ingest", env=env)
    t_noop, out = cli("ingest", env=env)
    assert "nothing new" in out, out
    cli("make-demo-data", "--records", str(n_inc), "--seed", "1", "--broken", "0", "--id-prefix", "inc",
        "--out", str(landing / "plus10"), env=env)
    t_inc, _ = cli("ingest", env=env)
    manifest = landing / "full" / "records.jsonl"
    manifest.write_text(manifest.read_text() + "\n")  # same records, new bytes: the batch runs again
    t_resend, _ = cli("ingest", env=env)
    _, hits = cli("sql", "SELECT batch_id, count(*) AS n, round(avg(cache_hit::int), 3) AS hit_rate FROM ("
                  "SELECT batch_id, cache_hit FROM text_embeddings_history UNION ALL "
                  "SELECT batch_id, cache_hit FROM image_embeddings_history UNION ALL "
                  "SELECT batch_id, cache_hit FROM audio_embeddings_history UNION ALL "
                  "SELECT batch_id, cache_hit FROM tabular_embeddings_history) GROUP BY 1 ORDER BY 1", "--json",
                  env=env)
    _, metrics = cli("sql", "SELECT space, k, round(nmi, 3) AS nmi, round(ari, 3) AS ari, "
                     "round(silhouette, 3) AS silhouette FROM cluster_metrics ORDER BY space", "--json", env=env)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    print(f"mm_platform ingest benchmark — profile {args.profile}, {args.records} demo records, "
          f"{os.cpu_count()} CPU cores")
    print(f"full ingest:               {t_full:7.1f} s  ({args.records / t_full:5.1f} records/s end to end)")
    print(f"re-ingest, nothing new:    {t_noop:7.1f} s  ratio {t_noop / t_full:.3f}  (goal <= 0.10)")
    print(f"ingest +10% ({n_inc} records): {t_inc:7.1f} s  ratio {t_inc / t_full:.3f}  (goal <= 0.25)")
    print(f"re-sent batch (same records, rewritten manifest): {t_resend:7.1f} s  ratio {t_resend / t_full:.3f}")
    print(f"peak RSS of a CLI process: {peak_mb:7.0f} MB")
    print("embedding cache hit rate per batch (text, image, audio and tabular vectors of its latest run):")
    for row in json.loads(hits)["rows"]:
        print(f"  {row['batch_id']:8s} {row['n']:5d} vectors  hit rate {row['hit_rate']:.3f}")
    print("cluster quality vs demo labels:")
    for row in json.loads(metrics)["rows"]:
        print(f"  {row['space']:6s} k={row['k']:<3d} NMI {row['nmi']:.3f}  ARI {row['ari']:.3f}  "
              f"silhouette {row['silhouette']:.3f}")
    print(f"(data left in {work})")


if __name__ == "__main__":
    main()
