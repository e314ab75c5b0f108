"""Odd but valid data never fails a run: one-class labels, a single record, a single modality, empty
batches, only rejected lines, identical records, only deletes. Each asset skips what it cannot compute
and says why in its metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from mm_platform.demo import make_demo_batch
from mm_platform.lib.storage.lake import Lake
from mm_platform_tests.conftest import make_resources
from mm_platform_tests.defs.test_pipeline import run_batch, run_global


def _demo_lines(paths, name: str, n: int, seed: int = 5) -> tuple[Path, list[dict]]:
    """A demo batch folder (media on disk) and its good manifest lines, for reshaping."""
    batch_dir = paths.landing_dir / name
    make_demo_batch(batch_dir, n_records=n, seed=seed, n_broken=0, id_prefix=name)
    lines = [json.loads(line) for line in (batch_dir / "records.jsonl").read_text().splitlines() if line.strip()]
    shutil.rmtree(batch_dir / "streams", ignore_errors=True)
    return batch_dir, lines


def _write(batch_dir: Path, rows: list[dict | str]) -> None:
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    (batch_dir / "records.jsonl").write_text(text)


def _keep(row: dict, *modalities: str) -> dict:
    fixed = {"record_id", "timestamp", "label", "entity_id"}
    return {k: v for k, v in row.items() if k in fixed or k in modalities}


def _notes(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {m.asset_key.to_user_string(): {k: v.value for k, v in m.materialization.metadata.items()}
            for m in result.get_asset_materialization_events()}


CASES = {
    # every label one class but one: no classifier can be scored
    "one_class": lambda lines: [{**r, "label": "only"} for r in lines[:-1]] + [{**lines[-1], "label": "stray"}],
    "single_record": lambda lines: lines[:1],
    "two_identical": lambda lines: [lines[0], {**lines[0], "record_id": lines[0]["record_id"] + "-twin"}],
    "text_only_unlabelled": lambda lines: [{k: v for k, v in _keep(r, "text").items() if k != "label"} for r in lines],
    "image_only": lambda lines: [_keep(r, "image") for r in lines],
    "audio_only": lambda lines: [_keep(r, "audio") for r in lines],
    "fields_only": lambda lines: [_keep(r, "fields") for r in lines],
    "blank_lines_only": lambda lines: ["", "   "],
    "rejected_lines_only": lambda lines: ["{not json", json.dumps({"text": "no id"}), json.dumps({"record_id": "x"})],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_odd_corpus_runs_batch_and_global_layer(case, paths, instance, tiny_clip):
    batch_dir, lines = _demo_lines(paths, "odd", 24)
    _write(batch_dir, CASES[case](lines))
    resources = make_resources(paths, tiny_clip, cluster_k=3)
    batch = run_batch("odd", instance, resources)
    assert batch.success
    checks = {e.check_name: e for e in batch.get_asset_check_evaluations()}
    assert checks["every_line_accounted"].passed
    glob = run_global(instance, resources)
    assert glob.success, case
    notes = _notes(glob)
    lake = Lake(paths.lake_dir)
    n_aligned = lake.read_table("aligned_records").height
    if case in ("one_class", "text_only_unlabelled", "single_record", "two_identical"):
        # classifiers cannot be scored: the asset says why, with no rows
        assert lake.read_table("classifier_metrics").height == 0
        assert "skipped" in notes["classifier_metrics"], notes["classifier_metrics"]
    if n_aligned == 0:
        assert lake.read_table("recluster_assignments").height == 0


def test_only_deletes_after_a_batch(paths, instance, tiny_clip):
    batch_dir, lines = _demo_lines(paths, "first", 12)
    resources = make_resources(paths, tiny_clip, cluster_k=3)
    assert run_batch("first", instance, resources).success
    assert run_global(instance, resources).success
    deletes = paths.landing_dir / "deletes"
    deletes.mkdir()
    _write(deletes, [{"record_id": r["record_id"], "op": "delete"} for r in lines])
    assert run_batch("deletes", instance, resources).success
    assert run_global(instance, resources).success
    lake = Lake(paths.lake_dir)
    assert lake.current_records().height == 0
