"""Embedding rows without Dagster (``lib/encoders/embedding_rows.py``): the cache merge, the rows, failed media as
quarantine rows, and the in-process encoder that leaves a broken file out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from mm_platform.lib.encoders.base import ImageDecodeError, ModelInfo
from mm_platform.lib.encoders.embedding_rows import embedding_frame, local_embedder, merge_with_cache, quarantine_failures
from mm_platform.lib.storage.lake import ALL_TABLES

INFO = ModelInfo(modality="image", model_id="tiny", model_version="1", dim=2, space="tiny")


def test_cache_merge_encodes_each_new_content_once() -> None:
    asked: list[list[int]] = []

    def encode(rows: list[int]) -> np.ndarray:
        asked.append(rows)
        return np.array([[float(r), 1.0] for r in rows], dtype=np.float32)

    vectors, hit, n = merge_with_cache({"h0": [9.0, 9.0]}, ["h0", "h1", "h1", "h2"], 2, encode)
    assert asked == [[1, 3]] and n == 2 and hit.tolist() == [True, False, False, False]
    assert vectors.tolist() == [[9.0, 9.0], [1.0, 1.0], [1.0, 1.0], [3.0, 1.0]]
    all_cached, hit2, n2 = merge_with_cache({"h0": [9.0, 9.0]}, ["h0"], 2, lambda rows: 1 / 0)
    assert n2 == 0 and hit2.tolist() == [True] and all_cached.shape == (1, 2)


def test_rows_and_failures() -> None:
    src = pl.DataFrame({"record_id": ["a", "b", "c"], "batch_id": "b1", "line_number": [1, 2, 3],
                        "sha256": ["x", "y", "x"]}, schema_overrides={"line_number": pl.Int32})
    df = embedding_frame(src, "sha256", np.eye(3, 2, dtype=np.float32), INFO, np.array([True, False, False]))
    assert set(df.columns) == set(ALL_TABLES["image_embeddings"]) and df["dim"].to_list() == [2, 2, 2]
    keep, rej = quarantine_failures(src, "sha256", {0: ("decode_error", "truncated")}, "image_embeddings", "image")
    assert keep.to_list() == [False, True, False]  # every row with the failed content
    assert rej["record_id"].to_list() == ["a", "c"] and set(rej["reason"]) == {"decode_error"}
    assert set(rej.columns) == set(ALL_TABLES["rejected_records"])


def test_local_embedder_leaves_a_broken_file_out(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(b"ok")
    bad.write_bytes(b"broken")

    def encode_paths(paths: list[str]) -> np.ndarray:
        for p in paths:
            if Path(p).read_bytes() == b"broken":
                raise ImageDecodeError(f"cannot decode {p!r}")
        return np.ones((len(paths), 2), dtype=np.float32)

    encode, failures = local_embedder(encode_paths, lambda: 2)
    src = pl.DataFrame({"uri": [str(good), str(bad)]})
    vectors = encode(src, [0, 1])
    assert vectors.shape == (2, 2) and vectors[0].tolist() == [1.0, 1.0]
    assert list(failures) == [1] and failures[1][0] == "corrupt_image" and vectors[1].tolist() == [0.0, 0.0]


def test_cache_lookup_finds_this_models_vectors_as_literals_or_one_parameter(tmp_path, monkeypatch) -> None:
    """Short lists go as literals (no pandas import in duckdb), long ones as one parameter: same answers,
    only this model and version, one vector per content."""
    import duckdb

    from mm_platform.lib.encoders import embedding_rows

    con = duckdb.connect()
    con.execute("CREATE TABLE text_embeddings_history AS SELECT * FROM (VALUES "
                "('h1', 'm', 'v1', [1.0, 0.0]), ('h1', 'm', 'v1', [1.0, 0.0]), ('h2', 'm', 'v2', [0.0, 1.0]), "
                "('h''3', 'm', 'v1', [0.5, 0.5]), ('h4', 'other', 'v1', [9.0, 9.0])"
                ") t(content_sha256, model, model_version, embedding)")
    want = {"h1": [1.0, 0.0], "h'3": [0.5, 0.5]}
    hashes = ["h1", "h2", "h'3", "h4", "h1", "nope"]
    assert embedding_rows.lookup_cached(con, "text_embeddings", "m", "v1", hashes) == want
    monkeypatch.setattr(embedding_rows, "SMALL_LOOKUP", 1)
    assert embedding_rows.lookup_cached(con, "text_embeddings", "m", "v1", hashes) == want
    assert embedding_rows.lookup_cached(con, "text_embeddings", "m", "v1", []) == {}
