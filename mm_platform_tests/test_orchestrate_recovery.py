"""Recovery of the CLI's in-process runs on a real Dagster instance (temp DAGSTER_HOME): the instance template
upgrade, reaping runs whose process died (and their pool slots), and the pool-wait deadline."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import EngineEventData
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.test_utils import create_run_for_test

from mm_platform.lib.locks import process_start_time
from mm_platform.lib.settings import Paths
from mm_platform.orchestrate import (
    INSTANCE_TEMPLATE,
    RunInterrupted,
    ensure_dagster_home,
    execute_job,
    reap_dead_runs,
)

# the template shipped before it carried a version marker (upgraded in place)
OLD_TEMPLATE = """# Dagster instance settings for mm_platform (copied into $DAGSTER_HOME by `mm-platform home`).
concurrency:
  runs:
    # at most two runs at once: each batch run loads the encoders; more would thrash a small machine
    max_concurrent_runs: 2
  pools:
    # every pool (the `qdrant` pool of the steps that write to Qdrant) runs one step at a time:
    # embedded Qdrant is one process at a time
    default_limit: 1
telemetry:
  enabled: false
"""


@pytest.fixture()
def instance(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    ensure_dagster_home(Paths.from_env({"MM_DATA_DIR": str(tmp_path)}))
    with dg.DagsterInstance.get() as inst:
        yield inst


def test_template_upgrade_keeps_user_files(tmp_path, monkeypatch):
    paths = Paths.from_env({"MM_DATA_DIR": str(tmp_path)})
    for name, old, upgraded in [("old", OLD_TEMPLATE, True),
                                ("v1", "# mm_platform instance template v1\ntelemetry:\n  enabled: false\n", True),
                                ("user", "telemetry:\n  enabled: true\n", False)]:
        home = tmp_path / name
        home.mkdir()
        (home / "dagster.yaml").write_text(old)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        ensure_dagster_home(paths)
        text = (home / "dagster.yaml").read_text()
        assert (text == INSTANCE_TEMPLATE.read_text()) is upgraded, name
        assert (home / "dagster.yaml.bak").exists() is upgraded
        if upgraded:
            assert (home / "dagster.yaml.bak").read_text() == old
    with dg.DagsterInstance.get() as inst:  # the upgraded (last: v1 -> current) file is a valid instance config
        pass
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "v1"))
    with dg.DagsterInstance.get() as inst:
        assert inst.run_monitoring_enabled
        assert inst.run_monitoring_max_resume_run_attempts == 0


def _owned_run(instance, pid: int, start: str, status=DagsterRunStatus.STARTED):
    return create_run_for_test(instance, job_name="batch_ingest_job", status=status, tags={
        "mm/pid": str(pid), "mm/host": socket.gethostname(), "mm/pstart": start, "mm/batch_id": "b1"})


def _hold_slot(instance, run_id: str):
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default("qdrant")
    assert storage.claim_concurrency_slot("qdrant", run_id, "vector_points").is_claimed


def test_reap_marks_dead_runs_failed_and_frees_their_slots(instance):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        zombie = _owned_run(instance, dead.pid, "")
        living = _owned_run(instance, alive.pid, process_start_time(alive.pid))
        mine = _owned_run(instance, os.getpid(), process_start_time(os.getpid()))
        daemon = create_run_for_test(instance, job_name="batch_ingest_job", status=DagsterRunStatus.STARTED)
        daemon_live = create_run_for_test(instance, job_name="batch_ingest_job", status=DagsterRunStatus.STARTED)
        daemon_dead = create_run_for_test(instance, job_name="batch_ingest_job", status=DagsterRunStatus.STARTED)
        for run, pid in ((daemon_live, alive.pid), (daemon_dead, dead.pid)):  # what `dagster api execute_run` says
            instance.report_engine_event(f"Started process for run (pid: {pid}).", run,
                                         EngineEventData.in_process(pid))
        _hold_slot(instance, zombie.run_id)
        said = []
        assert sorted(reap_dead_runs(instance, said.append)) == sorted([zombie.run_id, daemon_dead.run_id])
        for run in (zombie, daemon_dead):
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        for run in (living, mine, daemon, daemon_live):
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
        assert not instance.event_log_storage.get_concurrency_info("qdrant").active_run_ids
        assert any(f"pid {dead.pid} died" in line and zombie.run_id in line for line in said)
        assert reap_dead_runs(instance, said.append) == []
    finally:
        alive.kill()
        alive.wait()


@dg.op(pool="qdrant")
def _pooled_step():
    return 1


@dg.job
def _pooled_job():
    _pooled_step()


def test_pool_wait_has_a_deadline_naming_the_holder(instance, monkeypatch):
    monkeypatch.setenv("MM_POOL_WAIT_S", "2")
    alive = subprocess.Popen(["sleep", "60"])
    try:
        holder = _owned_run(instance, alive.pid, process_start_time(alive.pid))
        _hold_slot(instance, holder.run_id)
        t0 = time.monotonic()
        with pytest.raises(RunInterrupted, match=holder.run_id) as info:
            execute_job(_pooled_job, instance, print, tags={})
        assert not info.value.by_signal and time.monotonic() - t0 < 15
        failed = instance.get_runs(filters=dg.RunsFilter(job_name="_pooled_job"))
        assert [r.status for r in failed] == [DagsterRunStatus.FAILURE]
        # once the holder's process is gone, the waiting run frees its slot and runs
        alive.kill()
        alive.wait()
        result = execute_job(_pooled_job, instance, print, tags={})
        assert result.success
        assert instance.get_run_by_id(holder.run_id).status == DagsterRunStatus.FAILURE
    finally:
        alive.kill()
        alive.wait()
    assert Path(os.environ["DAGSTER_HOME"]).exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed interrupt
def test_a_signal_whose_interrupt_is_swallowed_still_stops_the_ingest() -> None:
    """Dagster's handler raises KeyboardInterrupt where the signal lands; inside a garbage-collector callback
    Python prints "Exception ignored" and goes on. The recorded flag still stops the ingest before its next run."""
    import os
    import signal
    import weakref

    from mm_platform import run_control as orch

    class Thing:
        pass

    orch.SIGNALLED.clear()
    with orch._signals_recorded():
        def raising(signo, frame):  # what dagster's raise_interrupts_as installs
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, raising)
        try:
            thing = Thing()
            fired = []

            def callback(ref):  # the signal is delivered inside this GC callback: the exception is swallowed
                fired.append(True)
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # give the interpreter a bytecode boundary to run the handler at
                    pass

            ref = weakref.ref(thing, callback)
            del thing
            assert fired == [True] and ref() is None
        finally:
            signal.signal(signal.SIGTERM, previous)
    assert orch.SIGNALLED.is_set()
    with pytest.raises(orch.RunInterrupted, match="before the global layer") as info:
        orch.check_not_signalled("the global layer")
    assert info.value.by_signal
    orch.SIGNALLED.clear()


_letters = dg.DynamicPartitionsDefinition(name="letters")


@dg.asset(partitions_def=_letters)
def _first(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"key": context.partition_key})


@dg.asset(partitions_def=_letters, deps=[_first])
def _second() -> None:
    pass


@dg.asset(partitions_def=_letters, deps=[_first, _second])
def _third() -> None:
    pass


_letters_job = dg.define_asset_job("_letters_job", selection=[_first, _second, _third], partitions_def=_letters)
_letters_defs = dg.Definitions(assets=[_first, _second, _third], jobs=[_letters_job])


def test_a_run_looks_its_partition_up_once_not_per_step_input(instance, monkeypatch):
    """Dagster asks whether the run's partition exists for every partitioned input of every step; within one
    run an existing partition is looked up in the instance's storage once, and the instance is left as it was."""
    instance.add_dynamic_partitions("letters", ["a"])
    storage = type(instance.event_log_storage)
    calls = []
    original = storage.has_dynamic_partition

    def counted(self, partitions_def_name, partition_key):
        calls.append(partition_key)
        return original(self, partitions_def_name, partition_key)

    monkeypatch.setattr(storage, "has_dynamic_partition", counted)
    job = _letters_defs.resolve_job_def("_letters_job")
    # what Dagster alone does: one lookup per step input at least
    assert job.execute_in_process(instance=instance, partition_key="a").success
    unremembered = len(calls)
    assert unremembered >= 3, calls
    calls.clear()
    result = execute_job(job, instance, print, partition_key="a", tags={})
    assert result.success and calls == ["a"]
    assert "has_dynamic_partition" not in vars(instance)
    # a partition that does not exist is still refused
    with pytest.raises(Exception, match="zz"):
        execute_job(job, instance, print, partition_key="zz", tags={})
    assert "has_dynamic_partition" not in vars(instance)
