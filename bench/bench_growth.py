"""How each asset's time grows with the corpus: per-asset step times at two or three demo sizes and the
growth exponent b of time ~ N^b (least squares on log-log), for the full ingest (batch + re-cluster job) and
for a +10% batch (the batch run and the refresh it triggers).

    PYTHONPATH=. python bench/bench_growth.py [--sizes 300,600,1200] [--profile offline]

Each size runs in a fresh data dir through the real CLI (`mm-platform ingest`), so model loading and Dagster
overhead are included in the run but not in the step times. Step times are read from the Dagster instance
(STEP_SUCCESS durations). b close to 1 is linear; the global layer should stay near 1 (and the refresh's map
step near 0, since it places only the new records); b > 1.2 flags an asset that will not scale.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def cli(*args: str, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mm_platform.cli", *args], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        sys.exit(f"mm-platform {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def step_times(dagster_home: Path, skip_runs: set[str]) -> tuple[dict[str, float], set[str]]:
    """Seconds per step key summed over the runs of the instance not in ``skip_runs``; and the run ids seen."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    instance = dg.DagsterInstance.get()
    try:
        out: dict[str, float] = defaultdict(float)
        seen: set[str] = set()
        for run in instance.get_runs():
            seen.add(run.run_id)
            if run.run_id in skip_runs:
                continue
            for rec in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS):
                ev = rec.dagster_event
                out[ev.step_key] += ev.event_specific_data.duration_ms / 1000.0
        return dict(out), seen
    finally:
        instance.dispose()


def exponent(sizes: list[int], times: list[float]) -> float | None:
    pts = [(math.log(n), math.log(t)) for n, t in zip(sizes, times, strict=True) if t > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="300,600,1200")
    ap.add_argument("--profile", default="offline")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    full: dict[int, dict[str, float]] = {}
    inc: dict[int, dict[str, float]] = {}
    wall: dict[int, tuple[float, float]] = {}
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"mm-growth-{n}-"))
        home = work / "dagster_home"
        env = {**os.environ, "MM_DATA_DIR": str(work / "data"), "DAGSTER_HOME": str(home),
               "MM_MODEL_PROFILE": args.profile, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        landing = work / "data" / "landing"
        cli("make-demo-data", "--records", str(n), "--seed", "0", "--out", str(landing / "full"), env=env)
        t_full = cli("ingest", env=env)
        full[n], seen = step_times(home, set())
        cli("make-demo-data", "--records", str(max(1, n // 10)), "--seed", "1", "--broken", "0", "--id-prefix",
            "inc", "--out", str(landing / "plus10"), env=env)
        t_inc = cli("ingest", env=env)
        inc[n], _ = step_times(home, seen)
        wall[n] = (t_full, t_inc)
        print(f"{n} records: full ingest {t_full:.1f} s, +10% ingest {t_inc:.1f} s ({work})", flush=True)
    for title, table in (("full ingest (batch + re-cluster job)", full), ("+10% batch (batch run + refresh)", inc)):
        steps = sorted({s for t in table.values() for s in t}, key=lambda s: -table[sizes[-1]].get(s, 0.0))
        print(f"\n### {title}\n")
        print("| step | " + " | ".join(f"{n} s" for n in sizes) + " | exponent b |")
        print("|---|" + "---|" * (len(sizes) + 1))
        for s in steps:
            ts = [table[n].get(s, 0.0) for n in sizes]
            b = exponent(sizes, ts)
            print(f"| {s} | " + " | ".join(f"{t:.2f}" for t in ts) + f" | {'' if b is None else f'{b:.2f}'} |")
        totals = [sum(table[n].values()) for n in sizes]
        b = exponent(sizes, totals)
        print("| **all steps** | " + " | ".join(f"{t:.1f}" for t in totals) + f" | {b:.2f} |")
    b_full = exponent(sizes, [wall[n][0] for n in sizes])
    b_inc = exponent(sizes, [wall[n][1] for n in sizes])
    print(f"\nwall time exponents: full ingest {b_full:.2f}, +10% ingest {b_inc:.2f}")


if __name__ == "__main__":
    main()
