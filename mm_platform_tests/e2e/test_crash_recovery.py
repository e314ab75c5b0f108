"""No run can wedge the platform: an ingest SIGKILLed at the start of a step (``MM_TEST_CRASH_AT``) leaves a
STARTED run (and, in `vector_points`, the `qdrant` pool's only slot) behind; the next ingest marks it failed,
frees the slot, finishes quickly and converges to the same warehouse, lake and Qdrant points as an
uninterrupted run. SIGTERM stops an ingest within seconds; two ingests at once process each batch once."""

import os
import signal
import subprocess
import sys
import time

import duckdb
import numpy as np
import pytest

from mm_platform.demo.generator import make_demo_batch
from mm_platform.lib.storage.qdrant import QdrantStore
from mm_platform.lib.settings import Paths

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "mm_platform.cli"]
N_RECORDS = 12
# every step of batch_ingest_job is killed in turn by `test_sigkill_at_each_batch_step_in_turn_converges` (its
# first crash, at raw_records, starts from a fresh data dir); these trials each start from a fresh data dir too:
# the step holding the qdrant pool's only slot (the wedge of issue 9) and a step of the global layer
CRASH_STEPS = ["vector_points", "qdrant_cluster_payloads"]


def batch_job_steps() -> list[str]:
    """The step keys of batch_ingest_job in execution order (from the loaded definitions)."""
    import dagster as dg
    from dagster._core.execution.api import create_execution_plan

    from mm_platform.definitions import defs

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("batches", ["b1"])
        plan = create_execution_plan(defs.resolve_job_def("batch_ingest_job"), instance_ref=instance.get_ref(),
                                     tags={"dagster/partition": "b1"})
        return [step.key for step in plan.get_steps_to_execute_in_topo_order()]


def _env(data_dir, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MM_LANDING_DIR", "MM_LAKE_DIR", "MM_DUCKDB_PATH", "MM_QDRANT_PATH", "QDRANT_URL",
                        "MM_TEST_CRASH_AT")}
    env.update(MM_DATA_DIR=str(data_dir), DAGSTER_HOME=str(data_dir / "dagster_home"), MM_MODEL_PROFILE="offline",
               HF_HUB_OFFLINE="1", **extra)
    return env


def _ingest(data_dir, timeout=300, **extra) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([*CLI, "ingest"], capture_output=True, text=True, env=_env(data_dir, **extra),
                          timeout=timeout, check=False)
    return proc, time.monotonic() - t0


def _make_data(root):
    make_demo_batch(root / "landing" / "b1", n_records=N_RECORDS, seed=5, n_broken=0, id_prefix="c")
    return root


def state(data_dir) -> dict:
    """What an ingest produces, modulo timestamps and run ids: records, clusters, fused vectors, Qdrant points."""
    paths = Paths.from_env({"MM_DATA_DIR": str(data_dir)})
    con = duckdb.connect(str(paths.duckdb_path), read_only=True)
    try:
        records = sorted(r[0] for r in con.execute("SELECT record_id FROM current_records").fetchall())
        clusters = dict(con.execute("SELECT record_id, cluster_id FROM current_clusters").fetchall())
        fused = {r: np.round(np.asarray(e, dtype=np.float32), 5).tolist()
                 for r, e in con.execute("SELECT record_id, embedding FROM fused_vectors").fetchall()}
        batches = sorted(r[0] for r in con.execute("SELECT batch_id FROM batches").fetchall())
    finally:
        con.close()
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        points = {p.payload["record_id"]: (p.payload.get("cluster_id"),
                                           {k: np.round(np.asarray(v), 5).tolist() for k, v in p.vector.items()})
                  for p in store.scroll_all(with_vectors=True)}
    return {"records": records, "clusters": clusters, "fused": fused, "points": points, "batches": batches}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    data = _make_data(tmp_path_factory.mktemp("reference") / "data")
    proc, seconds = _ingest(data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ref = state(data)
    assert len(ref["records"]) == N_RECORDS and len(ref["points"]) == N_RECORDS
    return ref, seconds


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_sigkill_at_step_start_recovers(step, reference, tmp_path):
    ref, ref_seconds = reference
    data = _make_data(tmp_path / "data")
    crashed, _ = _ingest(data, MM_TEST_CRASH_AT=step)
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr

    proc, seconds = _ingest(data, timeout=240, MM_POOL_WAIT_S="60")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "recovered run" in out and "marked FAILURE" in out
    assert state(data) == ref
    print(f"\nMEASURE crash_at={step} next_ingest_s={seconds:.1f} reference_ingest_s={ref_seconds:.1f}")
    assert_nothing_started_no_slot_held(data)


def test_sigkill_inside_an_unlogged_qdrant_write_is_restored_from_the_lake(reference, tmp_path):
    """Killed after Qdrant took the first update of `vector_points`' write and before its flush (a collection
    without a WAL): the dirty marker is on disk, so the next ingest, besides recovering the run, drops the
    collection, restores it from the lake and converges to the uninterrupted state."""
    from mm_platform.lib.storage.qdrant_edge import CRASH_IN_UNLOGGED_WRITE, DIRTY_SUFFIX

    ref, _ = reference
    data = _make_data(tmp_path / "data")
    crashed, _ = _ingest(data, MM_TEST_CRASH_AT=CRASH_IN_UNLOGGED_WRITE)
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    marker = Paths.from_env({"MM_DATA_DIR": str(data)}).qdrant_path / f"mm_records{DIRTY_SUFFIX}"
    assert marker.exists()

    proc, _ = _ingest(data, timeout=240, MM_POOL_WAIT_S="60")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not marker.exists()
    assert state(data) == ref
    assert_nothing_started_no_slot_held(data)


def test_sigkill_at_each_batch_step_in_turn_converges(reference, tmp_path):
    """The batch is killed at the start of every step of batch_ingest_job in turn, in one data dir: each next
    ingest recovers the previous crash (run failed, slots freed) and gets one step further; the last one
    completes and the state equals the uninterrupted run's."""
    ref, _ = reference
    steps = batch_job_steps()
    assert len(steps) >= 10 and steps[0] == "raw_records" and "vector_points" in steps
    data = _make_data(tmp_path / "data")
    for i, step in enumerate(steps):
        crashed, _ = _ingest(data, MM_TEST_CRASH_AT=step, MM_POOL_WAIT_S="60")
        out = crashed.stdout + crashed.stderr
        assert crashed.returncode == -signal.SIGKILL, f"{step}: {out}"
        if i:
            assert "recovered run" in out, f"{step}: the previous crash was not recovered: {out}"
    proc, seconds = _ingest(data, timeout=240, MM_POOL_WAIT_S="60")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "recovered run" in out, out
    assert state(data) == ref
    print(f"\nMEASURE crashed_at_each_of={len(steps)} steps, final ingest {seconds:.1f}s")
    assert_nothing_started_no_slot_held(data)


def assert_nothing_started_no_slot_held(data) -> None:
    """Nothing is left STARTED, and no pool slot is held."""
    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    os.environ["DAGSTER_HOME"] = str(data / "dagster_home")
    with dg.DagsterInstance.get() as instance:
        active = instance.get_runs(filters=RunsFilter(statuses=[
            DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.NOT_STARTED]))
        assert active == []
        storage = instance.event_log_storage
        assert all(not storage.get_concurrency_info(k).active_run_ids for k in storage.get_concurrency_keys())


def test_sigterm_stops_within_seconds_and_two_ingests_do_not_double(reference, tmp_path):
    ref, _ = reference
    data = _make_data(tmp_path / "data")
    proc = subprocess.Popen([*CLI, "ingest"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(data))
    out = ""
    for line in proc.stdout:  # wait until a run is executing, then SIGTERM
        out += line
        if "ingesting" in line:
            break
    time.sleep(1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    stop_s = time.monotonic() - t0
    out += rest
    assert stop_s < 20, out
    assert proc.returncode in (130, -signal.SIGTERM, 0), out
    print(f"\nMEASURE sigterm_stop_s={stop_s:.1f} rc={proc.returncode}")

    # two ingests at once: the second waits on the lock, then finds nothing left to do
    first = subprocess.Popen([*CLI, "ingest"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=_env(data))
    time.sleep(0.5)
    second = subprocess.Popen([*CLI, "ingest"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(data))
    out1, _ = first.communicate(timeout=300)
    out2, _ = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    outs = out1 + out2
    assert outs.count("batch b1: done") == 1, outs
    assert "waiting for ingest pid" in outs, outs
    assert state(data) == ref


def test_dagster_dev_run_worker_killed_then_cli_recovers(reference, tmp_path, monkeypatch):
    """Under `dagster dev` (daemon + landing sensor) the batch run's worker is SIGKILLed mid-run: dagster dev
    marks the run failed (the code server watches the workers it launched), and the next ingest completes the
    batch and converges to the uninterrupted result. (When dagster dev itself died with the worker, the CLI's
    reaper fails the STARTED run instead: tested in test_orchestrate_recovery.py.)"""
    from mm_platform.orchestrate import INSTANCE_TEMPLATE
    from mm_platform_tests.e2e.test_dagster_dev_sensor import REPOS_QUERY, DagsterDev

    ref, _ = reference
    data = tmp_path / "data"
    (data / "landing").mkdir(parents=True)
    home = data / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_TEMPLATE.read_text())
    env = _env(data)
    for k in ("MM_DATA_DIR", "DAGSTER_HOME", "MM_MODEL_PROFILE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(k, env[k])
    dev = DagsterDev(home, tmp_path / "dagster_dev.log")
    try:
        dev.wait_until("code location loaded", lambda: any(
            n["location"]["name"] == "mm_platform"
            for n in dev.query(REPOS_QUERY)["repositoriesOrError"].get("nodes") or []), 180)
        _make_data(data)
        dev.wait_until("batch run started", lambda: any(
            r["status"] == "STARTED" for r in dev.runs("batch_ingest_job")), 240)
        import dagster as dg

        def worker_pid() -> int | None:  # what the run worker reports: "Started process for run (pid: N)."
            with dg.DagsterInstance.get() as inst:
                for r in inst.get_runs(filters=dg.RunsFilter(job_name="batch_ingest_job")):
                    for rec in inst.all_logs(r.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                        if (rec.message or "").startswith("Started process for run (pid: "):
                            return int(rec.message.split("pid: ")[1].split(")")[0])
            return None

        dev.wait_until("run worker pid reported", lambda: worker_pid() is not None, 60)
        os.kill(worker_pid(), signal.SIGKILL)
        t0 = time.monotonic()
        dev.wait_until("killed run marked FAILURE", lambda: [r["status"] for r in dev.runs("batch_ingest_job")]
                       == ["FAILURE"], 120)
        failed_after = time.monotonic() - t0
    finally:
        dev.stop()
    proc, seconds = _ingest(data, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert state(data) == ref
    print(f"\nMEASURE dagster_dev_worker_killed marked_failed_after_s={failed_after:.1f}")
    print(f"\nMEASURE dagster_dev_worker_killed next_ingest_s={seconds:.1f}")
