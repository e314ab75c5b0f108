"""Through the real CLI (offline profile), with a data dir whose path holds quotes and spaces: the SQL
models run, `mm-platform sql` refuses the COPY attack, the attack made with `--unsafe` is detected and
repaired by the next ingest (tables equal the original, embeddings from the cache), and a disk that fills
up mid-ingest gives a clear error, leaves no temp file, and the next ingest completes."""

import json
import subprocess
import sys

import pytest

from mm_platform.demo import make_demo_batch
from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.settings import Paths
from mm_platform.lib.storage.sqlquote import sql_literal
from mm_platform_tests.e2e.conftest import cli_json, run_cli

pytestmark = pytest.mark.e2e

ROWS = "SELECT * EXCLUDE (stream_features_json) FROM aligned_records ORDER BY record_id"

#: `mm-platform ingest` with lake writes of the fused vectors failing as on a full disk.
DISK_FULL = """
import errno, sys
from mm_platform.lib.storage import lake
real = lake._commit_delta
def full(uri, *args):
    if "fused_vectors" in str(uri):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(uri, *args)
lake._commit_delta = full
from mm_platform.cli import main
sys.exit(main(["ingest"]))
"""


def tmp_files(paths: Paths) -> list:
    return [p for p in paths.lake_dir.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture()
def odd_paths(cli_paths, monkeypatch, tmp_path):
    data = tmp_path / "it's a \"data\" dir; --" / "data"
    monkeypatch.setenv("MM_DATA_DIR", str(data))
    paths = Paths.from_env()
    paths.landing_dir.mkdir(parents=True)
    return paths


def test_quoted_data_dir_copy_attack_repaired_and_disk_full(odd_paths):
    paths = odd_paths
    make_demo_batch(paths.landing_dir / "a", n_records=24, seed=1, n_broken=2, id_prefix="a")
    run_cli("ingest")
    marts = cli_json("sql", "SELECT count(*) AS n FROM cluster_summary")["rows"][0]["n"]
    assert marts > 0  # the global layer with the SQL models ran under a data dir holding quotes
    original = cli_json("sql", ROWS)["rows"]
    assert len(original) == 24

    part = Lake(paths.lake_dir).partition_path("aligned_records", "a")  # the partition's Delta data file
    attack = f"COPY (SELECT * FROM aligned_records LIMIT 0) TO {sql_literal(part)} (FORMAT PARQUET)"
    refused = run_cli("sql", attack, check=False)
    assert refused.returncode == 2 and "refused" in refused.stderr
    run_cli("sql", attack, "--unsafe")  # a local user with full DuckDB can still do it ...
    assert cli_json("sql", "SELECT count(*) AS n FROM aligned_records")["rows"] == [{"n": 0}]

    out = run_cli("ingest")  # ... and the next ingest notices and rewrites the batch
    assert "nothing new" not in out.stdout
    assert "changed since it was written" in out.stderr and "re-ingested" in out.stderr
    assert cli_json("sql", ROWS)["rows"] == original
    hits = cli_json("sql", "SELECT bool_and(cache_hit) AS all_cached FROM text_embeddings")["rows"]
    assert hits == [{"all_cached": True}]  # from the cached vectors
    assert len(list((paths.lake_dir / "_quarantine").rglob("*.parquet.*"))) == 1
    assert run_cli("ingest").stdout.strip() == "nothing new to ingest"

    # the disk fills up while a new batch is written: a clear error, exit 1, nothing half-written
    make_demo_batch(paths.landing_dir / "b", n_records=12, seed=2, n_broken=0, id_prefix="b")
    proc = subprocess.run([sys.executable, "-c", DISK_FULL], check=False, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "disk full writing" in proc.stdout and "fused_vectors" in proc.stdout
    assert tmp_files(paths) == []
    assert "b" not in Lake(paths.lake_dir).partitions("fused_vectors")  # nothing committed
    status = cli_json("status")
    assert "b" in status["pending_batches"]
    run_cli("ingest")  # space is back
    counts = cli_json("sql", "SELECT count(*) AS n FROM fused_vectors")["rows"]
    assert counts == [{"n": 36}]
    assert json.loads(run_cli("sql", "SELECT count(*) AS n FROM aligned_records", "--json").stdout)["rows"] == [{"n": 36}]
