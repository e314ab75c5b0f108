"""The global layer batch by batch (lib/analysis/global_layer.py) on a real Delta lake: current versions only, and the
same clusters and representatives as the whole-matrix path."""

from __future__ import annotations

import datetime as dt
from datetime import UTC
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import normalized_mutual_info_score

from mm_platform.lib.analysis.clustering.stability import fit_projection
from mm_platform.lib.analysis.clustering import kmeans_auto, representatives
from mm_platform.lib.vectors.corpus import load_corpus
from mm_platform.lib.analysis.global_layer import (
    LakeVectors,
    cluster_chunks,
    cluster_means,
    corpus_chunks,
    representatives_by_id,
    sampled_corpus,
    space_chunks,
)
from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.arrays import embedding_matrix

DIM = 24
BATCHES = {"b1": range(0, 120), "b2": range(120, 250), "b3": range(250, 300)}
RESENT = 5  # record r0005 lands again in b3 with another vector: the b1 version is superseded


def _frames(batch: str, rows: list[int], X: np.ndarray, day: int) -> dict[str, pl.DataFrame]:
    n = len(rows)
    ids = [f"r{i:04d}" for i in rows]
    raw = pl.DataFrame({
        "batch_id": [batch] * n, "line_number": list(range(1, n + 1)), "record_id": ids, "op": ["upsert"] * n,
        "timestamp": [dt.datetime(2024, 1, 1, tzinfo=UTC)] * n, "label": [f"c{i % 4}" for i in rows],
        "text_declared": [True] * n, "image_path": [None] * n, "audio_path": [None] * n, "entity_id": [None] * n,
        "fields_json": ["{}"] * n, "manifest_sha256": ["m" * 64] * n,
        "ingested_at": [dt.datetime(2024, 2, day, tzinfo=UTC)] * n, "landed_at": [dt.datetime(2024, 2, day, tzinfo=UTC)] * n,
    })
    aligned = pl.DataFrame({
        "record_id": ids, "batch_id": [batch] * n, "line_number": list(range(1, n + 1)),
        "timestamp": [dt.datetime(2024, 1, 1, tzinfo=UTC)] * n, "label": [f"c{i % 4}" for i in rows],
        "has_text": [True] * n, "has_image": [False] * n, "has_audio": [False] * n, "has_tabular": [False] * n,
        "text_sha256": ids, "image_sha256": [None] * n, "audio_sha256": [None] * n, "fields_sha256": [None] * n,
        "entity_id": [None] * n, "streams_matched": [0] * n, "stream_features_json": [None] * n,
    })
    vecs = [X[i].tolist() for i in rows]
    text = pl.DataFrame({
        "record_id": ids, "batch_id": [batch] * n, "model": ["tiny"] * n, "model_version": ["1"] * n,
        "space": ["text"] * n, "dim": [DIM] * n, "content_sha256": ids, "embedding": vecs, "cache_hit": [False] * n,
    })
    fused = pl.DataFrame({
        "record_id": ids, "batch_id": [batch] * n, "fusion": ["early:text=1"] * n,
        "modalities": [["text"]] * n, "dim": [DIM] * n, "embedding": vecs, "weights_json": ["{}"] * n,
        "weights_source": ["configured"] * n,
    })
    return {"raw_records": raw, "aligned_records": aligned, "text_embeddings": text, "fused_vectors": fused}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, np.ndarray]:
    X, _ = make_blobs(n_samples=301, centers=4, n_features=DIM, random_state=3, cluster_std=1.5)
    X = X.astype(np.float32)
    lake = Lake(Path(tmp_path_factory.mktemp("gl")) / "lake")
    for day, (b, rows) in enumerate(BATCHES.items(), start=1):
        rows = list(rows)
        Xb = X.copy()
        if b == "b3":
            rows.append(RESENT)
            Xb[RESENT] = X[300]  # the resend carries another vector
        for table, df in _frames(b, rows, Xb, day).items():
            lake.write_partition(table, b, df)
    return lake, X


def _whole(lake: Lake) -> tuple[list[str], np.ndarray]:
    df = lake.read_current("fused_vectors").sort("record_id")
    return df["record_id"].to_list(), embedding_matrix(df)


def test_lake_vectors_yield_current_versions_batch_by_batch(lake) -> None:
    lk, X = lake
    src = LakeVectors(lk)
    parts = list(src())
    assert len(parts) == 3 and src.n == 300
    ids = [r for rids, _ in parts for r in rids]
    M = np.concatenate([m for _, m in parts])
    assert len(ids) == len(set(ids)) == 300
    row = ids.index(f"r{RESENT:04d}")
    np.testing.assert_array_equal(M[row], X[300])  # the resent version, not the superseded one
    assert src.batch_of[f"r{RESENT:04d}"] == "b3"
    whole_ids, W = _whole(lk)
    order = np.argsort(ids)
    assert [ids[i] for i in order] == whole_ids
    np.testing.assert_array_equal(M[order], W)


def test_cluster_chunks_equals_the_whole_matrix_path_when_the_sample_is_every_row(lake) -> None:
    lk, _ = lake
    src = LakeVectors(lk)
    cc = cluster_chunks(src, src.n, 8, lambda Z: kmeans_auto(Z, k_max=6, seed=0), seed=0)
    ids = cc.record_ids
    M = np.concatenate([m for _, m in src()])
    mean, comps, Z = fit_projection(M, 8, seed=0)
    expected = kmeans_auto(Z, k_max=6, seed=0)
    assert not cc.sampled and cc.input_dim == DIM and len(ids) == 300
    np.testing.assert_array_equal(cc.Z, Z)
    np.testing.assert_array_equal(cc.mean, mean)
    np.testing.assert_array_equal(cc.result.labels, expected.labels)
    assert cc.result.params["reduction"] == "pca8"


def test_cluster_chunks_on_a_sample_finds_the_same_clusters(lake) -> None:
    lk, _ = lake
    src = LakeVectors(lk)
    whole = cluster_chunks(src, src.n, 8, lambda Z: kmeans_auto(Z, k=4, seed=0), seed=0)
    sampled = cluster_chunks(src, src.n, 8, lambda Z: kmeans_auto(Z, k=4, seed=0), seed=0, sample_size=80)
    assert sampled.sampled and sampled.Z.shape == (300, 8)
    assert sampled.record_ids == whole.record_ids
    np.testing.assert_allclose(np.linalg.norm(sampled.Z, axis=1), 1.0, rtol=1e-5)
    assert normalized_mutual_info_score(whole.result.labels, sampled.result.labels) > 0.95
    with pytest.raises(ValueError, match="no vectors"):
        cluster_chunks(lambda: iter([]), 10, 8, lambda Z: kmeans_auto(Z, k=2))


def test_representatives_by_id_match_the_whole_matrix(lake) -> None:
    lk, _ = lake
    ids, W = _whole(lk)
    labels = np.array([i % 3 for i in range(len(ids))])
    labels[:4] = -1
    labels_by_id = dict(zip(ids[2:], labels[2:].tolist(), strict=True))  # r0000, r0001 have no cluster
    keep = [i for i, r in enumerate(ids) if r in labels_by_id]
    expected = representatives(W[keep], labels[keep], [ids[i] for i in keep], n=3)
    assert representatives_by_id(LakeVectors(lk), labels_by_id, n=3) == expected
    assert representatives_by_id(corpus_chunks(lk, lambda c: c.blocks["text"]), labels_by_id, n=3) == expected


def test_sampled_corpus_is_the_whole_corpus_when_small_else_a_current_sample(lake) -> None:
    lk, X = lake
    full, whole = sampled_corpus(lk, size=1000)
    ref = load_corpus(lk)
    assert whole and full.record_ids == ref.record_ids
    sample, whole = sampled_corpus(lk, size=100, seed=1)
    assert not whole and 50 < sample.n < 150
    assert sample.record_ids == sorted(sample.record_ids) and set(sample.record_ids) <= set(ref.record_ids)
    row_of = {r: i for i, r in enumerate(ref.record_ids)}
    rows = [row_of[r] for r in sample.record_ids]
    np.testing.assert_array_equal(sample.blocks["text"], ref.blocks["text"][rows])
    assert sample.batch_ids == [ref.batch_ids[i] for i in rows] and sample.labels == [ref.labels[i] for i in rows]
    assert sampled_corpus(lk, size=100, seed=1)[0].record_ids == sample.record_ids  # seeded


def test_space_chunks_picks_the_source_of_each_strategy(lake) -> None:
    lk, _ = lake
    assert isinstance(space_chunks(lk, "early"), LakeVectors)
    evid = space_chunks(lk, "early", layout={"text": DIM}, weights={"text": 2.0})
    ids, W = _whole(lk)
    got = dict((r, v) for rids, M in evid() for r, v in zip(rids, M, strict=True))
    assert sorted(got) == ids
    with pytest.raises(ValueError, match="no chunk source"):
        space_chunks(lk, "shared_mean")


def test_cluster_means_equal_the_whole_matrix_means(lake) -> None:
    lk, _ = lake
    ids, W = _whole(lk)
    labels = np.array([i % 4 for i in range(len(ids))])
    labels_by_id = dict(zip(ids[3:], labels[3:].tolist(), strict=True))  # 3 records unclustered (-1)
    got = cluster_means(LakeVectors(lk, "text_embeddings"), labels_by_id)
    full = np.array([labels_by_id.get(r, -1) for r in ids])
    assert sorted(got) == [-1, 0, 1, 2, 3]
    for c, mean in got.items():
        np.testing.assert_allclose(mean, W[full == c].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert sorted(cluster_means(LakeVectors(lk, "text_embeddings"), labels_by_id, {1, 2})) == [1, 2]
