"""A failed re-cluster is retried by the next ingest (a real failure: Qdrant's folder replaced by a file), and
a hostile batch goes through the Dagster batch assets without a crash or a byte from outside the batch."""

import json
import shutil

import dagster as dg
import polars as pl

from mm_platform import definitions as definitions_module
from mm_platform import orchestrate
from mm_platform.demo import make_demo_batch
from mm_platform.lib.storage.lake import ALL_TABLES, Lake
from mm_platform.lib.landing.ledger import nothing_to_do, recluster_owed
from mm_platform_tests.conftest import make_resources
from mm_platform_tests.defs.test_pipeline import run_batch, run_global


def _relabel(batch_dir, labels):
    """Rewrite the manifest's labels in order (None removes the label)."""
    path = batch_dir / "records.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row, label in zip(rows, labels, strict=True):
        row.pop("label", None)
        if label is not None:
            row["label"] = label
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _metadata(instance, key):
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_failed_recluster_is_rerun_by_the_next_ingest(paths, tiny_clip, tmp_path, monkeypatch):
    """A re-cluster that fails (embedded Qdrant's folder replaced by a file) is recorded in the lake; the next
    ingest, with nothing new to ingest, re-runs the re-cluster instead of doing nothing."""
    for key, value in {
        "DAGSTER_HOME": str(tmp_path / "dagster_home"), "MM_MODEL_PROFILE": "clip", "MM_CLIP_ARCH": tiny_clip.arch,
        "MM_CLIP_PRETRAINED": str(tiny_clip.checkpoint_path), "MM_CLIP_CONFIG": str(tiny_clip.config_path),
        "MM_CLAP_MODEL": str(tiny_clip.config_path.parent / "clap"), "MM_DEVICE": "cpu", "MM_NUM_WORKERS": "0",
        "MM_CLUSTER_K": "2",
    }.items():
        monkeypatch.setenv(key, value)
    # the Definitions read the environment when built: build them under this test's environment
    monkeypatch.setattr(definitions_module, "defs", definitions_module.build_definitions())
    make_demo_batch(paths.landing_dir / "b1", n_records=12, seed=7, n_broken=0, id_prefix="b1")
    quiet = []
    first = orchestrate.ingest(paths, echo=quiet.append)
    assert first.ok and first.reclustered
    lake = Lake(paths.lake_dir)
    assert nothing_to_do(paths)

    moved = tmp_path / "qdrant_moved"
    shutil.move(paths.qdrant_path, moved)
    paths.qdrant_path.write_text("not a qdrant folder")
    failed = orchestrate.ingest(paths, recluster=True, echo=quiet.append)
    assert not failed.ok and not failed.reclustered and failed.global_error
    assert "re-cluster failed" in recluster_owed(lake)
    assert not nothing_to_do(paths)

    paths.qdrant_path.unlink()
    shutil.move(moved, paths.qdrant_path)
    retried = orchestrate.ingest(paths, echo=quiet.append)  # no --recluster, no new batch
    assert retried.ok and retried.reclustered, quiet
    assert recluster_owed(lake) is None and nothing_to_do(paths)


def test_hostile_batch_end_to_end_then_tiny_text_only_corpus(paths, instance, tiny_clip, tmp_path):
    """Hostile media and lines through the Dagster batch assets (no crash, every line accounted for, no byte
    from outside the batch), then the global layer on the two text-only records that survive."""
    import os

    from mm_platform_tests.lib.landing.test_fuzz_manifest import SECRET, _make_media

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(SECRET.encode())
    (outside / "secret.wav").write_bytes(SECRET.encode())
    batch = paths.landing_dir / "hx"
    batch.mkdir()
    _make_media(batch, outside)
    lines = [
        json.dumps({"record_id": "t1", "text": "a mug \u202e\u200b for tea", "image": "secret_link.png",
                    "audio": "fifo.wav", "label": "mug"}),
        json.dumps({"record_id": "t2", "text": "a teapot", "image": "zero.png", "audio": "urandom.wav"}),
        "   ",
        json.dumps({"record_id": "x1", "image": "liar.png", "audio": "liar.wav"}),
        json.dumps({"record_id": "x2", "image": "adir.png", "audio": "null.wav", "fields": {"a": float("nan")}}),
        '{"record_id": "x3", "record_id": "x4", "text": "dup"}',
        "[" * 5000 + "]" * 5000,
        json.dumps({"record_id": "x5", "op": "delete"}),
    ]
    (batch / "records.jsonl").write_text("\n".join(lines) + "\n")
    resources = make_resources(paths, tiny_clip, cluster_k=2, stream_tolerance="10m")
    result = run_batch("hx", instance, resources)
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["every_line_accounted"].passed
    lake = Lake(paths.lake_dir)
    assert set(lake.read_partition("aligned_records", "hx")["record_id"]) == {"t1", "t2"}
    rejected = lake.read_partition("rejected_records", "hx")
    assert {"image", "audio"} <= set(rejected.filter(pl.col("record_id") == "t1")["modality"])
    for table in os.listdir(paths.lake_dir):
        if (paths.lake_dir / table).is_dir() and not table.startswith("_"):
            frame = lake.read_table(table) if table in ALL_TABLES else None
            if frame is not None:
                assert SECRET not in str(frame.rows()), table
    # global layer on a two-record, text-only, one-label corpus: nothing fails, skips say why
    assert run_global(instance, resources).success
    assert _metadata(instance, "classifier_metrics")["skipped"].startswith("1 labelled records in 1 classes")


