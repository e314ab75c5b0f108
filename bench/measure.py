"""What the scale benchmarks share: peak memory of this process, and steps run in a fresh child process (spawned,
so each measurement starts from an empty heap and pays its own imports)."""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB (Linux VmHWM, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs), so each step's own peak is measured."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def run_child(target: Callable[..., None], *args: Any) -> float:
    """Run ``target(*args)`` in a spawned child to its end; the wall seconds it took."""
    p = mp.get_context("spawn").Process(target=target, args=args)
    t = time.perf_counter()
    p.start()
    p.join()
    return time.perf_counter() - t


def child_result(target: Callable[..., None], *args: Any) -> tuple[Any, float]:
    """Run ``target(*args, queue)`` in a spawned child; what it put on the queue and the wall seconds."""
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    t = time.perf_counter()
    p.start()
    result = q.get()
    p.join()
    return result, time.perf_counter() - t
