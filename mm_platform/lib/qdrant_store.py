"""Qdrant sink: one point per record, named vectors per modality plus ``fused``.

Point ids are deterministic (uuid5 of the record_id), so re-running a batch overwrites the same points:
no duplicates, no loss. Embedded mode (``QdrantClient(path=...)``) allows one process at a time, so the
store is opened and closed inside each step (Dagster pools serialise writers) and opening retries for a
while when another process holds it. ``QDRANT_URL`` switches to a server, which has no such limit.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

log = logging.getLogger(__name__)

POINT_NAMESPACE = uuid.UUID("6f1c2b1e-6b0e-4c5e-9a43-0d5c3a1f7e21")


def point_id(record_id: str) -> str:
    """Deterministic Qdrant point id of a record."""
    return str(uuid.uuid5(POINT_NAMESPACE, record_id))


class QdrantBusy(RuntimeError):
    """The embedded Qdrant storage is held by another process."""


@dataclass
class PointData:
    record_id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchHit:
    record_id: str
    score: float
    vector: str
    payload: dict[str, Any]


class QdrantStore:
    """A connection to one collection; use as a context manager (``with QdrantStore(...) as store``)."""

    def __init__(
        self,
        collection: str,
        path: Path | str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        open_timeout_s: float = 60.0,
        upsert_chunk: int = 256,
    ):
        if not path and not url:
            raise ValueError("QdrantStore needs a storage path (embedded) or a server url")
        self.collection = collection
        self.path = Path(path) if path else None
        self.url = url or None
        self.api_key = api_key or None
        self.open_timeout_s = open_timeout_s
        self.upsert_chunk = upsert_chunk
        self._client: QdrantClient | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def location(self) -> str:
        return self.url or f"embedded:{self.path}"

    def open(self) -> QdrantStore:
        if self._client is not None:
            return self
        if self.url:
            self._client = QdrantClient(url=self.url, api_key=self.api_key, timeout=60)
            return self
        assert self.path is not None
        self.path.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.open_timeout_s
        while True:
            try:
                self._client = QdrantClient(path=str(self.path))
                return self
            except (RuntimeError, BlockingIOError) as exc:
                if "already accessed" not in str(exc) and not isinstance(exc, BlockingIOError):
                    raise
                if time.monotonic() > deadline:
                    raise QdrantBusy(
                        f"embedded Qdrant at {self.path} is in use by another process (a running "
                        "ingest?). Wait for it to finish, or run a Qdrant server and set QDRANT_URL."
                    ) from exc
                time.sleep(0.5)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> QdrantStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> QdrantClient:
        if self._client is None:
            raise RuntimeError("QdrantStore is not open")
        return self._client

    # -- collection ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def vector_dims(self) -> dict[str, int]:
        """Named vectors of the collection and their sizes ({} when it does not exist)."""
        if not self.exists():
            return {}
        params = self.client.get_collection(self.collection).config.params.vectors
        if isinstance(params, Mapping):
            return {name: int(p.size) for name, p in params.items()}
        return {"": int(params.size)} if params is not None else {}

    def ensure_collection(self, dims: Mapping[str, int]) -> bool:
        """Make sure the collection has (at least) these named vectors with these sizes (cosine).

        A collection whose vectors differ (a new modality, or a model with another dimension) is recreated:
        Qdrant cannot add or resize named vectors in place. Returns True when (re)created. Existing named
        vectors that are not asked for are kept, so modalities can be written by separate steps.
        """
        current = self.vector_dims()
        wanted = {**current, **{k: int(v) for k, v in dims.items()}}
        if current and all(current.get(k) == v for k, v in wanted.items()):
            return False
        if current:
            log.warning(
                "Qdrant collection %s has vectors %s, needs %s: recreating it (points of other batches must be "
                "re-ingested)", self.collection, current, wanted,
            )
            self.client.delete_collection(self.collection)
        self.client.create_collection(
            self.collection,
            vectors_config={
                name: models.VectorParams(size=size, distance=models.Distance.COSINE)
                for name, size in wanted.items()
            },
        )
        if self.url is None:  # payload indexes have no effect in embedded mode
            return True
        for key, schema in (("batch_id", models.PayloadSchemaType.KEYWORD),
                            ("label", models.PayloadSchemaType.KEYWORD),
                            ("cluster_id", models.PayloadSchemaType.INTEGER)):
            self.client.create_payload_index(self.collection, key, field_schema=schema)
        return True

    # -- writes -------------------------------------------------------------------------------------
    def upsert(self, points: Iterable[PointData]) -> int:
        """Upsert points in chunks with ``wait=True``; returns the number written."""
        n = 0
        for chunk in _chunks(points, self.upsert_chunk):
            structs = [
                models.PointStruct(
                    id=point_id(p.record_id),
                    vector={k: np.asarray(v, dtype=np.float32).tolist() for k, v in p.vectors.items()},
                    payload={**p.payload, "record_id": p.record_id},
                )
                for p in chunk
            ]
            self.client.upsert(self.collection, points=structs, wait=True)
            n += len(structs)
        return n

    def set_payloads(self, payloads: Mapping[str, Mapping[str, Any]]) -> int:
        """Set payload keys per record (e.g. cluster_id), grouped so equal payloads go in one call."""
        groups: dict[str, tuple[Mapping[str, Any], list[str]]] = {}
        for record_id, payload in payloads.items():
            key = json.dumps(payload, sort_keys=True, default=str)
            groups.setdefault(key, (payload, []))[1].append(point_id(record_id))
        existing = set()
        for payload, ids in groups.values():
            for chunk in _chunks(ids, 1000):
                found = {str(p.id) for p in self.client.retrieve(self.collection, ids=chunk, with_payload=False)}
                existing |= found
                if found:
                    self.client.set_payload(self.collection, payload=dict(payload), points=sorted(found), wait=True)
        return len(existing)

    def delete_records(self, record_ids: Sequence[str]) -> None:
        if record_ids:
            self.client.delete(
                self.collection,
                points_selector=models.PointIdsList(points=[point_id(r) for r in record_ids]),
                wait=True,
            )

    # -- reads --------------------------------------------------------------------------------------
    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count if self.exists() else 0

    def retrieve(self, record_ids: Sequence[str], with_vectors: bool = False) -> dict[str, Any]:
        if not self.exists():
            return {}
        pts = self.client.retrieve(
            self.collection, ids=[point_id(r) for r in record_ids], with_payload=True, with_vectors=with_vectors
        )
        return {p.payload["record_id"]: p for p in pts}

    def scroll_all(self, with_vectors: bool = False) -> Iterator[Any]:
        if not self.exists():
            return
        offset = None
        while True:
            pts, offset = self.client.scroll(
                self.collection, limit=512, offset=offset, with_payload=True, with_vectors=with_vectors
            )
            yield from pts
            if offset is None:
                return

    def search(self, vector: np.ndarray, using: str, k: int = 10,
               where: Mapping[str, Any] | None = None) -> list[SearchHit]:
        flt = None
        if where:
            flt = models.Filter(must=[
                models.FieldCondition(key=key, match=models.MatchValue(value=value)) for key, value in where.items()
            ])
        res = self.client.query_points(
            self.collection, query=np.asarray(vector, dtype=np.float32).tolist(), using=using, limit=k,
            with_payload=True, query_filter=flt,
        )
        return [
            SearchHit(record_id=p.payload.get("record_id", str(p.id)), score=float(p.score), vector=using,
                      payload=dict(p.payload or {}))
            for p in res.points
        ]


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
