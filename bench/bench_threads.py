"""Does the per-step thread policy pay? Two concurrent "steps" (processes, as two concurrent runs are), each
training a small torch MLP (the shape of the alignment heads) and running a BLAS-heavy covariance (the map's
PCA fit), once with every library's default thread count (each step takes every core: oversubscribed)
and once under ``apply_thread_policy()`` (cores // concurrent steps), and a single step alone for reference.

    PYTHONPATH=. python bench/bench_threads.py [--steps 120] [--rows 12000] [--concurrent 2]

Prints wall seconds per configuration and the ratio measured in this run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time


def _work(threads: int | None, steps: int, rows: int, out: mp.Queue) -> None:
    from mm_platform.lib.device import apply_thread_policy

    if threads is not None:
        apply_thread_policy(threads)
    import numpy as np
    import torch

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = torch.nn.Sequential(torch.nn.Linear(1928, 512), torch.nn.GELU(), torch.nn.Linear(512, 128))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(256, 1928)
    y = torch.randn(256, 128)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    t_torch = time.perf_counter() - t0
    t1 = time.perf_counter()
    X = np.random.default_rng(0).standard_normal((rows, 1928)).astype(np.float64)
    for start in range(0, rows, 4096):
        C = X[start : start + 4096]
        _ = C.T @ C
    t_blas = time.perf_counter() - t1
    out.put((torch.get_num_threads(), t_torch, t_blas))


def run(concurrent: int, threads: int | None, steps: int, rows: int) -> tuple[float, list[tuple]]:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_work, args=(threads, steps, rows, q)) for _ in range(concurrent)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return time.perf_counter() - t0, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--rows", type=int, default=12000)
    ap.add_argument("--concurrent", type=int, default=2)
    args = ap.parse_args()
    from mm_platform.lib.device import available_cpus, step_threads

    cpus = available_cpus()
    policy = step_threads({"MM_CONCURRENT_STEPS": str(args.concurrent)})
    print(f"{cpus} cores, {args.concurrent} concurrent steps, policy: {policy} thread(s) per step")
    rows = []
    for name, conc, threads in [
        ("one step alone, default threads", 1, None),
        (f"{args.concurrent} steps, default threads (oversubscribed)", args.concurrent, None),
        (f"{args.concurrent} steps, policy ({policy} thread(s) each)", args.concurrent, policy),
    ]:
        wall, res = run(conc, threads, args.steps, args.rows)
        torch_s = max(r[1] for r in res)
        blas_s = max(r[2] for r in res)
        rows.append((name, wall, torch_s, blas_s, res[0][0]))
        print(f"| {name} | torch threads {res[0][0]} | wall {wall:.1f} s | slowest torch {torch_s:.1f} s "
              f"| slowest BLAS {blas_s:.1f} s |", flush=True)
    over, pol = rows[1], rows[2]
    print(f"ratio policy/oversubscribed: wall {pol[1] / over[1]:.2f}, torch {pol[2] / over[2]:.2f}, "
          f"BLAS {pol[3] / over[3]:.2f} (< 1 means the policy is faster)")


if __name__ == "__main__":
    main()
