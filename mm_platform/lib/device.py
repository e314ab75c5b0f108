"""Torch device helpers: device resolution, autocast, and CUDA out-of-memory back-off.

Everything here is framework-agnostic (no Dagster) and safe to import on CPU-only machines.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class LazyModule:
    """A module imported on its first attribute access: ``torch = LazyModule("torch")``.

    Importing torch costs 1-2 s. The modules that use it (encoders, shared-space heads) are imported by every
    process that loads the definitions, but a ray-mode run process, the CLI and the explorer never touch
    torch: with this they do not pay for it. Use it for module-level names only read inside functions.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> object:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"LazyModule({self._name!r})"

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_LOGGED_ONCE: set[str] = set()


def _log_once(key: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
    """Log ``msg`` the first time ``key`` is seen in this process."""
    if key in _LOGGED_ONCE:
        return
    _LOGGED_ONCE.add(key)
    logger.log(level, msg, *args)


def _normalise_spec(spec: str) -> str:
    if not isinstance(spec, str):
        raise TypeError(
            f"device spec must be a string such as 'auto', 'cpu', 'cuda' or 'cuda:0', got {spec!r}"
        )
    return spec.strip().lower()


def _valid_spec(spec: str) -> str:
    """The normalised spec; ValueError when it is none of auto, cpu, cuda, cuda:N."""
    s = _normalise_spec(spec)
    if not _DEVICE_RE.match(s):
        raise ValueError(
            f"invalid device {spec!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N' (e.g. 'cuda:0')"
        )
    return s


@dataclass(frozen=True)
class DeviceConfig:
    """How encoders run: where, in what batch size, at what precision, with how many decode workers.

    Attributes:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: items per forward pass (the OOM back-off may lower it on CUDA).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``; fp16/bf16 run under autocast on CUDA and fall back
            to fp32 on CPU (logged once).
        num_workers: torch DataLoader workers that decode and preprocess images (0 = in-process).
    """

    device: str = "auto"
    batch_size: int = 64
    precision: str = "fp32"
    num_workers: int = 2

    def __post_init__(self) -> None:
        _valid_spec(self.device)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"invalid precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if (
            isinstance(self.num_workers, bool)
            or not isinstance(self.num_workers, int)
            or self.num_workers < 0
        ):
            raise ValueError(f"num_workers must be an integer >= 0, got {self.num_workers!r}")

    def torch_device(self) -> torch.device:
        """The concrete device this config resolves to (see :func:`resolve_device`)."""
        return resolve_device(self.device)


def resolve_device(spec: str) -> torch.device:
    """Turn a device spec into a concrete :class:`torch.device`.

    ``"auto"`` picks ``cuda`` (the current CUDA device) when CUDA is available, else ``cpu``. ``"cuda"`` and
    ``"cuda:N"`` require CUDA (and device ``N``) to exist.

    Raises:
        ValueError: the spec is malformed, or names a CUDA device that is not available.
        TypeError: the spec is not a string.
    """
    import torch
    s = _valid_spec(spec)
    if s == "cpu":
        return torch.device("cpu")
    if s == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    # cuda / cuda:N
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {spec!r} asked for CUDA, but CUDA is not available here "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use 'cpu' or 'auto'"
        )
    if ":" in s:
        index = int(s.split(":", 1)[1])
        count = torch.cuda.device_count()
        if index >= count:
            raise ValueError(
                f"device {spec!r} does not exist: {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    return torch.device("cuda")


def check_device(spec: str) -> None:
    """Fail fast on a device spec that cannot run here (``resolve_device``'s errors), importing torch only
    for a spec that names CUDA: ``auto`` and ``cpu`` always resolve, so a process that loads no model locally
    (a ray-mode run, the CLI) does not pay torch's import to check them."""
    s = _valid_spec(spec)
    if s.startswith("cuda"):
        resolve_device(s)


def effective_precision(device: torch.device, precision: str) -> str:
    """The precision that actually runs on ``device``: reduced precision only on CUDA (bf16 only if supported)."""
    import torch
    if precision not in PRECISIONS:
        raise ValueError(f"invalid precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return "fp32"
    if device.type != "cuda":
        _log_once(
            f"cpu-precision-{precision}",
            "precision %s requested on %s: reduced precision runs only on CUDA, falling back to fp32",
            precision,
            device,
        )
        return "fp32"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        _log_once("bf16-unsupported", "bf16 is not supported on this GPU, falling back to fp32")
        return "fp32"
    return precision


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """A context manager running the enclosed forward passes at ``precision`` on ``device``.

    On CUDA, ``fp16``/``bf16`` enable :func:`torch.autocast`; everything else (fp32, or any precision on CPU)
    is a no-op context. Raises ValueError for an unknown precision.
    """
    import torch
    eff = effective_precision(device, precision)
    if eff == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if eff == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)


def is_oom_error(exc: BaseException) -> bool:
    """True when ``exc`` is a CUDA out-of-memory error (typed, or an older plain RuntimeError)."""
    import torch
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_cuda_memory() -> None:
    """Release cached CUDA blocks (no-op when CUDA was never initialised)."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


T = TypeVar("T")
R = TypeVar("R")


class OOMBackoff:
    """Runs a function over a batch in chunks, halving the chunk size on CUDA out-of-memory errors.

    The reduced size is kept for later calls on the same instance, so one OOM does not repeat on every batch.

    Args:
        batch_size: initial chunk size (>= 1).
        min_batch: smallest chunk size tried; an OOM at this size is re-raised.
    """

    def __init__(self, batch_size: int, min_batch: int = 1) -> None:
        if batch_size < 1 or min_batch < 1:
            raise ValueError(f"batch_size and min_batch must be >= 1, got {batch_size} and {min_batch}")
        self.batch_size = max(batch_size, min_batch)
        self.min_batch = min_batch
        self.backoffs = 0

    def run(self, fn: Callable[[T], R], items: T) -> list[R]:
        """Apply ``fn`` to consecutive slices of ``items`` (anything with ``len`` and slicing: list, tensor).

        Returns ``fn``'s results, one per slice, in order; their concatenation covers ``items`` exactly once.
        """
        n = len(items)  # type: ignore[arg-type]
        results: list[R] = []
        start = 0
        while start < n:
            size = min(self.batch_size, n - start)
            chunk = items[start : start + size]  # type: ignore[index]
            try:
                results.append(fn(chunk))
            except RuntimeError as exc:
                if not is_oom_error(exc) or size <= self.min_batch:
                    raise
                new_size = max(self.min_batch, size // 2)
                logger.warning(
                    "CUDA out of memory at batch size %d; retrying with batch size %d", size, new_size
                )
                self.batch_size = new_size
                self.backoffs += 1
            else:
                start += size
                continue
            # Outside the except block, so the exception's frames (and their tensors) are released first.
            del chunk
            free_cuda_memory()
        return results


def oom_backoff(fn: Callable[[T], R], batch: T, min_batch: int = 1) -> list[R]:
    """Run ``fn(batch)``; on CUDA OOM halve the batch, empty the CUDA cache and retry on the pieces.

    Args:
        fn: called with a slice of ``batch`` (same type as ``batch``).
        batch: a list, tuple, tensor or anything else with ``len`` and slicing.
        min_batch: smallest slice tried; an OOM at this size is re-raised.

    Returns:
        The results of ``fn`` for each slice, in order (a single element when nothing failed).
    """
    n = len(batch)  # type: ignore[arg-type]
    if n == 0:
        return []
    return OOMBackoff(n, min_batch=min_batch).run(fn, batch)


def sequence_chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """Split ``items`` into consecutive chunks of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- thread policy ---------------------------------------------------------------------------------------

#: Environment variables read by the OpenMP / BLAS runtimes when they start (later changes go through
#: threadpoolctl, which reaches the runtimes already loaded).
THREAD_ENV_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
#: Runs that may execute at once (``max_concurrent_runs`` of ``mm_platform/instance/dagster.yaml``); each run
#: executes its steps one after the other in one process, so this is also the number of concurrent steps.
DEFAULT_CONCURRENT_STEPS = 2


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask on Linux, else ``os.cpu_count()``)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _positive_env_int(name: str, environ: dict[str, str] | None) -> int | None:
    import os

    raw = (environ if environ is not None else os.environ).get(name, "").strip()
    if raw in ("", "auto", "0"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer or 'auto', got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer or 'auto', got {raw!r}")
    return value


def step_threads(environ: dict[str, str] | None = None, cpus: int | None = None) -> int:
    """Threads one step may use so that concurrent steps never oversubscribe the cores.

    ``MM_STEP_THREADS`` (a positive integer) wins; else ``cores // MM_CONCURRENT_STEPS`` (default
    :data:`DEFAULT_CONCURRENT_STEPS`, the run queue's ``max_concurrent_runs``), at least 1. Raises ValueError
    on a malformed setting.
    """
    fixed = _positive_env_int("MM_STEP_THREADS", environ)
    if fixed is not None:
        return fixed
    concurrent = _positive_env_int("MM_CONCURRENT_STEPS", environ) or DEFAULT_CONCURRENT_STEPS
    return max(1, (cpus or available_cpus()) // concurrent)


@dataclass(frozen=True)
class ThreadPolicy:
    """What :func:`apply_thread_policy` set: the thread count and which knobs it reached."""

    threads: int
    torch: bool
    threadpoolctl: bool
    env_set: tuple[str, ...]


def apply_thread_policy(threads: int | None = None) -> ThreadPolicy:
    """Cap this process's compute threads at ``threads`` (default :func:`step_threads`).

    * ``torch.set_num_threads`` when torch is already imported (importing it here would cost seconds);
    * OpenMP/BLAS runtimes already loaded, through ``threadpoolctl`` when it is installed;
    * the ``*_NUM_THREADS`` variables of :data:`THREAD_ENV_VARS` that the user has not set, for runtimes that
      load later in this process or in its children.

    Idempotent; returns what it did. Raises ValueError when ``threads < 1``.
    """
    import os
    import sys

    n = step_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    env_set = []
    for var in THREAD_ENV_VARS:
        if not os.environ.get(var) or os.environ.get(f"_MM_SET_{var}") == "1":
            os.environ[var] = str(n)
            os.environ[f"_MM_SET_{var}"] = "1"
            env_set.append(var)
    used_torch = False
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(n)
        used_torch = True
    used_tpc = False
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        # threadpoolctl scans every loaded library (40 ms, each run of a process): not again for the same count
        # when no shared library was loaded since
        state = (n, _loaded_libraries())
        if state[1] is None or _THREADPOOL_LIMITED.get("state") != state:
            threadpool_limits(limits=n)
            _THREADPOOL_LIMITED["state"] = state
        used_tpc = True
    return ThreadPolicy(n, used_torch, used_tpc, tuple(env_set))


#: (thread count, loaded libraries) threadpoolctl last applied in this process
_THREADPOOL_LIMITED: dict[str, tuple] = {}


def _loaded_libraries() -> frozenset[str] | None:
    """The shared libraries mapped into this process (Linux ``/proc/self/maps``, ~1 ms); None elsewhere."""
    try:
        with open("/proc/self/maps") as maps:
            return frozenset(line[line.index("/"):].strip() for line in maps if ".so" in line and "/" in line)
    except OSError:
        return None


@contextlib.contextmanager
def thread_limit(threads: int | None = None):  # type: ignore[no-untyped-def]
    """Context manager: torch and the loaded OpenMP/BLAS runtimes limited to ``threads`` (default
    :func:`step_threads`) inside, restored on exit."""
    import sys

    n = step_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    torch = sys.modules.get("torch")
    old = torch.get_num_threads() if torch is not None else None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(limits=n)
    try:
        if torch is not None:
            torch.set_num_threads(n)
        with limits:
            yield n
    finally:
        if torch is not None and old is not None:
            torch.set_num_threads(old)
