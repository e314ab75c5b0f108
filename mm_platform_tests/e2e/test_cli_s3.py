"""The lake on an S3-compatible object store (a real one on localhost: moto's server mode), through the
real CLI (offline profile): ingest, re-ingest, an update and a delete, search, sql, and sql --as-of. No lake
table is written to the local disk; the data dir keeps only bookkeeping."""

from __future__ import annotations

import json
import shutil

import pytest

from mm_platform.demo import make_demo_batch
from mm_platform_tests.e2e.conftest import cli_json, run_cli

pytestmark = pytest.mark.e2e

BUCKET = "mm-lake"


@pytest.fixture()
def s3_lake(cli_paths, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "MM_S3_ENDPOINT": endpoint, "MM_LAKE_URI": f"s3://{BUCKET}/lake"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET)
    try:
        yield cli_paths, s3
    finally:
        server.stop()


def keys(s3, prefix: str) -> list[str]:
    out, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def test_ingest_reingest_delete_search_sql_on_s3(s3_lake):
    paths, s3 = s3_lake
    land = paths.landing_dir
    make_demo_batch(land / "a", n_records=16, seed=4, n_broken=0, id_prefix="a")
    run_cli("ingest")
    n = cli_json("sql", "SELECT count(*) AS n FROM current_records")["rows"][0]["n"]
    assert n == 16
    assert any(k.startswith("lake/aligned_records/_delta_log/") for k in keys(s3, "lake/aligned_records/"))
    assert not list(paths.lake_dir.rglob("_delta_log"))  # no lake table on the local disk
    assert run_cli("ingest").stdout.strip() == "nothing new to ingest"

    a_lines = [json.loads(x) for x in (land / "a" / "records.jsonl").read_text().splitlines()]
    upd, dele = [r for r in a_lines if "text" in r][:2]
    (land / "c").mkdir()
    for r in (upd,):
        for key in ("image", "audio"):
            if key in r:
                (land / "c" / r[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(land / "a" / r[key], land / "c" / r[key])
    (land / "c" / "records.jsonl").write_text(
        json.dumps({**upd, "text": "Rewritten: a sturdy kettle that whistles."}) + "\n"
        + json.dumps({"record_id": dele["record_id"], "op": "delete"}) + "\n")
    run_cli("ingest")
    rows = cli_json("sql", "SELECT record_id, batch_id FROM aligned_records ORDER BY record_id")["rows"]
    got = {r["record_id"]: r["batch_id"] for r in rows}
    assert len(got) == 15 and got[upd["record_id"]] == "c" and dele["record_id"] not in got
    deleted = cli_json("sql", "SELECT record_id, in_effect FROM record_deletions")["rows"]
    assert deleted == [{"record_id": dele["record_id"], "in_effect": True}]

    hits = cli_json("search", "--text", "kettle that whistles", "-k", "3", "--no-service")
    assert hits["results"] and all(h["record_id"] != dele["record_id"] for h in hits["results"])

    # time travel on S3: version 1 of every table is the first ingest (version 0: the empty tables)
    old = cli_json("sql", "SELECT count(*) AS n FROM aligned_records_history", "--as-of", "1")["rows"]
    assert old == [{"n": 16}]
