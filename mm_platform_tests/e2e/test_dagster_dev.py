"""`dagster dev -w workspace.yaml` loads the code location with every asset, check, sensor and schedule."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mm_platform_tests.e2e.conftest import free_port, graphql

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
QUERY = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
  name location { name }
  assetNodes { assetKey { path } groupName isPartitioned }
  sensors { name } schedules { name }
  jobs { name }
} } } }"""


def test_dagster_dev_loads_code_location(paths, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.Popen(
        [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        repos = None
        while time.monotonic() < deadline:
            try:
                data = graphql(port, QUERY)["repositoriesOrError"]
                if data.get("nodes"):
                    repos = data["nodes"]
                    break
            except (OSError, KeyError, TypeError, ValueError, RuntimeError):
                pass
            assert proc.poll() is None, "dagster dev exited early"
            time.sleep(2)
        assert repos, "code location did not load within 180 s"
        repo = repos[0]
        assert repo["location"]["name"] == "mm_platform"
        assets = {"/".join(a["assetKey"]["path"]): a for a in repo["assetNodes"]}
        for name in ("raw_records", "aligned_records", "text_embeddings", "fused_vectors", "vector_points",
                     "recluster_assignments", "cluster_summary", "cluster_profiles", "rejected_records"):
            assert name in assets
        assert assets["raw_records"]["isPartitioned"] and not assets["recluster_assignments"]["isPartitioned"]
        assert {"landing_sensor", "global_automation_sensor"} <= {s["name"] for s in repo["sensors"]}
        assert {s["name"] for s in repo["schedules"]} == {"nightly_recluster", "weekly_lake_housekeeping"}
        assert {"batch_ingest_job", "recluster_job", "refresh_job"} <= {j["name"] for j in repo["jobs"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
