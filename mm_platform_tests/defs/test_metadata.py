"""User text (record ids, labels, free text) is escaped before it enters markdown metadata (issue 9)."""

import json

import dagster as dg
import polars as pl
import pytest

from mm_platform.definitions import defs
from mm_platform.defs.metadata import md_escape, preview
from mm_platform_tests.conftest import make_resources

IMG = "<img src=x onerror=alert(1)>"
LINK = "[x](javascript:alert(1))"


def test_md_escape_neutralises_html_links_and_markdown():
    assert md_escape(IMG) == "&lt;img src=x onerror=alert\\(1\\)&gt;"
    out = md_escape(LINK)
    assert "](" not in out and "javascript:" not in out
    assert md_escape("JavaScript :alert(1)").count(":") == 0
    assert md_escape("a|b\nc*d_e`f&g") == "a\\|b c\\*d\\_e\\`f&amp;g"
    assert md_escape(None) == "" and md_escape("plain text 42") == "plain text 42"


def test_preview_escapes_every_cell_and_header():
    df = pl.DataFrame({"record_id": [IMG, LINK], "label": [LINK, IMG], "n": [1.23456789, None]})
    md = preview(df).value
    assert "<img" not in md and "](javascript:" not in md and "javascript:" not in md
    assert "1.235" in md and md.count("\n") == 3  # header, rule, two rows: newlines never leak from cells


def test_raw_records_metadata_has_no_raw_html_or_script_links(paths, instance):
    batch = paths.landing_dir / "b1"
    batch.mkdir(parents=True)
    rows = [{"record_id": IMG, "timestamp": "2024-03-01T08:00:00Z", "text": LINK, "label": LINK},
            {"record_id": LINK, "timestamp": "2024-03-01T08:01:00Z", "text": IMG, "label": IMG}]
    (batch / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    instance.add_dynamic_partitions("batches", ["b1"])
    result = dg.materialize([defs.get_assets_def("raw_records")], partition_key="b1", instance=instance,
                            resources=make_resources(paths))
    assert result.success
    md = result.asset_materializations_for_node("raw_records")[0].metadata["preview"].value
    assert "&lt;img" in md  # the record is shown, escaped
    assert "<img" not in md and "](javascript:" not in md


def test_every_asset_check_has_a_description():


    graph = defs.resolve_asset_graph()
    keys = list(graph.asset_check_keys)
    assert len(keys) >= 7  # every_line_accounted, 4 x vectors_valid, 2 cluster checks
    for key in keys:
        spec = graph.get_check_spec(key)
        assert spec.description and spec.description.strip(), f"{key.to_user_string()} has no description"


def test_check_results_name_their_batch(tmp_path):
    import numpy as np

    from mm_platform.defs.embeddings.checks import vectors_valid
    from mm_platform.defs.quarantine.checks import every_line_accounted

    batch = tmp_path / "b7"
    batch.mkdir()
    (batch / "records.jsonl").write_text('{"record_id": "a"}\n')
    lines = pl.DataFrame({"line_number": [1]})
    empty = pl.DataFrame({"line_number": []}, schema={"line_number": pl.Int64})
    r = every_line_accounted(batch, lines, empty, empty, "b7")
    assert r.passed and r.metadata["batch_id"].value == "b7" and "b7" in r.description
    v = np.ones((1, 4), dtype=np.float32) / 2
    df = pl.DataFrame({"record_id": ["a"], "embedding": [v[0].tolist()], "dim": [4]})
    r = vectors_valid(df, {"a"}, "text_embeddings", "b7")
    assert r.passed and r.metadata["batch_id"].value == "b7" and "b7" in r.description


def test_alignment_records_loss_curves_and_warns_on_a_large_gap():
    from dataclasses import replace

    from mm_platform.defs.shared_space.metadata import loss_curve_table, loss_gap_check
    from mm_platform.lib.vectors.shared_space import train_alignment
    from mm_platform_tests.lib.vectors.test_alignment import FAST, _planted

    blocks, present, labels = _planted(n=200)
    _, metrics = train_alignment(blocks, present, replace(FAST, epochs=4), labels=labels)
    assert len(metrics["train_loss_curve"]) == len(metrics["val_loss_curve"]) == 4
    assert metrics["train_loss_curve"][-1] == metrics["train_loss"]
    assert metrics["val_loss_curve"][-1] == pytest.approx(metrics["val_loss"], rel=1e-5)
    table = loss_curve_table(metrics).value
    assert [r.data["epoch"] for r in table.records] == [1, 2, 3, 4]
    assert [c.name for c in table.schema.columns] == ["epoch", "train_loss", "val_loss"]

    ok, warning = loss_gap_check({"train_loss": 1.0, "val_loss": 1.5})
    assert ok.passed and warning is None and ok.severity == dg.AssetCheckSeverity.WARN
    bad, warning = loss_gap_check({"train_loss": 1.17, "val_loss": 5.6})  # the demo's gap (issue 14)
    assert not bad.passed and bad.severity == dg.AssetCheckSeverity.WARN
    assert "4.79x" in warning and bad.metadata["val_train_ratio"].value == pytest.approx(4.786, abs=1e-3)
    none, warning = loss_gap_check({})
    assert none.passed and warning is None


def test_every_asset_has_owner_and_layer_and_modality_tags():


    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert "team:mm-platform" in node.owners, key
        assert node.tags.get("layer") and node.tags.get("modality"), key
    assert graph.get(dg.AssetKey("raw_images")).tags["modality"] == "image"
    assert graph.get(dg.AssetKey("audio_embeddings")).tags["modality"] == "audio"
    assert graph.get(dg.AssetKey("text_embeddings")).tags["layer"] == "embeddings"


def test_table_metadata_has_a_schema_rounds_floats_and_keeps_text_whole():
    from mm_platform.defs.metadata import table

    long = "a label that is much longer than the forty-eight characters of a markdown preview cell"
    df = pl.DataFrame({"strategy": [long, "late"], "macro_f1": [0.123456789, None], "n": [3, 4],
                       "v": [[0.1] * 10, [0.2]]})
    value = table(df).value
    assert [(c.name, c.type) for c in value.schema.columns] == [
        ("strategy", "string"), ("macro_f1", "float"), ("n", "int"), ("v", "string")]
    assert value.records[0].data == {"strategy": long, "macro_f1": 0.1235, "n": 3, "v": "[10 items]"}
    assert value.records[1].data["macro_f1"] is None and value.records[1].data["v"] == "0.2"


def test_every_lake_table_asset_has_its_column_schema():

    from mm_platform.lib.storage.lake import ALL_TABLES

    graph = defs.resolve_asset_graph()
    seen = 0
    for key in graph.get_all_asset_keys():
        name = key.to_user_string()
        if name not in ALL_TABLES:
            continue
        schema = graph.get(key).metadata.get("dagster/column_schema")
        assert schema is not None, name
        assert [c.name for c in schema.columns] == list(ALL_TABLES[name]), name
        seen += 1
    assert seen >= 20
    types = {c.name: c.type for c in graph.get(dg.AssetKey("text_embeddings")).metadata["dagster/column_schema"].columns}
    assert types["embedding"] == "list<float>" and types["dim"] == "int" and types["cache_hit"] == "bool"


def test_classifier_confusion_matrix_is_a_table_of_counts():
    from mm_platform.defs.classifiers.metadata import confusion_table

    value = confusion_table({"classes": ["mug", "lamp"], "confusion": [[5, 1], [0, 4]]})
    assert [c.name for c in value.schema.columns] == ["true_label", "→ mug", "→ lamp"]
    rows = [r.data for r in value.records]
    assert rows == [{"true_label": "mug", "→ mug": 5, "→ lamp": 1}, {"true_label": "lamp", "→ mug": 0, "→ lamp": 4}]
