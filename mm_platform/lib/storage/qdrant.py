"""Qdrant sink: one point per record, named vectors per modality plus ``fused``.

Point ids are deterministic (uuid5 of the record_id), so re-running a batch overwrites the same points:
no duplicates, no loss. Embedded mode (``QdrantClient(path=...)``) allows one process at a time, so the
store is opened and closed inside each step (Dagster pools serialise writers) and opening retries for a
while when another process holds it. ``QDRANT_URL`` switches to a server, which has no such limit.

The embedded engine is chosen by ``backend`` (``MM_QDRANT_BACKEND``): ``edge`` (default) runs the real
Qdrant engine in-process (qdrant-edge-py: HNSW, payload filters, WAL), ``local`` is qdrant-client's pure
Python local mode (meant for up to ~100k points). A local-mode storage dir opened with the edge backend is
migrated once (see ``_migrate_local_mode``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import qdrant_edge as qe

from mm_platform.lib.settings import setting
from mm_platform.lib.storage.qdrant_edge import (  # noqa: F401  (the edge backend, importable from here too)
    DIRTY_SUFFIX,
    EDGE_MARKER,
    QdrantBusy,
    QdrantNeedsRestore,
    _EDGE_SEARCH_PARAMS,
    _EdgeBackend,
    _LOCK_FILE,
    _edge_filter,
    _edge_quantization,
    _migrate_local_mode,
    clear_dirty_marker,
    dirty_collections,
    dirty_marker_dims,
    is_local_mode_layout,
)

if TYPE_CHECKING:  # imported where used: qdrant_client costs ~2 s of pydantic models, the edge backend none
    from qdrant_client import QdrantClient

log = logging.getLogger(__name__)

POINT_NAMESPACE = uuid.UUID("6f1c2b1e-6b0e-4c5e-9a43-0d5c3a1f7e21")


def _models() -> Any:
    """``qdrant_client.models``, imported on first use: only local mode and a server need it."""
    from qdrant_client import models

    return models


_NS_BYTES = POINT_NAMESPACE.bytes


def point_id(record_id: str) -> str:
    """Deterministic Qdrant point id of a record: ``str(uuid.uuid5(POINT_NAMESPACE, record_id))``."""
    return str(point_uuid(record_id))


def point_uuid(record_id: str) -> uuid.UUID:
    """The point id as a ``UUID`` (what qdrant-edge takes fastest): uuid5 computed with hashlib directly,
    ~3x cheaper than ``uuid.uuid5``, same value (checked in the tests)."""
    return uuid.UUID(bytes=hashlib.sha1(_NS_BYTES + record_id.encode("utf-8"), usedforsecurity=False).digest()[:16],
                     version=5)



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
        backend: str | None = None,
        restore: Callable[[QdrantStore], int] | None = None,
    ):
        if not path and not url:
            raise ValueError("QdrantStore needs a storage path (embedded) or a server url")
        self.collection = collection
        self.path = Path(path) if path else None
        self.url = url or None
        self.api_key = api_key or None
        self.open_timeout_s = open_timeout_s
        self.upsert_chunk = upsert_chunk
        self.backend = (backend or setting("MM_QDRANT_BACKEND")).strip().lower()
        if self.backend not in ("edge", "local"):
            raise ValueError(f"MM_QDRANT_BACKEND must be 'edge' or 'local', not {self.backend!r}")
        if self.url:
            self.backend = "server"
        self._client: QdrantClient | None = None
        self._edge: _EdgeBackend | None = None
        #: re-upserts every point of the collection from the source of truth (the lake), called on open when an
        #: unlogged write to it was interrupted (see ``_recover``); returns the number of points written
        self.restore = restore
        self.restored: int | None = None  # points restored by the last open (None: nothing to restore)

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def location(self) -> str:
        return self.url or f"embedded:{self.path}"

    def open(self) -> QdrantStore:
        if self._client is not None or self._edge is not None:
            return self
        if self.backend == "edge" and not self.url:
            return self._open_edge()
        from qdrant_client import QdrantClient

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

    def _busy(self) -> QdrantBusy:
        return QdrantBusy(
            f"embedded Qdrant at {self.path} is in use by another process (a running "
            "ingest?). Wait for it to finish, or run a Qdrant server and set QDRANT_URL."
        )

    def _open_edge(self) -> QdrantStore:
        assert self.path is not None
        deadline = time.monotonic() + self.open_timeout_s
        while True:
            try:
                backup = _migrate_local_mode(self.path)
                if backup is not None:
                    log.warning("Qdrant local-mode storage migrated to qdrant-edge; old files kept in %s", backup)
                break
            except (RuntimeError, BlockingIOError) as exc:
                if isinstance(exc, QdrantBusy) or "already accessed" in str(exc) or isinstance(exc, BlockingIOError):
                    if time.monotonic() > deadline:
                        raise self._busy() from exc
                    time.sleep(0.5)
                    continue
                raise
        self.path.mkdir(parents=True, exist_ok=True)
        edge = _EdgeBackend(self.path)
        while not edge.try_lock():
            if time.monotonic() > deadline:
                raise self._busy()
            time.sleep(0.5)
        self._edge = edge
        try:
            self._recover()
        except BaseException:
            self.close()
            raise
        return self

    def _recover(self) -> None:
        """Restore the collection when its last unlogged write never reached a flush (dirty marker present).

        The shard is never loaded: its files may be torn (qdrant-edge without a WAL is durable only at
        ``flush()``), so it is deleted, recreated with the same named vectors and refilled by ``restore``. The
        marker stays until that has been flushed: a crash during the restore restores again on the next open.
        """
        e = self._edge
        assert e is not None and self.path is not None
        if self.collection not in dirty_collections(self.path):
            return
        if self.restore is None:
            raise QdrantNeedsRestore(
                f"Qdrant collection {self.collection} at {self.path} was interrupted during an unlogged write "
                "(dirty marker present); it is restored from the lake by the next `vector_points` run or "
                "`mm-platform ingest`, or open it with a restore function")
        dims = dirty_marker_dims(self.path, self.collection)
        if not dims:
            try:
                dims = e.vector_dims(self.collection)
            except (OSError, ValueError):  # nothing readable: the restore creates the collection from its points
                dims = {}
        log.warning("Qdrant collection %s: an unlogged write was interrupted; dropping it and restoring its "
                    "points from the lake", self.collection)
        e.delete_collection(self.collection)
        if dims:
            e.create_collection(self.collection, dims)
        try:
            self.restored = int(self.restore(self))
        except BaseException:
            e._dirty.discard(self.collection)  # no HNSW build on close for a half restore: it is redone anyway
            raise
        if e.exists(self.collection):
            e.shard(self.collection).flush()
        clear_dirty_marker(self.path, self.collection)
        log.warning("Qdrant collection %s restored: %d points", self.collection, self.restored)

    def close(self) -> None:
        if self._edge is not None:
            try:
                self._edge.close()
            finally:
                self._edge = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> QdrantStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> Any:
        """The open engine: a ``QdrantClient`` (local mode, server) or the edge backend."""
        if self._edge is not None:
            return self._edge
        if self._client is None:
            raise RuntimeError("QdrantStore is not open")
        return self._client

    @property
    def _e(self) -> _EdgeBackend | None:
        if self._edge is None and self._client is None:
            raise RuntimeError("QdrantStore is not open")
        return self._edge

    # -- collection ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        if (e := self._e) is not None:
            return e.exists(self.collection)
        return self.client.collection_exists(self.collection)

    def vector_dims(self) -> dict[str, int]:
        """Named vectors of the collection and their sizes ({} when it does not exist)."""
        if not self.exists():
            return {}
        if (e := self._e) is not None:
            return e.vector_dims(self.collection)
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
            if (e := self._e) is not None:
                e.delete_collection(self.collection)
            else:
                self.client.delete_collection(self.collection)
        if (e := self._e) is not None:
            e.create_collection(self.collection, wanted)
            return True
        self.client.create_collection(
            self.collection,
            vectors_config={
                name: _models().VectorParams(size=size, distance=_models().Distance.COSINE)
                for name, size in wanted.items()
            },
        )
        if self.url is None:  # payload indexes have no effect in embedded mode
            return True
        for key, schema in (("batch_id", _models().PayloadSchemaType.KEYWORD),
                            ("label", _models().PayloadSchemaType.KEYWORD),
                            ("cluster_id", _models().PayloadSchemaType.INTEGER)):
            self.client.create_payload_index(self.collection, key, field_schema=schema)
        return True

    # -- writes -------------------------------------------------------------------------------------
    def upsert(self, points: Iterable[PointData]) -> int:
        """Upsert points in chunks with ``wait=True``; returns the number written.

        Edge collections without a WAL (``MM_QDRANT_WAL=off``): the whole call is one unlogged write, bracketed
        by the dirty marker and ended by a flush (:meth:`_EdgeBackend.unlogged`), and payload keys equal across
        a chunk are set once per chunk with ``set_payload`` (a nested value costs ~9 us a point to convert);
        the points end up identical to a one-op upsert.
        """
        n = 0
        if (e := self._e) is not None:
            if not e.exists(self.collection):
                raise RuntimeError(f"Qdrant collection {self.collection} does not exist (ensure_collection first)")
            split = not e.wal_enabled(self.collection)
            with e.unlogged(self.collection):
                # building points and update() cannot overlap: a producer/writer thread pair measured slower
                # (points built 41 -> 71 us each while update ran: it holds the GIL for part of its work)
                for chunk in _chunks(points, self.upsert_chunk):
                    for op in _edge_upsert_ops(chunk, split):
                        e.update(self.collection, op)
                    n += len(chunk)
            return n
        for chunk in _chunks(points, self.upsert_chunk):
            structs = [
                _models().PointStruct(
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
        if (e := self._e) is not None:
            with e.unlogged(self.collection, active=bool(groups)):
                for payload, ids in groups.values():
                    for chunk in _chunks(ids, 1000):
                        found = {str(r.id) for r in e.shard(self.collection).retrieve(chunk, False, False)}
                        existing |= found
                        if found:
                            e.update(self.collection, qe.UpdateOperation.set_payload(sorted(found), dict(payload)))
            return len(existing)
        for payload, ids in groups.values():
            for chunk in _chunks(ids, 1000):
                found = {str(p.id) for p in self.client.retrieve(self.collection, ids=chunk, with_payload=False)}
                existing |= found
                if found:
                    self.client.set_payload(self.collection, payload=dict(payload), points=sorted(found), wait=True)
        return len(existing)

    def delete_records(self, record_ids: Sequence[str]) -> None:
        if record_ids and (e := self._e) is not None:
            with e.unlogged(self.collection):
                e.update(self.collection, qe.UpdateOperation.delete_points([point_id(r) for r in record_ids]))
        elif record_ids:
            self.client.delete(
                self.collection,
                points_selector=_models().PointIdsList(points=[point_id(r) for r in record_ids]),
                wait=True,
            )

    # -- reads --------------------------------------------------------------------------------------
    def count(self) -> int:
        if (e := self._e) is not None:
            return e.shard(self.collection).count(qe.CountRequest(exact=True)) if self.exists() else 0
        return self.client.count(self.collection, exact=True).count if self.exists() else 0

    def retrieve(self, record_ids: Sequence[str], with_vectors: bool = False) -> dict[str, Any]:
        if not self.exists():
            return {}
        if (e := self._e) is not None:
            recs = e.shard(self.collection).retrieve([point_id(r) for r in record_ids], True, with_vectors)
            return {r.payload["record_id"]: r for r in recs}
        pts = self.client.retrieve(
            self.collection, ids=[point_id(r) for r in record_ids], with_payload=True, with_vectors=with_vectors
        )
        return {p.payload["record_id"]: p for p in pts}

    def scroll_all(self, with_vectors: bool = False, payload_keys: Sequence[str] | None = None) -> Iterator[Any]:
        """Every point once; ``payload_keys`` limits the payload read to those keys (all when None)."""
        if not self.exists():
            return
        with_payload: Any = list(payload_keys) if payload_keys is not None else True
        if (e := self._e) is not None:
            eoffset = None
            while True:
                recs, eoffset = e.shard(self.collection).scroll(qe.ScrollRequest(
                    offset=eoffset, limit=512, with_payload=with_payload, with_vector=with_vectors))
                yield from recs
                if eoffset is None:
                    return
        offset = None
        while True:
            pts, offset = self.client.scroll(
                self.collection, limit=512, offset=offset, with_payload=with_payload, with_vectors=with_vectors
            )
            yield from pts
            if offset is None:
                return

    def search(self, vector: np.ndarray, using: str, k: int = 10,
               where: Mapping[str, Any] | None = None) -> list[SearchHit]:
        if (e := self._e) is not None:
            pts = e.shard(self.collection).query(qe.QueryRequest(
                limit=k, query=qe.Query.Nearest(_as_buffer(vector), using=using),
                with_payload=True, filter=_edge_filter(where), params=_EDGE_SEARCH_PARAMS))
            return [
                SearchHit(record_id=(p.payload or {}).get("record_id", str(p.id)), score=float(p.score),
                          vector=using, payload=dict(p.payload or {}))
                for p in pts
            ]
        flt = None
        if where:
            flt = _models().Filter(must=[
                _models().FieldCondition(key=key, match=_models().MatchValue(value=value))
                for key, value in where.items()
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


_MISSING = object()


def _shared_payload(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """The keys whose value is equal, and of the same type (``1 == True == 1.0`` in Python, not in JSON), in
    every payload. Not record_id, and not None: a top-level None given to set_payload deletes the key."""
    shared: dict[str, Any] = {}
    n = len(payloads)
    for k, v in payloads[0].items():
        if k == "record_id" or v is None:
            continue
        values = [q.get(k, _MISSING) for q in payloads]
        try:
            if values.count(v) == n and len(set(map(type, values))) == 1:
                shared[k] = v
        except (TypeError, ValueError):  # e.g. an array: kept per point
            continue
    return shared


def _edge_upsert_ops(chunk: list[PointData], split: bool) -> list[Any]:
    """The qdrant-edge operations that upsert ``chunk``: one ``upsert_points``, and with ``split`` a
    ``set_payload`` of the payload keys whose value is the same for every point of the chunk (batch_id,
    fusion, models, modalities: converted once instead of once per point). Upsert replaces a point's payload
    and set_payload merges keys into it, so the stored payload is the same as with one op.

    Vectors go over as memoryviews of float32 rows: qdrant-edge copies them through the buffer protocol (a
    numpy row is read element by element, a list needs ``tolist()``); ids as ``UUID`` objects."""
    payloads = [{**p.payload, "record_id": p.record_id} for p in chunk]
    shared = _shared_payload(payloads) if split and len(chunk) > 1 else {}
    if shared:
        payloads = [{k: v for k, v in q.items() if k not in shared} for q in payloads]
    ids = [point_uuid(p.record_id) for p in chunk]
    ops = [qe.UpdateOperation.upsert_points([
        qe.Point(pid, {k: _as_buffer(v) for k, v in p.vectors.items()}, q)
        for pid, p, q in zip(ids, chunk, payloads, strict=True)
    ])]
    if shared:
        ops.append(qe.UpdateOperation.set_payload(ids, shared))
    return ops


def _as_buffer(v: Any) -> memoryview:
    """A vector as a memoryview of contiguous float32 values, the input qdrant-edge converts fastest."""
    return memoryview(np.ascontiguousarray(v, dtype=np.float32).ravel())


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
