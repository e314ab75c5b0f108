"""The real `dagster dev` (webserver + daemon) follows the landing dir on its own.

Two batches dropped into the landing dir are each picked up once by `landing_sensor` and ingested by
`batch_ingest_job`; `global_layer_sensor` then builds the global layer once no batch run is in flight (the
first full clustering, summaries and Qdrant cluster payloads), in at most one run per batch run. Afterwards the lake,
the DuckDB views and embedded Qdrant agree. dagster dev's output goes to a file whose tail (with the
sensor ticks and the automation evaluations) is printed when a wait runs out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from mm_platform.demo.generator import make_demo_batch
from mm_platform.lib.storage.lake import Lake, connect_readonly
from mm_platform.lib.storage.qdrant import QdrantStore
from mm_platform.orchestrate import INSTANCE_TEMPLATE
from mm_platform_tests.e2e.conftest import free_port, graphql

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
LOCATION = "mm_platform"
POLL_S = 3.0
LOAD_TIMEOUT_S = 180
BATCH_TIMEOUT_S = 240
GLOBAL_TIMEOUT_S = 360
#: every wait also stops at this many seconds after the start, so a failure still prints its diagnostics
#: before pytest-timeout (900 s in pyproject.toml) kills the test
TOTAL_BUDGET_S = 840
IN_FLIGHT = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}

REPOS_QUERY = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
RUNS_QUERY = """{ runsOrError(filter: {pipelineName: "%s"}) { ... on Runs { results {
  runId status pipelineName startTime endTime tags { key value } } } } }"""
ALL_RUNS_QUERY = """{ runsOrError { ... on Runs { results {
  runId status pipelineName startTime endTime assetSelection { path } tags { key value } } } } }"""
LATEST_MAT_QUERY = """{ assetOrError(assetKey: {path: ["%s"]}) { ... on Asset {
  assetMaterializations(limit: 1) { timestamp runId partition } } } }"""
TICKS_QUERY = """{ sensorOrError(sensorSelector: {repositoryLocationName: "%s", repositoryName: "%s",
  sensorName: "%s"}) { ... on Sensor { sensorState { status ticks(limit: %d) {
  timestamp status skipReason runIds error { message } } } } ... on PythonError { message } } }"""
EVALS_QUERY = """{ assetConditionEvaluationRecordsOrError(assetKey: {path: ["%s"]}, limit: %d) {
  ... on AssetConditionEvaluationRecords { records { evaluationId timestamp numRequested runIds
  evaluationNodes { userLabel expandedLabel numTrue operatorType } } } } }"""


class DagsterDev:
    """`dagster dev -w workspace.yaml` in its own process group, output to ``log``; ``stop`` kills the group."""

    def __init__(self, home: Path, log: Path):
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}
        self.port = free_port()
        self.log = log
        self.repo_name = "__repository__"
        env = {**os.environ, "DAGSTER_HOME": str(home), "MM_MODEL_PROFILE": "offline", "HF_HUB_OFFLINE": "1"}
        dagster = Path(sys.executable).with_name("dagster")
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def query(self, q: str) -> dict:
        return graphql(self.port, q)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:  # run workers and code servers share the group; make sure none outlives the test
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)
        self._out.close()

    def runs(self, job: str | None = None) -> list[dict]:
        data = self.query(RUNS_QUERY % job if job else ALL_RUNS_QUERY)["runsOrError"]
        return data.get("results", [])

    def latest_materialization(self, asset: str) -> float:
        mats = (self.query(LATEST_MAT_QUERY % asset)["assetOrError"] or {}).get("assetMaterializations") or []
        return float(mats[0]["timestamp"]) / 1000.0 if mats else 0.0

    def diagnostics(self) -> str:
        """Runs, the sensors' latest ticks, the global assets' latest automation evaluations, the log tail."""
        out: list[str] = []

        def section(title: str, fn: Callable[[], object]) -> None:
            try:
                value = fn()
            except Exception as exc:  # diagnostics must never hide the original failure
                value = f"<unavailable: {exc!r}>"
            out.append(f"--- {title}\n{json.dumps(value, indent=1, default=str)[:6000]}")

        section("runs", lambda: [
            {"job": r["pipelineName"], "status": r["status"], "runId": r["runId"][:8],
             "assets": [("/".join(a["path"])) for a in (r.get("assetSelection") or [])],
             "partition": next((t["value"] for t in r["tags"] if t["key"] == "dagster/partition"), None)}
            for r in self.runs()])
        for sensor in ("landing_sensor", "global_layer_sensor", "global_automation_sensor"):
            section(f"{sensor} ticks", lambda s=sensor: self.query(
                TICKS_QUERY % (LOCATION, self.repo_name, s, 8))["sensorOrError"])
        for asset in ("recluster_assignments", "cluster_summary", "qdrant_cluster_payloads"):
            section(f"{asset} automation evaluations", lambda a=asset: [
                {"id": r["evaluationId"], "requested": r["numRequested"], "runIds": r["runIds"],
                 "nodes": [(n["userLabel"] or " ".join(n["expandedLabel"]))[:80] + f" -> {n['numTrue']}"
                           for n in r["evaluationNodes"]]}
                for r in (self.query(EVALS_QUERY % (a, 3))["assetConditionEvaluationRecordsOrError"]
                          .get("records") or [])])
        self._out.flush()
        tail = self.log.read_bytes()[-8000:].decode("utf-8", "replace")
        out.append(f"--- dagster dev output (tail of {self.log})\n{tail}")
        return "\n".join(out)

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``predicate`` every POLL_S until true (records the seconds taken); fails with diagnostics."""
        start = time.monotonic()
        deadline = min(start + timeout_s, self.started + TOTAL_BUDGET_S)
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"dagster dev exited ({self.proc.returncode}) while waiting for {what}\n"
                            + self.diagnostics())
            try:
                if predicate():
                    self.timings[what] = round(time.monotonic() - start, 1)
                    return
            except Exception as exc:  # files being replaced, webserver still starting, ...
                last_exc = exc
            time.sleep(POLL_S)
        pytest.fail(f"{what}: not within {time.monotonic() - start:.0f} s (last error: {last_exc!r}); "
                    f"earlier steps took {self.timings} s\n" + self.diagnostics())


def ledger_ids(lake: Lake) -> set[str]:
    return set(lake.read_table("batches")["batch_id"].to_list())


def valid_current_ids(lake: Lake) -> set[str]:
    """Current records that passed validation (``aligned_records``): the ones clustered and indexed.

    ``Lake.current_records()`` also lists a raw line rejected later (e.g. its picture file is missing),
    which never reaches the vectors, the clusters or Qdrant."""
    return set(lake.read_current("aligned_records")["record_id"].to_list())


def test_dagster_dev_sensor_ingests_batches_and_automation_builds_global_layer(paths, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    lake = Lake(paths.lake_dir)
    dev = DagsterDev(home, tmp_path / "dagster_dev.log")
    try:
        def loaded() -> bool:
            nodes = dev.query(REPOS_QUERY)["repositoriesOrError"].get("nodes") or []
            mine = [n for n in nodes if n["location"]["name"] == LOCATION]
            if mine:
                dev.repo_name = mine[0]["name"]
            return bool(mine)

        dev.wait_until("code location loaded", loaded, LOAD_TIMEOUT_S)

        make_demo_batch(paths.landing_dir / "drop-1", n_records=40, seed=11, n_broken=2, id_prefix="d1")
        dev.wait_until("drop-1 in the batches ledger", lambda: "drop-1" in ledger_ids(lake), BATCH_TIMEOUT_S)

        make_demo_batch(paths.landing_dir / "drop-2", n_records=30, seed=12, n_broken=0, id_prefix="d2")
        dev.wait_until("drop-2 in the batches ledger", lambda: "drop-2" in ledger_ids(lake), BATCH_TIMEOUT_S)

        def global_layer_settled() -> bool:
            valid = valid_current_ids(lake)
            clustered = set(lake.current_clusters()["record_id"].to_list())
            summary = lake.read_table("cluster_summary")
            if not (valid and clustered == valid and summary.height > 0 and int(summary["size"].sum()) == len(valid)):
                return False
            if any(r["status"] in IN_FLIGHT for r in dev.runs()):
                return False
            # the Qdrant payloads were set after the last change of any cluster assignment
            payloads = dev.latest_materialization("qdrant_cluster_payloads")
            return payloads > 0 and payloads >= max(dev.latest_materialization(a) for a in
                                                    ("recluster_assignments", "cluster_assignments", "vector_points"))

        dev.wait_until("global layer follows by automation", global_layer_settled, GLOBAL_TIMEOUT_S)

        batch_runs = dev.runs("batch_ingest_job")
        all_runs = dev.runs()
    finally:
        dev.stop()

    # the sensor ran each batch exactly once, and every run (batch or automation) succeeded
    partitions = sorted(next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition") for r in batch_runs)
    assert partitions == ["drop-1", "drop-2"], batch_runs
    assert {r["status"] for r in batch_runs} == {"SUCCESS"}, batch_runs
    failed = [(r["pipelineName"], r["status"]) for r in all_runs if r["status"] != "SUCCESS"]
    assert not failed, failed

    # the global layer followed in at most one run per batch run, none of which started mid-batch
    global_runs = [r for r in all_runs if r["pipelineName"] != "batch_ingest_job"]
    assert 1 <= len(global_runs) <= len(batch_runs), [(r["pipelineName"], r["tags"]) for r in global_runs]
    for g in global_runs:
        for b in batch_runs:
            assert not (b["startTime"] <= g["startTime"] <= b["endTime"]), (g["pipelineName"], g["startTime"], b)

    # lake: both batches; every valid current record clustered; the other current records were rejected
    ledger = lake.read_table("batches")
    assert sorted(ledger["batch_id"].to_list()) == ["drop-1", "drop-2"]
    valid = valid_current_ids(lake)
    assert len(valid) == int(ledger["points"].sum()) == 70
    current = lake.current_records()
    assert set(current["batch_id"].unique().to_list()) == {"drop-1", "drop-2"}
    rejected = set(lake.read_table("rejected_records")["record_id"].drop_nulls().to_list())
    assert set(current["record_id"].to_list()) - valid <= rejected
    cluster_of = dict(lake.current_clusters().select("record_id", "cluster_id").iter_rows())
    assert set(cluster_of) == valid

    # Qdrant (opened only now that dagster dev is gone): one point per valid record, current cluster ids
    with QdrantStore("mm_records", path=paths.qdrant_path, open_timeout_s=30) as store:
        assert store.count() == len(valid)
        payload_clusters = {p.payload["record_id"]: p.payload.get("cluster_id") for p in store.scroll_all()}
    assert payload_clusters == cluster_of

    # DuckDB warehouse views show both batches
    con = (duckdb.connect(str(paths.duckdb_path), read_only=True) if paths.duckdb_path.exists()
           else connect_readonly(lake, paths.duckdb_path))
    try:
        per_batch = dict(con.execute(
            "SELECT batch_id, count(*) FROM aligned_records GROUP BY batch_id").fetchall())
    finally:
        con.close()
    assert per_batch == dict(ledger.select("batch_id", "aligned_records").iter_rows())
    print(f"timings (s): {dev.timings}, total {time.monotonic() - dev.started:.0f}")
