"""The rows of the embedding tables, without Dagster (moved from ``defs/embeddings/assets.py``): vectors
merged with the embedding cache, the table rows with the model that made them, media that failed to encode
as quarantine rows, and the in-process encoder wrapper that leaves a broken file out with its reason."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import duckdb
import numpy as np
import polars as pl

from mm_platform.lib.encoders.base import ModelInfo
from mm_platform.lib.encoders.per_file import encode_per_file
from mm_platform.lib.arrays import matrix_series
from mm_platform.lib.storage.sqlquote import sql_identifier, sql_literal

#: cache lookups of at most this many contents send them as SQL literals (see ``lookup_cached``)
SMALL_LOOKUP = 5000


def lookup_cached(con: duckdb.DuckDBPyConnection, table: str, model_id: str, model_version: str,
                  hashes: list[str]) -> dict[str, list]:
    """Content hash -> the vector ``model_id`` at ``model_version`` already made for it, from ``<table>_history``
    on a connection with the lake's views. Up to ``SMALL_LOOKUP`` hashes travel as SQL literals: binding a
    parameter makes the duckdb module import pandas (0.3 s of a small batch); a long list parses faster as one
    parameter."""
    wanted = sorted(set(hashes))
    if not wanted:
        return {}
    select = (f"SELECT content_sha256, any_value(embedding) FROM {sql_identifier(table + '_history')} "
              f"WHERE model = {sql_literal(model_id)} AND model_version = {sql_literal(model_version)} ")
    if len(wanted) <= SMALL_LOOKUP:
        rows = con.execute(select + f"AND content_sha256 IN ({', '.join(map(sql_literal, wanted))}) GROUP BY 1")
    else:
        rows = con.execute(select + "AND content_sha256 IN (SELECT unnest(?)) GROUP BY 1", [wanted])
    return dict(rows.fetchall())


def merge_with_cache(cache: dict[str, list], hashes: list[str], dim: int,
                     encode: Callable[[list[int]], np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Vectors for every row: from ``cache`` (content hash -> vector) where the model has seen the content
    before, else from ``encode(row indices)``, each distinct content encoded once. Returns (vectors, cache_hit
    per row, number of rows encoded)."""
    first_row: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h not in cache:
            first_row.setdefault(h, i)
    todo = list(first_row.values())
    fresh = encode(todo) if todo else np.zeros((0, dim), dtype=np.float32)
    computed = dict(zip((hashes[i] for i in todo), fresh, strict=True))
    vectors = np.zeros((len(hashes), dim), dtype=np.float32)
    hit = np.zeros(len(hashes), dtype=bool)
    for i, h in enumerate(hashes):
        if h in cache:
            vectors[i], hit[i] = cache[h], True
        else:
            vectors[i] = computed[h]
    return vectors, hit, len(todo)


def embedding_frame(
    src: pl.DataFrame, content_col: str, vectors: np.ndarray, info: ModelInfo, cache_hit: np.ndarray
) -> pl.DataFrame:
    """The embedding rows of ``src`` (record_id, batch_id, content hash) with the model that made them."""
    n = src.height
    return pl.DataFrame(
        {
            "record_id": src["record_id"],
            "batch_id": src["batch_id"],
            "model": [info.model_id] * n,
            "model_version": [info.model_version] * n,
            "space": [info.space] * n,
            "dim": [info.dim] * n,
            "content_sha256": src[content_col],
            "embedding": matrix_series(vectors),
            "cache_hit": cache_hit,
        }
    )


def quarantine_failures(
    src: pl.DataFrame, content_col: str, failures: dict[int, tuple[str, str]], table: str, modality: str
) -> tuple[pl.Series, pl.DataFrame]:
    """Rows whose content failed inside a Ray task (every row with that content): a keep-mask and their
    quarantine rows (reason code and message as the task reported them)."""
    bad = {src[content_col][i]: failures[i] for i in failures}
    keep = ~src[content_col].is_in(list(bad))
    dropped = src.filter(~keep)
    now = datetime.now(UTC)
    rej = pl.DataFrame(
        {
            "batch_id": dropped["batch_id"], "line_number": dropped["line_number"],
            "record_id": dropped["record_id"], "modality": [modality] * dropped.height,
            "reason": [bad[h][0] for h in dropped[content_col]], "detail": [bad[h][1] for h in dropped[content_col]],
            "stage": [table] * dropped.height, "rejected_at": [now] * dropped.height,
        },
        schema_overrides={"record_id": pl.String, "line_number": pl.Int32, "modality": pl.String,
                          "reason": pl.String, "detail": pl.String, "stage": pl.String},
    )
    return keep, rej


def local_embedder(
    encode_paths: Callable[[list[str]], np.ndarray], dim: Callable[[], int], item_col: str = "uri",
) -> tuple[Callable[[pl.DataFrame, list[int]], np.ndarray], dict[int, tuple[str, str]]]:
    """(encode, failures) for media in this process: a file that fails to decode here (changed since
    validation) is left out with its reason (filled into ``failures``), as the Ray stage does, instead of
    failing the step."""
    failures: dict[int, tuple[str, str]] = {}

    def encode(src: pl.DataFrame, rows: list[int]) -> np.ndarray:
        vectors, bad = encode_per_file(encode_paths, [src[item_col][i] for i in rows], dim())
        failures.update({rows[k]: why for k, why in bad.items()})
        return vectors

    return encode, failures
