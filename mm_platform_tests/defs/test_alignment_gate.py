"""The alignment asset's record of the heads/baseline choice: the per-pair gating table and the gap check."""

import dagster as dg

from mm_platform.defs.shared_space.metadata import _recall_table, gating_table, loss_gap_check
from mm_platform.lib.vectors.shared_space import AlignmentConfig, fit_shared_space
from mm_platform_tests.lib.vectors.test_shared_space import _linear


def test_gating_table_and_recall_table_show_heads_and_baseline():
    blocks, present, _ = _linear(200)
    model, metrics = fit_shared_space(blocks, present, AlignmentConfig(shared_dim=16, epochs=1))
    table = gating_table(metrics["gating"]).value
    assert [c.name for c in table.schema.columns] == ["pair", "validation_recall_heads",
                                                      "validation_recall_baseline", "use_heads"]
    (row,) = table.records
    assert row.data["pair"] == "text|image" and row.data["use_heads"] is False
    assert row.data["validation_recall_baseline"] == metrics["validation_recall_baseline"]
    base = metrics["baselines"][metrics["baseline"]]["retrieval"]
    md = _recall_table(metrics["retrieval"], base)
    assert "baseline recall@10" in md and f"{base['text->image']['recall@10']:.3f}" in md


def test_gap_check_says_when_the_heads_are_not_in_use():
    check, warning = loss_gap_check({"train_loss": 1.0, "val_loss": 5.0, "mapping_in_use": "ridge"})
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "the heads are not in use (the ridge baseline is)" in warning
    _, warning = loss_gap_check({"train_loss": 1.0, "val_loss": 5.0, "mapping_in_use": "heads"})
    assert "not in use" not in warning
