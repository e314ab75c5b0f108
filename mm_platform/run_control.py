"""How one job runs in process for the CLI: tagged with this process, stopped by SIGTERM/SIGINT (even a signal
whose interrupt Python swallowed), failed after the pool-wait deadline, and runs of dead processes reaped."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg

from mm_platform.lib.locks import ProcessRef
from mm_platform.lib.settings import setting

ACTIVE_STATUSES = ("STARTED", "STARTING", "NOT_STARTED", "CANCELING")


def process_tags() -> dict[str, str]:
    """Tags naming the process that executes a run in process, so a later CLI can tell when it died."""
    me = ProcessRef.current()
    return {"mm/pid": str(me.pid), "mm/host": me.host, "mm/pstart": me.start_time}


def _run_owner(run: dg.DagsterRun) -> ProcessRef | None:
    pid = run.tags.get("mm/pid", "")
    if not pid.isdigit():
        return None
    return ProcessRef(int(pid), run.tags.get("mm/host", ""), run.tags.get("mm/pstart", ""))


def _dead_run_worker(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The pid of a run worker launched by the daemon/webserver (``dagster api execute_run`` reports "Started
    process for run (pid: N)") when that process is gone; None when alive or unknown.

    Dagster's DefaultRunLauncher (``dagster dev``) has no run worker health check, so its run monitoring
    never fails a STARTED run whose worker died; the sqlite instance is local, so the pid is on this host."""
    from dagster import DagsterEventType

    from mm_platform.lib.locks import pid_alive, process_started_after

    if run.status != dg.DagsterRunStatus.STARTED:
        return None
    for record in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
        if not (record.message or "").startswith("Started process for run (pid: "):
            continue
        pid = int(record.message.split("pid: ")[1].split(")")[0])
        if not pid_alive(pid) or process_started_after(pid, record.timestamp):
            return pid
        return None
    return None


def reap_dead_runs(instance: dg.DagsterInstance, echo: Callable[[str], None] = print) -> list[str]:
    """Mark runs executed in process by a CLI that died as failed, and free the pool slots they hold.

    Runs tagged with ``mm/pid`` whose process is gone (same host, pid dead or reused), and STARTED runs
    launched by the daemon or webserver whose run worker process is gone (``_dead_run_worker``). Pool slots held by runs
    that already ended (or no longer exist) are freed too. Returns the run ids marked failed."""
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    reaped = []
    statuses = [DagsterRunStatus[s] for s in ACTIVE_STATUSES]
    for run in instance.get_runs(filters=RunsFilter(statuses=statuses)):
        owner = _run_owner(run)
        if owner is None:
            worker = _dead_run_worker(instance, run)
            if worker is None:
                continue
            owner = ProcessRef(worker, "this host")
        elif owner.is_current() or not owner.is_dead():
            continue
        instance.report_run_failed(
            run, message=f"mm-platform: the process that executed this run (pid {owner.pid} on {owner.host}) "
                         "is gone; marked failed by the next CLI ingest")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        echo(f"recovered run {run.run_id} ({run.job_name}, {run.tags.get('mm/batch_id', 'global')}): "
             f"its process pid {owner.pid} died; marked FAILURE and freed its pool slots")
        reaped.append(run.run_id)
    storage = instance.event_log_storage
    for key in storage.get_concurrency_keys():
        for holder in storage.get_concurrency_info(key).active_run_ids:
            run = instance.get_run_by_id(holder)
            if run is None or run.is_finished:
                storage.free_concurrency_slots_for_run(holder)
                echo(f"freed pool '{key}' slot of ended run {holder}")
    return reaped


def _daemon_batch_runs(instance: dg.DagsterInstance) -> dict[str, str]:
    """batch id -> run id of the batch runs queued or running that no CLI executes (launched by the daemon)."""
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    statuses = [DagsterRunStatus[s] for s in (*ACTIVE_STATUSES, "QUEUED")]
    heartbeats = instance.get_daemon_heartbeats().values()
    if not any(time.time() - hb.timestamp < 120 for hb in heartbeats):
        return {}  # no daemon alive: nothing launched by it is running (run monitoring fails them once it's back)
    runs = instance.get_runs(filters=RunsFilter(job_name="batch_ingest_job", statuses=statuses))
    return {r.tags["mm/batch_id"]: r.run_id for r in runs if "mm/pid" not in r.tags and "mm/batch_id" in r.tags}


def pool_wait_s() -> float:
    return float(setting("MM_POOL_WAIT_S"))


#: error classes that mean a step was stopped by SIGINT/SIGTERM, not by a fault of its own
INTERRUPT_ERRORS = ("KeyboardInterrupt", "DagsterExecutionInterruptedError")


class RunInterrupted(Exception):
    """SIGTERM/SIGINT (``by_signal``), or the pool-wait deadline, stopped a run executing in process."""

    def __init__(self, message: str, by_signal: bool):
        super().__init__(message)
        self.by_signal = by_signal


class _Watchdog(threading.Thread):
    """Watches one in-process run: turns a captured Ctrl-C into a real interrupt (Dagster's in-process executor
    captures SIGINT but never looks at it), and fails the run when it waits for a pool slot longer than the
    deadline, naming the run that holds the slot. Dead holders are freed while waiting."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, deadline_s: float,
                 echo: Callable[[str], None], interval: float = 0.5):
        super().__init__(name=f"mm-watchdog-{run_id[:8]}", daemon=True)
        self.instance, self.run_id, self.deadline_s, self.echo, self.interval = \
            instance, run_id, deadline_s, echo, interval
        self.reason = ""
        self._stop_event = threading.Event()

    def stop(self) -> None:
        """Stop watching; an interrupt fired but not yet delivered to the main thread is withdrawn."""
        import ctypes

        self._stop_event.set()
        self.join(timeout=5)
        if self.reason:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.main_thread().ident), None)

    def _fire(self, reason: str) -> None:
        """Raise KeyboardInterrupt in the main thread. Not by a signal: during execution Dagster maps SIGINT and
        SIGTERM to a handler that only records them, and its in-process executor never looks at the record."""
        import ctypes

        self.reason = reason
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.main_thread().ident),
                                                   ctypes.py_object(KeyboardInterrupt))

    def _step_was_interrupted(self) -> bool:
        """Whether Dagster turned the signal into a step error itself (it does when the signal lands inside a
        step): the job's retry policy would then re-run the step and the run would finish as if never
        signalled, so the interrupt is raised here instead."""
        events = self.instance.all_logs(
            self.run_id, of_type={dg.DagsterEventType.STEP_UP_FOR_RETRY, dg.DagsterEventType.STEP_FAILURE})
        for record in events:
            err = getattr(record.dagster_event.event_specific_data, "error", None)
            while err is not None:
                if err.cls_name in INTERRUPT_ERRORS:
                    return True
                err = err.cause
        return False

    def _waiting_on(self) -> tuple[str, set[str]] | None:
        storage = self.instance.event_log_storage
        for key in storage.get_concurrency_keys():
            info = storage.get_concurrency_info(key)
            if self.run_id in info.pending_run_ids:
                return key, info.active_run_ids - {self.run_id}
        return None

    def run(self) -> None:
        from dagster._utils.interrupts import check_captured_interrupt

        since = None
        next_pool_check = 0.0
        while not self._stop_event.wait(self.interval):
            if check_captured_interrupt() or SIGNALLED.is_set():
                # fired again every tick until the run stops: an interrupt raised inside a garbage-collector
                # callback is swallowed ("Exception ignored in …"), and the run would go on as if never signalled
                self._fire("interrupted (SIGINT/SIGTERM)")
                continue
            now = time.monotonic()
            if now < next_pool_check:
                continue
            next_pool_check = now + 1.0
            try:
                if self._step_was_interrupted():
                    SIGNALLED.set()
                    continue
                waiting = self._waiting_on()
            except Exception:  # noqa: BLE001 - storage busy: try again next tick
                continue
            if waiting is None:
                since = None
                continue
            since = since or now
            pool, holders = waiting
            reap_dead_runs(self.instance, self.echo)
            if now - since >= self.deadline_s:
                return self._fire(
                    f"waited {now - since:.0f}s (MM_POOL_WAIT_S={self.deadline_s:g}) for a slot of pool "
                    f"'{pool}' held by run {', '.join(sorted(holders)) or '?'}; cancel or fail that run in the "
                    "Dagster UI (Runs) or raise MM_POOL_WAIT_S")


#: Set by every SIGINT/SIGTERM the CLI process receives while it runs jobs, whatever handler is installed
#: (ours or Dagster's): a signal whose exception is swallowed (raised inside a garbage-collector callback,
#: "Exception ignored in …") still stops the ingest.
SIGNALLED = threading.Event()


def _recording(handler: Any) -> Any:
    if not callable(handler) or getattr(handler, "_mm_records", False):
        return handler

    def wrapped(signo: int, frame: Any) -> Any:
        SIGNALLED.set()
        return handler(signo, frame)

    wrapped._mm_records = True  # type: ignore[attr-defined]
    return wrapped


@contextmanager
def _signals_recorded() -> Iterator[None]:
    """While active (main thread only), every SIGINT/SIGTERM handler, including the ones Dagster installs
    during a run, first sets :data:`SIGNALLED`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    original = signal.signal

    def install(signo: int, handler: Any) -> Any:
        return original(signo, _recording(handler) if signo in (signal.SIGINT, signal.SIGTERM) else handler)

    for signo in (signal.SIGINT, signal.SIGTERM):
        original(signo, _recording(signal.getsignal(signo)))
    signal.signal = install  # type: ignore[assignment]
    try:
        yield
    finally:
        signal.signal = original


@contextmanager
def _terminate_raises() -> Iterator[dict]:
    """SIGTERM raises KeyboardInterrupt in the main thread for the duration (no-op off the main thread);
    the yielded dict's ``signalled`` says whether it happened."""
    state = {"signalled": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signo, frame):
        state["signalled"] = True
        SIGNALLED.set()
        raise KeyboardInterrupt(f"signal {signo}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_not_signalled(what: str) -> None:
    """Raise ``RunInterrupted`` when a signal arrived (even one whose exception was swallowed) before ``what``."""
    if SIGNALLED.is_set():
        raise RunInterrupted(f"interrupted (SIGTERM/SIGINT) before {what}", by_signal=True)


def _crash_hook(instance: dg.DagsterInstance) -> None:
    """Test hook: with ``MM_TEST_CRASH_AT=<step_key>`` the process SIGKILLs itself right after that step's
    STEP_START event is stored, i.e. at the start of the step. One central place for every step."""
    target = setting("MM_TEST_CRASH_AT")
    if not target or getattr(instance, "_mm_crash_hook", False):
        return
    original = instance.handle_new_event

    def handle_new_event(event, **kwargs):
        original(event, **kwargs)
        de = event.dagster_event
        if de is not None and de.event_type_value == "STEP_START" and de.step_key == target:
            os.kill(os.getpid(), signal.SIGKILL)

    instance.handle_new_event = handle_new_event
    instance._mm_crash_hook = True


@contextmanager
def _partitions_seen_remembered(instance: dg.DagsterInstance) -> Iterator[None]:
    """For one run: a dynamic partition once found to exist is not looked up in the instance again.

    Dagster checks that the run's partition key exists for every partitioned input of every step, each time with
    its own SQLite connection and table check (15 steps of a batch run: ~30 lookups, 0.3 s). mm_platform never
    removes a batch partition, and a run whose partition someone removed mid-run gains nothing from noticing it
    late. Only found keys are remembered (a missing one is asked again), and only until the run returns."""
    original = instance.has_dynamic_partition
    found: set[tuple[str, str]] = set()

    def has_dynamic_partition(partitions_def_name: str, partition_key: str) -> bool:
        key = (partitions_def_name, partition_key)
        if key in found:
            return True
        exists = original(partitions_def_name=partitions_def_name, partition_key=partition_key)
        if exists:
            found.add(key)
        return exists

    instance.has_dynamic_partition = has_dynamic_partition  # type: ignore[method-assign]
    try:
        yield
    finally:
        del instance.has_dynamic_partition  # the class's method again


def execute_job(job_name: str | dg.JobDefinition, instance: dg.DagsterInstance, echo: Callable[[str], None], *,
                tags: dict[str, str], **kwargs) -> dg.ExecuteInProcessResult:
    """``execute_in_process`` with our process tags, the pool-wait deadline and interruptibility.

    Raises ``RunInterrupted`` (after marking the run failed and freeing its slots) when stopped by a signal or
    the pool deadline."""
    from dagster._core.utils import make_new_run_id

    from mm_platform.definitions import defs

    _crash_hook(instance)
    run_id = make_new_run_id()
    watchdog = _Watchdog(instance, run_id, pool_wait_s(), echo)
    interrupted = False
    with _signals_recorded(), _terminate_raises() as state, _partitions_seen_remembered(instance):
        watchdog.start()
        try:
            job = defs.resolve_job_def(job_name) if isinstance(job_name, str) else job_name
            result = job.execute_in_process(
                instance=instance, raise_on_error=False, run_id=run_id,
                tags={**tags, **process_tags()}, **kwargs)
        except KeyboardInterrupt:
            interrupted, result = True, None
        finally:
            while True:  # an interrupt the watchdog fired may land here: it stops the run all the same
                try:
                    watchdog.stop()
                    break
                except KeyboardInterrupt:
                    interrupted = True
    if (watchdog.reason or interrupted or state["signalled"] or SIGNALLED.is_set()
            or (result is not None and _was_interrupted(result))):
        reason = watchdog.reason or "interrupted (SIGTERM/SIGINT)"
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            instance.report_run_failed(run, message=f"mm-platform: {reason}")
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        raise RunInterrupted(f"run {run_id}: {reason}", by_signal=not watchdog.reason.startswith("waited"))
    return result


def _was_interrupted(result: dg.ExecuteInProcessResult) -> bool:
    for event in result.all_events:
        if event.event_type_value in ("RUN_CANCELED", "PIPELINE_CANCELED", "RUN_FAILURE", "PIPELINE_FAILURE"):
            data = event.event_specific_data
            err = getattr(data, "error", None)
            while err is not None:
                if err.cls_name in INTERRUPT_ERRORS:
                    return True
                err = err.cause
    return False
