"""End to end through the real CLI, on the offline profile with real pretrained encoders and all four
modalities (text, image, audio, tabular fields + a time-aligned stream): landing batch → warehouse contract
→ Qdrant points → clusters, idempotent re-ingest, search, sql."""

import hashlib
import json
import subprocess
import sys

import duckdb
import pytest

from mm_platform.lib.storage.qdrant import QdrantStore
from mm_platform_tests.e2e.conftest import cli_json, run_cli

pytestmark = pytest.mark.e2e

CONTRACT = {
    "raw_records": {"record_id", "batch_id", "line_number", "timestamp", "label"},
    "raw_text": {"record_id", "batch_id", "text", "text_sha256"},
    "raw_images": {"record_id", "batch_id", "image_path", "sha256", "width", "height", "format"},
    "rejected_records": {"batch_id", "line_number", "record_id", "modality", "reason", "detail"},
    "aligned_records": {"record_id", "batch_id", "timestamp", "label", "has_text", "has_image", "has_audio",
                        "has_tabular"},
    "raw_audio": {"record_id", "batch_id", "audio_path", "sha256", "format", "sample_rate", "channels",
                  "duration_s"},
    "raw_tabular": {"record_id", "batch_id", "fields_sha256", "encoder_version", "price", "material"},
    "stream_features": {"record_id", "batch_id", "streams_matched", "telemetry__temperature_c",
                        "telemetry__lag_s"},
    "alignment_report": {"batch_id", "stream", "matched", "unmatched", "coverage", "lag_median_s",
                         "tolerance_s"},
    "text_embeddings": {"record_id", "batch_id", "model", "dim", "embedding"},
    "image_embeddings": {"record_id", "batch_id", "model", "dim", "embedding"},
    "audio_embeddings": {"record_id", "batch_id", "model", "dim", "embedding"},
    "tabular_embeddings": {"record_id", "batch_id", "model", "model_version", "dim", "embedding"},
    "fused_vectors": {"record_id", "batch_id", "fusion", "embedding"},
    "current_clusters": {"record_id", "cluster_id"},
    "cluster_summary": {"cluster_id", "size", "representative_record_ids", "top_terms"},
}


def snapshot(paths) -> dict[str, str]:
    """A content hash of every table in the warehouse (read-only, as a user would)."""
    con = duckdb.connect(str(paths.duckdb_path), read_only=True)
    try:
        out = {}
        for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall():
            rows = con.execute(f'SELECT * FROM "{name}"').fetchall()
            out[name] = hashlib.sha256(repr(sorted(map(repr, rows))).encode()).hexdigest()
        return out
    finally:
        con.close()


def qdrant_points(paths) -> dict:
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        return {str(p.id): (p.payload, {k: list(v) for k, v in p.vector.items()})
                for p in store.scroll_all(with_vectors=True)}


def _full_path_search(paths, text: str, modality: str, k: int) -> list:
    """The search through the loaded torch encoders (what the CLI does when the cold path cannot answer)."""
    from mm_platform.lib.device import DeviceConfig
    from mm_platform.lib.encoders import EncoderSettings, load_encoders
    from mm_platform.lib.search import search

    encoders = load_encoders(EncoderSettings(profile="offline"), DeviceConfig(device="cpu"))
    with QdrantStore("mm_records", path=paths.qdrant_path) as store:
        return search(store, encoders, text=text, modality=modality, k=k)


def test_ingest_end_to_end(cli_paths):
    paths = cli_paths
    run_cli("make-demo-data", "--records", "150", "--seed", "1", "--out", str(paths.landing_dir / "batch-a"))
    # a second batch that is all bad input: it must be quarantined, not crash the run
    bad = paths.landing_dir / "batch-bad"
    bad.mkdir()
    (bad / "records.jsonl").write_bytes(
        b'{"record_id": "x1", "image": "nope.png"}\n{not json\n{"record_id": "x2", "text": "\xff\xfe"}\n'
        b'{"record_id": "x3"}\n'
    )
    # a partial batch (no manifest yet) is not picked up
    (paths.landing_dir / "batch-partial" / "images").mkdir(parents=True)

    proc = run_cli("ingest")
    assert "batch batch-a" in proc.stdout and "batch batch-bad" in proc.stdout
    assert "batch-partial" not in proc.stdout

    con = duckdb.connect(str(paths.duckdb_path), read_only=True)
    try:
        # the warehouse contract: every table present with its columns
        for table, cols in CONTRACT.items():
            have = {r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()}
            assert cols <= have, f"{table} lacks {cols - have}"
        # accounting: every non-blank manifest line is aligned or rejected
        for batch in ("batch-a", "batch-bad"):
            lines = [i for i, ln in enumerate((paths.landing_dir / batch / "records.jsonl").read_bytes().splitlines(), 1)
                     if ln.strip()]
            seen = {r[0] for r in con.execute(
                "SELECT line_number FROM aligned_records WHERE batch_id = ? UNION "
                "SELECT line_number FROM rejected_records WHERE batch_id = ?", [batch, batch]).fetchall()}
            assert set(lines) <= seen, f"{batch}: lines {set(lines) - seen} unaccounted"
        reasons = {r[0] for r in con.execute(
            "SELECT reason FROM rejected_records WHERE batch_id = 'batch-bad'").fetchall()}
        assert {"missing_file", "malformed_json", "no_modality"} <= reasons
        assert reasons & {"invalid_encoding", "invalid_text"}
        assert con.execute("SELECT count(*) FROM aligned_records WHERE batch_id = 'batch-bad'").fetchone()[0] == 0
        n_aligned = con.execute("SELECT count(*) FROM aligned_records").fetchone()[0]
        assert n_aligned >= 140
        models = {r[0] for r in con.execute(
            "SELECT DISTINCT model FROM text_embeddings UNION SELECT DISTINCT model FROM image_embeddings "
            "UNION SELECT DISTINCT model FROM audio_embeddings UNION SELECT DISTINCT model FROM tabular_embeddings"
        ).fetchall()}
        assert models == {"sentence-transformers/all-MiniLM-L6-v2", "timm/tf_efficientnet_lite0",
                          "mm_platform/logmel-mfcc-stats", "mm_platform/tabular-standardise-onehot"}
        # all four modalities on most records; the stream aligned within its tolerance, misses counted
        has = con.execute("SELECT avg(has_text::INT), avg(has_image::INT), avg(has_audio::INT), "
                          "avg(has_tabular::INT) FROM aligned_records").fetchone()
        assert min(has) > 0.85, has
        formats = {r[0] for r in con.execute("SELECT DISTINCT format FROM raw_audio").fetchall()}
        assert {"wav", "flac", "ogg", "mp3"} <= {f.lower() for f in formats}, formats
        rep = con.execute("SELECT matched, unmatched, coverage, records_with_timestamp FROM alignment_report "
                          "WHERE batch_id = 'batch-a'").fetchone()
        assert rep[0] + rep[1] == rep[3] and rep[1] > 0 and 0.8 < rep[2] < 1.0, rep
        reasons_a = {r[0] for r in con.execute(
            "SELECT reason FROM rejected_records WHERE batch_id = 'batch-a'").fetchall()}
        assert {"unreadable_audio", "silent_audio", "invalid_field_value"} <= reasons_a
        # cluster quality: the fused vectors beat each single modality against the labels
        nmi = dict(con.execute("SELECT space, nmi FROM cluster_metrics").fetchall())
        assert {"fused", "text", "image", "audio", "tabular", "fused:shared_mean"} <= set(nmi)
        assert nmi["fused"] > max(nmi[m] for m in ("text", "image", "audio", "tabular")), nmi
        assert nmi["fused"] > 0.7, nmi
        assert nmi["fused:early"] > nmi["fused:text+image"], nmi
        # issue 5 outputs of the first re-cluster job: shared space, map, classifiers
        f1 = dict(con.execute("SELECT strategy, macro_f1 FROM classifier_metrics").fetchall())
        assert max(f1["early"], f1["late"]) > max(f1[m] for m in ("text", "image", "audio", "tabular")), f1
        assert con.execute("SELECT count(DISTINCT modality) FROM shared_embeddings").fetchone()[0] == 5
        assert con.execute("SELECT count(*) FROM embedding_map").fetchone()[0] == n_aligned
        summary = con.execute("SELECT count(*), sum(size) FROM cluster_summary").fetchone()
        assert summary[0] >= 3 and summary[1] == n_aligned
    finally:
        con.close()

    # Qdrant: one point per aligned record, named vectors, cluster ids in the payload
    points = qdrant_points(paths)
    assert len(points) == n_aligned
    payloads = [p for p, _ in points.values()]
    assert all(p["cluster_id"] is not None and p["batch_id"] == "batch-a" for p in payloads)
    assert all("fused" in v for _, v in points.values())
    assert sum("audio" in v for _, v in points.values()) > 0.85 * n_aligned
    assert sum("tabular" in v for _, v in points.values()) > 0.85 * n_aligned

    # a second ingest with nothing new changes nothing
    before, before_points = snapshot(paths), points
    proc = run_cli("ingest")
    assert "nothing new to ingest" in proc.stdout
    assert snapshot(paths) == before
    assert qdrant_points(paths) == before_points

    # search: JSON shape, same-modality and fused; cross-modal refused clearly in the offline profile
    res = cli_json("search", "--text", "waterproof shoes for muddy trails", "-k", "5", "--modality", "fused")
    assert len(res["results"]) == 5
    assert set(res["results"][0]) == {"record_id", "score", "modality", "payload"}
    assert res["results"][0]["modality"] == "fused"
    # that answer came from the cold path (numpy MiniLM: no torch, no Dagster) and equals the full path's
    code = ("import sys, json; from mm_platform.cli import main; rc = main(['search', '--text', 'waterproof "
            "shoes for muddy trails', '-k', '5', '--modality', 'fused', '--json', '--no-service']); "
            "print(json.dumps(sorted(m for m in ('torch', 'dagster', 'transformers') if m in sys.modules)), "
            "file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    assert [h["record_id"] for h in json.loads(proc.stdout)["results"]] == [h["record_id"] for h in res["results"]]
    full = _full_path_search(paths, "waterproof shoes for muddy trails", "fused", 5)
    assert [h.record_id for h in full] == [h["record_id"] for h in res["results"]]
    assert [round(h.score, 4) for h in full] == [round(h["score"], 4) for h in res["results"]]
    image = next(p["image_uri"] for p in payloads if p.get("image_uri"))
    res = cli_json("search", "--image", image, "--modality", "image", "-k", "3")
    assert res["results"][0]["payload"]["image_uri"] == image
    # cross-modal in the offline profile goes through the shared space of the alignment heads
    res = cli_json("search", "--text", "a ceramic mug for my morning coffee", "--modality", "image", "-k", "10")
    assert [h["modality"] for h in res["results"]] == ["shared:image"] * 10
    labels = [h["payload"]["label"] for h in res["results"]]
    assert labels.count("mug") >= 3, labels
    proc = run_cli("search", "--text", "mug", "--modality", "audio", env={"MM_LAKE_DIR": str(paths.data_dir / "x")},
                   check=False)
    assert proc.returncode == 2 and "shared space" in proc.stderr
    clip = next(p["audio_uri"] for p in payloads if p.get("audio_uri"))
    res = cli_json("search", "--audio", clip, "-k", "3")
    assert res["results"][0]["payload"]["audio_uri"] == clip and res["results"][0]["modality"] == "audio"
    res = cli_json("search", "--fields", '{"price": 30, "material": "ceramic"}', "-k", "3")
    assert len(res["results"]) == 3 and res["results"][0]["modality"] == "tabular"

    # sql and status
    out = cli_json("sql", "SELECT count(*) AS n FROM fused_vectors")
    assert out["rows"] == [{"n": n_aligned}]
    proc = run_cli("sql", "SELECT * FROM no_such_table", check=False)
    assert proc.returncode == 2 and "SQL error" in proc.stderr
    status = cli_json("status")
    assert status["pending_batches"] == [] and set(status["ingested_batches"]) == {"batch-a", "batch-bad"}
    # status answers without torch, transformers or Dagster (it compares the model settings as requested)
    code = ("import sys, json; from mm_platform.cli import main; rc = main(['status', '--json']); "
            "print(json.dumps(sorted(m for m in ('torch', 'dagster', 'transformers', 'qdrant_client') "
            "if m in sys.modules)), file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    assert json.loads(proc.stdout)["pending_batches"] == []
    assert status["qdrant"]["points"] == n_aligned


def test_ingest_exits_non_zero_on_failure(cli_paths):
    paths = cli_paths
    run_cli("make-demo-data", "--records", "12", "--broken", "0", "--out", str(paths.landing_dir / "tiny"))
    proc = run_cli("ingest", env={"MM_CLUSTER_ALGORITHM": "no-such-algorithm"}, check=False)
    assert proc.returncode == 1
    assert "unknown cluster algorithm" in proc.stdout + proc.stderr
    # the batch itself landed; a fixed config finishes the job on the next ingest
    proc = run_cli("ingest")
    assert "refreshing" in proc.stdout


def test_sql_is_restricted_to_the_lake_unless_unsafe(cli_paths, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("user,password\nroot,hunter2\n")
    for query in (f"SELECT * FROM read_csv('{secret}')", "SELECT * FROM read_text('/etc/passwd')",
                  "COPY (SELECT 1) TO 'x.csv'", "ATTACH 'o.duckdb'", "SET enable_external_access = true"):
        proc = run_cli("sql", query, check=False)
        assert proc.returncode == 2, (query, proc.stdout, proc.stderr)
        assert "mm-platform: refused:" in proc.stderr and "Traceback" not in proc.stderr
        assert "hunter2" not in proc.stdout + proc.stderr
    assert cli_json("sql", "SELECT count(*) AS n FROM aligned_records")["rows"] == [{"n": 0}]
    unsafe = cli_json("sql", f"SELECT password FROM read_csv('{secret}')", "--unsafe")
    assert unsafe["rows"] == [{"password": "hunter2"}]
