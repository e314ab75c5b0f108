"""bench_quality's table and goal logic on cluster_metrics rows written here (the CLI runs are the bench's)."""

from __future__ import annotations

from bench.bench_quality import goals_for, quality_rows


def _metric(space: str, nmi: float, strategy: str | None = None, k: int = 4) -> dict:
    return {"space": space, "fusion_strategy": strategy, "k": k, "n_records": 100, "nmi": nmi, "ari": nmi / 2,
            "silhouette": 0.3}


def _metrics(default_nmi: float) -> list[dict]:
    return [_metric("fused", default_nmi, "early:text=1,image=1"), _metric("fused:early", default_nmi, "early"),
            _metric("fused:early_evidence", 0.70, "early_evidence"), _metric("text", 0.50),
            _metric("image", 0.40), _metric("audio", 0.05)]


def test_rows_mark_the_selected_strategy_and_list_singles_first() -> None:
    rows, default = quality_rows(_metrics(0.6))
    assert [r["space"] for r in rows] == ["text", "image", "audio", "fused:early", "fused:early_evidence"]
    assert [r["space"] for r in rows if r["default"]] == ["fused:early"]
    assert default["nmi"] == 0.6


def test_goals_pass_and_fail_on_the_margin_over_the_best_single_modality() -> None:
    cost = {"weighting_s": 0.5, "step_s": 10.5, "ratio": 0.05}
    ok = goals_for(*quality_rows(_metrics(0.56)), cost)
    assert [passed for _, passed in ok] == [True, True, True]
    short = goals_for(*quality_rows(_metrics(0.52)), cost)  # above text (0.50), not by 0.05
    assert [passed for _, passed in short] == [True, False, True]
    worse = goals_for(*quality_rows(_metrics(0.45)), {**cost, "ratio": 0.2})
    assert [passed for _, passed in worse] == [False, False, False]


def test_the_margin_goal_needs_two_modalities_with_signal_and_missing_timing_fails() -> None:
    metrics = [_metric("fused", 0.5, "early"), _metric("text", 0.5), _metric("image", 0.02)]
    goals = goals_for(*quality_rows(metrics), None)
    assert [passed for _, passed in goals] == [True, True, False]
    assert "does not apply" in goals[1][0] and "no weighting seconds" in goals[2][0]


def test_the_evidence_chosen_candidate_is_the_marked_row() -> None:
    metrics = [_metric("fused", 0.62, "early:text=1.25,image=1.6,audio=0,tabular=0.15 (early_evidence)"),
               _metric("fused:early", 0.27, "early"), _metric("fused:early_evidence", 0.62, "early_evidence"),
               _metric("text", 0.52)]
    assert [r["space"] for r in quality_rows(metrics)[0] if r["default"]] == ["fused:early_evidence"]
    metrics[0] = _metric("fused", 0.52, "early:text=1 (single_text)")
    assert [r["space"] for r in quality_rows(metrics)[0] if r["default"]] == ["text"]


def test_a_modality_carries_signal_only_at_half_the_best_single_nmi() -> None:
    # asterisk-like: text 0.52, a duration field 0.158 (k 2), audio 0.06: only text carries signal
    metrics = [_metric("fused", 0.53, "early:text=1 (single_text)"), _metric("text", 0.52),
               _metric("tabular", 0.158), _metric("audio", 0.06)]
    goals = goals_for(*quality_rows(metrics), {"weighting_s": 0.1, "step_s": 2.0, "ratio": 0.05})
    assert [passed for _, passed in goals] == [True, True, True] and "does not apply" in goals[1][0]
    metrics[2] = _metric("tabular", 0.30)  # above half of text's: two carry signal, the margin applies
    goals = goals_for(*quality_rows(metrics), {"weighting_s": 0.1, "step_s": 2.0, "ratio": 0.05})
    assert [passed for _, passed in goals] == [True, False, True]


def test_weighting_seconds_are_not_counted_twice() -> None:
    from bench.bench_quality import weighting_seconds

    md = {"evidence_weights": {"weights": {}, "seconds": 0.04}, "weighting_seconds": 0.05, "fusion_weights": "{}"}
    assert weighting_seconds(md) == 0.05  # the total already holds the evidence's 0.04 s
    assert weighting_seconds({"evidence_weights": {"seconds": 0.04}, "fusion_weights": "{}"}) == 0.04
    assert weighting_seconds({"k": 3}) is None
