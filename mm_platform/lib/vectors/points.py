"""What the ``vector_points`` multi-asset writes to Qdrant and to the lake, without Dagster: the points of a
batch (named vectors per modality plus ``fused``, payload), every named vector's size, the ledger of what was
written (``vector_points``) and the batch's completion row (``batches``). Moved from
``defs/vector_index/assets.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from mm_platform.lib.vectors.batch_vectors import modality_dims
from mm_platform.lib.vectors.corpus import EMBEDDING_TABLES
from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.storage.qdrant import PointData, QdrantStore, point_id
from mm_platform.lib.arrays import embedding_matrix

TEXT_PREVIEW_CHARS = 300


def _vectors_by_id(df: pl.DataFrame) -> dict[str, np.ndarray]:
    M = embedding_matrix(df)
    return {r: M[i] for i, r in enumerate(df["record_id"].to_list())}


def build_points(lake: Lake, batch_id: str, record_ids: set[str], cluster_of: dict[str, int]) -> list[PointData]:
    """Qdrant points for ``record_ids`` from batch ``batch_id``'s lake partitions."""
    if not record_ids:
        return []
    aligned = lake.read_partition("aligned_records", batch_id).filter(pl.col("record_id").is_in(list(record_ids)))
    fused = lake.read_partition("fused_vectors", batch_id)
    per_mod = {m: lake.read_partition(t, batch_id) for m, t in EMBEDDING_TABLES.items()}
    vecs = {m: _vectors_by_id(df) for m, df in per_mod.items()}
    models = {m: (f"{df['model'][0]}@{df['model_version'][0]}" if df.height else None) for m, df in per_mod.items()}
    fused_vecs = _vectors_by_id(fused)
    fusion_spec = fused["fusion"][0] if fused.height else None
    texts = dict(lake.read_partition("raw_text", batch_id).select("record_id", "text").iter_rows())
    images = dict(lake.read_partition("raw_images", batch_id).select("record_id", "uri").iter_rows())
    audio = dict(lake.read_partition("raw_audio", batch_id).select("record_id", "uri").iter_rows())
    points: list[PointData] = []
    for row in aligned.iter_rows(named=True):
        rid = row["record_id"]
        if rid not in fused_vecs:
            continue
        present = [m for m in vecs if rid in vecs[m]]
        text = texts.get(rid)
        points.append(PointData(rid, {**{m: vecs[m][rid] for m in present}, "fused": fused_vecs[rid]}, {
            "batch_id": batch_id,
            "label": row["label"],
            "cluster_id": cluster_of.get(rid),
            "timestamp": row["timestamp"].isoformat() if row["timestamp"] else None,
            "modalities": present,
            "models": {m: models[m] for m in present},
            "fusion": fusion_spec,
            "text": text[:TEXT_PREVIEW_CHARS] if text else None,
            "image_uri": images.get(rid),
            "audio_uri": audio.get(rid),
            "entity_id": row["entity_id"],
        }))
    return points


def vector_dims(lake: Lake, encoder_dim: Callable[[str], int], batch_id: str) -> dict[str, int]:
    """Every named vector's size, for all modalities even when this batch lacks one, so a later batch that
    brings a new modality never forces the collection to be recreated."""
    frames = {m: lake.read_partition(t, batch_id) for m, t in EMBEDDING_TABLES.items()}
    dims = modality_dims(frames, encoder_dim)
    fused = lake.read_partition("fused_vectors", batch_id)
    if fused.height:
        dims["fused"] = int(fused["dim"][0])
    return dims


def ledger_frame(points: list[PointData], batch_id: str, collection: str, manifest_sha: str | None,
                 now: datetime) -> pl.DataFrame:
    """The ``vector_points`` rows: one per point written (record, point id, named vectors, collection)."""
    return pl.DataFrame(
        {
            "record_id": [p.record_id for p in points],
            "batch_id": [batch_id] * len(points),
            "point_id": [point_id(p.record_id) for p in points],
            "vectors": pl.Series([sorted(p.vectors) for p in points], dtype=pl.List(pl.String)),
            "collection": [collection] * len(points),
            "manifest_sha256": [manifest_sha] * len(points),
            "upserted_at": [now] * len(points),
        }
    )


def batch_frame(lake: Lake, batch_id: str, manifest_sha: str | None, manifest_lines: int, points: int,
                deletes: int, now: datetime, profile_key: str, profile_request: str) -> pl.DataFrame:
    """The ``batches`` row of a completed batch: its manifest, what it became, and the model profile."""
    rejected = lake.read_stage_rejections(batch_id)
    return pl.DataFrame({
        "batch_id": [batch_id], "manifest_sha256": [manifest_sha],
        "manifest_lines": [manifest_lines],
        "aligned_records": [lake.read_partition("aligned_records", batch_id).height],
        "rejected_lines": [rejected.filter(pl.col("line_number") > 0)["line_number"].n_unique()],
        "points": [points], "deletes": [deletes], "completed_at": [now],
        "profile_key": [profile_key],
        "profile_request": [profile_request],
    })


@dataclass
class PointsPlan:
    """What a batch's ``vector_points`` run writes to Qdrant: its current upserts, the records it wrote before but
    no longer owns that fall back to their version in another batch, and the points to remove."""

    points: list[PointData]
    fallback: list[PointData]
    removed: list[str]
    upsert_ids: set[str]
    delete_ids: set[str]


def plan_points(lake: Lake, batch_id: str) -> PointsPlan:
    """The points of batch ``batch_id``'s current record versions (a re-run of an older batch never brings back
    superseded data), the fallbacks and the removals (a current delete, or a record dropped from a rewritten
    manifest with no version elsewhere)."""
    versions = lake.record_versions().filter(pl.col("is_current"))
    here = versions.filter(pl.col("batch_id") == batch_id)
    upsert_ids = set(here.filter(pl.col("op") == "upsert")["record_id"].to_list())
    delete_ids = set(here.filter(pl.col("op") == "delete")["record_id"].to_list())
    cluster_of = dict(lake.current_clusters().select("record_id", "cluster_id").iter_rows())
    points = build_points(lake, batch_id, upsert_ids, cluster_of)

    # records this batch wrote before but no longer owns (rewritten manifest, or superseded meanwhile)
    previous = set(lake.read_partition("vector_points", batch_id)["record_id"].to_list())
    gone = previous - {p.record_id for p in points} - delete_ids
    owner = dict(versions.filter(pl.col("record_id").is_in(list(gone)) & (pl.col("op") == "upsert"))
                 .select("record_id", "batch_id").iter_rows())
    fallback: list[PointData] = []
    for other in sorted(set(owner.values()) - {batch_id}):
        fallback += build_points(lake, other, {r for r, b in owner.items() if b == other}, cluster_of)
    removed = sorted((gone - set(owner)) | delete_ids)

    return PointsPlan(points, fallback, removed, upsert_ids, delete_ids)


def restore_points(lake: Lake, store: QdrantStore) -> int:
    """Upsert every current point again from the lake, the source of truth, into an open ``store`` (a
    collection dropped after an interrupted unlogged write): for each batch whose ``vector_points`` ran, the
    points of the records whose current version it holds, built like ``vector_points`` builds them (cluster
    ids from the current clusters, as ``qdrant_cluster_payloads`` sets them). A batch whose ``vector_points``
    has not run yet brings its points when it runs. Returns the number of points written."""
    current = lake.record_versions().filter(pl.col("is_current") & (pl.col("op") == "upsert"))
    cluster_of = dict(lake.current_clusters().select("record_id", "cluster_id").iter_rows())
    n = 0
    for batch_id in sorted(lake.partitions("vector_points")):
        ids = set(current.filter(pl.col("batch_id") == batch_id)["record_id"].to_list())
        points = build_points(lake, batch_id, ids, cluster_of)
        if not points:
            continue
        # dims of the dropped collection when its config was readable (the usual case), else from the points
        store.ensure_collection({k: len(v) for k, v in points[0].vectors.items()} if not store.exists() else {})
        n += store.upsert(points)
    return n


def lake_restore(lake: Lake) -> Callable[[QdrantStore], int]:
    """The ``restore`` of a :class:`QdrantStore` whose source of truth is ``lake``."""
    return lambda store: restore_points(lake, store)
