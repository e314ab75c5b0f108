"""The full re-cluster and the cluster summary without Dagster (``lib/analysis/recluster.py``, ``lib/analysis/summaries.py``) on a
small real lake: three separated groups of records with text and image vectors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mm_platform.lib.storage.lake import ALL_TABLES, Lake
from mm_platform.lib.analysis.recluster import (
    RECLUSTER_TABLES,
    ReclusterError,
    assignment_frame,
    clustering_input,
    layout_of,
    load_cluster_model,
    modality_agreement,
    recluster,
    run_clustering,
)
from mm_platform.lib.analysis.summaries import summary_frame
from mm_platform.lib.arrays import matrix_series

LANDED = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
LABELS = ("mug", "lamp", "shoe")


@dataclass
class Settings:
    """The pipeline settings the re-cluster reads (``PipelineConfigResource`` has the same fields)."""

    cluster_algorithm: str = "kmeans"
    cluster_k: int = 3
    cluster_k_max: int = 6
    cluster_reduce_dim: int = 4
    hdbscan_min_cluster_size: int = 3
    seed: int = 0
    fusion_strategy: str = "early"
    fusion_select: str = "fixed"
    outlier_policy: str = "keep"
    dbscan_eps: str = ""
    dbscan_min_samples: int = 3
    map_method: str = "pca"
    map_fit_sample: int = 3000
    prompts: str = ""

    def weights(self) -> dict[str, float]:
        return {}

    def label_prompts(self) -> list[str]:
        return [p for p in self.prompts.split(",") if p]


def _unit(X: np.ndarray) -> np.ndarray:
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def _frame(table: str, rows: dict) -> pl.DataFrame:
    n = len(rows["record_id"])
    return pl.DataFrame({c: rows.get(c, [None] * n) for c in ALL_TABLES[table]}, schema=ALL_TABLES[table])


def _lake(tmp_path: Path, per_group: int = 8) -> Lake:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8, dtype=np.float32) * 4
    ids = [f"r{i:02d}" for i in range(3 * per_group)]
    group = np.repeat(np.arange(3), per_group)
    text = _unit(centres[group] + rng.normal(0, 0.3, (len(ids), 8)))
    image = _unit(np.roll(centres, 2, axis=1)[group] + rng.normal(0, 0.3, (len(ids), 8)))
    n = len(ids)
    lake = Lake(tmp_path / "lake")
    lake.write_partition("raw_records", "b1", _frame("raw_records", {
        "record_id": ids, "batch_id": ["b1"] * n, "line_number": list(range(1, n + 1)), "op": ["upsert"] * n,
        "label": [LABELS[g] for g in group], "landed_at": [LANDED] * n, "ingested_at": [LANDED] * n,
        "text": [f"a {LABELS[g]} number {i}" for i, g in enumerate(group)]}))
    lake.write_partition("raw_text", "b1", _frame("raw_text", {
        "record_id": ids, "batch_id": ["b1"] * n, "text": [f"a {LABELS[g]} thing" for g in group]}))
    lake.write_partition("aligned_records", "b1", _frame("aligned_records", {
        "record_id": ids, "batch_id": ["b1"] * n, "line_number": list(range(1, n + 1)),
        "label": [LABELS[g] for g in group], "has_text": [True] * n, "has_image": [True] * n,
        "has_audio": [False] * n, "has_tabular": [False] * n}))
    for table, M in (("text_embeddings", text), ("image_embeddings", image)):
        lake.write_partition(table, "b1", _frame(table, {
            "record_id": ids, "batch_id": ["b1"] * n, "model": ["tiny"] * n, "model_version": ["1"] * n,
            "dim": [8] * n, "embedding": matrix_series(M), "space": [table] * n}))
    fused = _unit(np.hstack([text, image]))
    lake.write_partition("fused_vectors", "b1", _frame("fused_vectors", {
        "record_id": ids, "batch_id": ["b1"] * n, "fusion": ["early:text=1,image=1"] * n,
        "modalities": [["text", "image"]] * n, "dim": [16] * n, "embedding": matrix_series(fused)}))
    return lake


def test_recluster_finds_the_groups_keeps_ids_and_scores_every_space(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    out = recluster(lake, Settings(), "run1", "fp")
    assert out is not None and out.res.k == 3 and out.spec == "early:text=1,image=1"
    by_label = out.assignments.join(lake.read_table("aligned_records").select("record_id", "label"), on="record_id")
    assert by_label.group_by("label").agg(pl.col("cluster_id").n_unique())["cluster_id"].to_list() == [1, 1, 1]
    assert set(out.assignments.columns) == set(ALL_TABLES["recluster_assignments"])
    metrics = out.metrics
    assert {"fused", "fused:early", "text", "image"} <= set(metrics["space"])
    assert metrics.filter(pl.col("space") == "fused")["nmi"][0] == pytest.approx(1.0)
    assert set(out.modality_assignments["modality"]) == {"text", "image"}
    assert load_cluster_model(lake).run_id == "run1"
    # a second run maps its clusters onto the first run's ids: nothing moves
    lake.write_global("recluster_assignments", out.assignments)
    again = recluster(lake, Settings(), "run2", "fp")
    assert again.mapping.moved == 0 and again.mapping.common == out.assignments.height
    assert dict(again.assignments.select("record_id", "cluster_id").iter_rows()) == dict(
        out.assignments.select("record_id", "cluster_id").iter_rows())
    assert RECLUSTER_TABLES == ("recluster_assignments", "cluster_metrics", "modality_assignments")


def test_recluster_of_an_empty_lake_is_none_and_bad_settings_say_what_is_wrong(tmp_path: Path) -> None:
    assert recluster(Lake(tmp_path / "empty"), Settings(), "run", "fp") is None
    lake = _lake(tmp_path)
    with pytest.raises(ReclusterError, match="unknown cluster algorithm 'spectral'"):
        run_clustering(np.eye(4, dtype=np.float32), Settings(cluster_algorithm="spectral"))
    with pytest.raises(ReclusterError, match="unknown fusion strategy"):
        clustering_input(lake, Settings(fusion_strategy="late"))
    with pytest.raises(ReclusterError, match="needs a current alignment model"):
        clustering_input(lake, Settings(fusion_strategy="shared_mean"))


def test_summary_names_and_sizes_the_current_clusters(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    assert summary_frame(lake, Settings(), lambda: None, lambda _: None) is None  # nothing clustered yet
    out = recluster(lake, Settings(), "run1", "fp")
    lake.write_global("recluster_assignments", out.assignments)
    lake.write_global("modality_assignments", out.modality_assignments)
    warnings: list[str] = []

    def no_encoder():
        raise RuntimeError("no text encoder here")

    df = summary_frame(lake, Settings(), no_encoder, warnings.append)
    assert df["size"].sum() == out.assignments.height and df.height == 3
    assert all(len(r) == 3 for r in df["representative_record_ids"])
    assert set(df["name_source"]) == {"top_terms"} and warnings and "without the text encoder" in warnings[0]
    # each cluster is one group: named by its word, its label counts and both modalities agree
    for row in df.iter_rows(named=True):
        assert row["name"] in LABELS and json.loads(row["label_counts_json"]) == {row["name"]: 8}
        assert json.loads(row["agreement_json"]) == {"image": 1.0, "text": 1.0}
    assert df["text_coverage"].to_list() == [1.0, 1.0, 1.0] and df["audio_coverage"].to_list() == [0.0] * 3


def test_assignment_frame_and_agreement() -> None:
    df = assignment_frame(["a", "b", "c"], ["b1"] * 3, np.array([0, -1, 1]), [0.1, np.nan, 0.2], "kmeans", "r")
    assert df["is_outlier"].to_list() == [False, True, False] and df["cluster_id"].dtype == pl.Int32
    fused = pl.DataFrame({"record_id": ["a", "b", "c", "d"], "cluster_id": [0, 0, 1, 1]})
    own = pl.DataFrame({"record_id": ["a", "b", "c", "d"], "modality": ["text"] * 4, "cluster_id": [5, 5, 6, 7]})
    assert modality_agreement(fused, own) == {0: {"text": 1.0}, 1: {"text": 0.5}}
    assert modality_agreement(fused, own.head(0)) == {}
    assert layout_of("early:text=1.25,image=0 (early_evidence)") == "early:text,image"
