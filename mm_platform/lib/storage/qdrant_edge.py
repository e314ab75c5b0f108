"""The embedded qdrant-edge backend (the real Qdrant engine in process, HNSW, int8 quantization) and the
one-time migration of a qdrant-client local-mode store into it."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from mm_platform.lib.settings import setting


log = logging.getLogger(__name__)


class QdrantBusy(RuntimeError):
    """The embedded Qdrant storage is held by another process."""


class QdrantNeedsRestore(RuntimeError):
    """An unlogged write to the collection was interrupted and the store was opened without a restore."""


EDGE_MARKER = "mm_edge_store.json"  # marks a storage dir written by the edge backend
_LOCK_FILE = ".mm_edge.lock"
#: ``<path>/<collection>`` + this: a collection without a write-ahead log is being written (unflushed)
DIRTY_SUFFIX = ".unflushed"
#: ``MM_TEST_CRASH_AT`` value (tests only): SIGKILL right after the first engine update of an unlogged write
CRASH_IN_UNLOGGED_WRITE = "qdrant_unlogged_write"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dirty_marker(path: Path, collection: str, dims: Mapping[str, int]) -> Path:
    """Durably mark ``collection`` as written without a WAL: the file and its directory entry are fsync'd
    before the write starts, so after any crash the marker is on disk whenever the write may have begun. It
    holds the collection's named vectors, so a restore can recreate it even if the shard's files are gone."""
    marker = path / f"{collection}{DIRTY_SUFFIX}"
    with open(marker, "w") as f:
        f.write(json.dumps({"collection": collection, "vectors": dict(dims), "pid": os.getpid(),
                            "since": time.time()}))
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(path)
    return marker


def dirty_collections(path: Path) -> list[str]:
    """Collections of the storage dir whose last unlogged write never reached a flush."""
    if not path.is_dir():
        return []
    return sorted(p.name[: -len(DIRTY_SUFFIX)] for p in path.iterdir() if p.name.endswith(DIRTY_SUFFIX))


def dirty_marker_dims(path: Path, collection: str) -> dict[str, int]:
    """The named vectors recorded in the collection's dirty marker ({} when absent or unreadable)."""
    try:
        vectors = json.loads((path / f"{collection}{DIRTY_SUFFIX}").read_text()).get("vectors") or {}
        return {str(k): int(v) for k, v in vectors.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def clear_dirty_marker(path: Path, collection: str) -> None:
    (path / f"{collection}{DIRTY_SUFFIX}").unlink(missing_ok=True)
    _fsync_dir(path)


def is_local_mode_layout(path: Path) -> bool:
    """True for a storage dir written by qdrant-client local mode (``meta.json`` + ``collection/``)."""
    return (path / "meta.json").is_file() and not (path / EDGE_MARKER).exists()


class _EdgeBackend:
    """One ``EdgeShard`` per collection under ``<path>/<collection>``, held exclusively via a file lock.

    An EdgeShard's WAL refuses a second opener (``WouldBlock``); the whole storage dir is locked with
    ``flock`` so the second process gets QdrantBusy (after retrying) like in local mode. Writes go to the
    WAL; ``close`` optimises (builds HNSW for segments over the indexing threshold) when something was
    written, flushes and releases the lock.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock_fd: int | None = None
        self._shards: dict[str, Any] = {}
        self._dirty: set[str] = set()
        self._wal: dict[str, bool] = {}
        self._failed: set[str] = set()  # collections whose last engine update raised

    def try_lock(self) -> bool:
        fd = os.open(self.path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        (self.path / EDGE_MARKER).write_text(json.dumps({"backend": "qdrant-edge"}))
        return True

    def close(self) -> None:
        try:
            for name, shard in self._shards.items():
                with self.unlogged(name, active=name in self._dirty):
                    if name in self._dirty:
                        try:
                            shard.optimize()
                        except BaseException:
                            self._failed.add(name)  # e.g. no disk for the optimizer's copy: not trusted
                            raise
                    shard.flush()
                shard.close()
        finally:
            self._shards.clear()
            self._dirty.clear()
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    def _dir(self, collection: str) -> Path:
        return self.path / collection

    def exists(self, collection: str) -> bool:
        return collection in self._shards or (self._dir(collection) / "edge_config.json").is_file()

    def wal_enabled(self, collection: str) -> bool:
        """Whether the collection's shard keeps a write-ahead log (fixed by qdrant-edge when it is created)."""
        if collection not in self._wal:
            cfg = json.loads((self._dir(collection) / "edge_config.json").read_text())
            self._wal[collection] = cfg.get("wal_enabled") is not False
        return self._wal[collection]

    @contextmanager
    def unlogged(self, collection: str, active: bool = True) -> Iterator[None]:
        """Bracket writes to a collection without a WAL: durable dirty marker, the writes, ``flush()``, marker
        removed. A marker left behind (the process died, or the engine itself failed during the write) makes
        the next open drop the collection and restore it from the lake. An exception raised between engine
        calls (bad input from the caller's iterator, SIGTERM/KeyboardInterrupt: Python runs signal handlers
        only after ``update`` returns) leaves the shard consistent: it is flushed and the marker removed, as a
        logged partial write would be. A marker that was already there (a restore in progress) is left to its
        owner."""
        if not active or not self.exists(collection) or self.wal_enabled(collection):
            yield
            return
        mine = not (self.path / f"{collection}{DIRTY_SUFFIX}").exists()
        if mine:
            write_dirty_marker(self.path, collection, self.vector_dims(collection))
        self._failed.discard(collection)
        try:
            yield
        except BaseException:
            if collection not in self._failed:
                self.shard(collection).flush()
                if mine:
                    clear_dirty_marker(self.path, collection)
            raise
        self.shard(collection).flush()
        if mine:
            clear_dirty_marker(self.path, collection)

    def shard(self, collection: str) -> Any:
        if collection not in self._shards:
            self._shards[collection] = qe.EdgeShard.load(str(self._dir(collection)))
        return self._shards[collection]

    def vector_dims(self, collection: str) -> dict[str, int]:
        if not self.exists(collection):
            return {}
        cfg = json.loads((self._dir(collection) / "edge_config.json").read_text())
        return {name: int(p["size"]) for name, p in (cfg.get("vectors") or {}).items()}

    def delete_collection(self, collection: str) -> None:
        shard = self._shards.pop(collection, None)
        self._dirty.discard(collection)
        self._wal.pop(collection, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self._dir(collection), ignore_errors=True)

    def create_collection(self, collection: str, dims: Mapping[str, int]) -> None:
        cfg = qe.EdgeConfig(vectors={
            name: qe.EdgeVectorParams(size=int(size), distance=qe.Distance.Cosine) for name, size in dims.items()
        }, quantization_config=_edge_quantization(), wal_enabled=_edge_wal())
        wal = bool(cfg.wal_enabled)
        mine = not wal and not (self.path / f"{collection}{DIRTY_SUFFIX}").exists()
        if mine:  # a crash before the first flush leaves a marker: the half-made collection is made again
            write_dirty_marker(self.path, collection, dims)
        shard = self._shards[collection] = qe.EdgeShard.create(str(self._dir(collection)), cfg)
        self._wal[collection] = wal
        # payload indexes: filtered HNSW search needs them (without, recall@10 under a 10% batch_id
        # filter fell to ~0.2 at 20k points); with them Qdrant plans exact scans or filtered graph links
        for key, schema in (("batch_id", qe.PayloadSchemaType.Keyword), ("label", qe.PayloadSchemaType.Keyword),
                            ("cluster_id", qe.PayloadSchemaType.Integer)):
            shard.update(qe.UpdateOperation.create_field_index(key, schema))
        shard.flush()
        if mine:
            clear_dirty_marker(self.path, collection)

    def update(self, collection: str, op: Any) -> None:
        self._dirty.add(collection)
        try:
            self.shard(collection).update(op)
        except BaseException:
            self._failed.add(collection)  # the engine failed mid-write: its state is not trusted (marker kept)
            raise
        if setting("MM_TEST_CRASH_AT") == CRASH_IN_UNLOGGED_WRITE and not self.wal_enabled(collection):
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die inside an unlogged write, before its flush


#: int8 candidates, then the best ``oversampling x k`` rescored on the original vectors: recall@10 1.000 against
#: 0.942 without rescoring at 20k x 1,928 (docs-notes/store2.md); a collection without quantization ignores it
_EDGE_SEARCH_PARAMS = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=2.0))


def _edge_quantization() -> Any:
    """The quantization of a new edge collection (``MM_QDRANT_QUANTIZATION``): int8 scalar quantization kept in
    RAM (HNSW built on it: ~5x faster index build, search on 1 byte per dimension) or None."""
    mode = setting("MM_QDRANT_QUANTIZATION").strip().lower()
    if mode == "int8":
        return qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True)
    if mode in ("none", "off", ""):
        return None
    raise ValueError(f"MM_QDRANT_QUANTIZATION must be 'int8' or 'none', not {mode!r}")


def _edge_wal() -> bool:
    """Whether a new edge collection keeps a write-ahead log (``MM_QDRANT_WAL``, fixed for its lifetime)."""
    mode = setting("MM_QDRANT_WAL").strip().lower()
    if mode in ("on", "true", "1"):
        return True
    if mode in ("off", "false", "0", ""):
        return False
    raise ValueError(f"MM_QDRANT_WAL must be 'on' or 'off', not {mode!r}")


def _edge_filter(where: Mapping[str, Any] | None) -> Any:
    if not where:
        return None
    return qe.Filter(must=[qe.FieldCondition(key=k, match=qe.MatchValue(v)) for k, v in where.items()])


def _migrate_local_mode(path: Path) -> Path | None:
    """Copy every collection of a local-mode storage dir into an edge store at the same path.

    The edge store is built in ``<path>.edge-migrating`` (removed and redone if a previous attempt died),
    then the old dir is renamed to ``<path>.local-backup-<utc time>`` and the new one takes its place.
    Returns the backup path (None when there was nothing to migrate).
    """
    if not is_local_mode_layout(path):
        return None
    from qdrant_client import QdrantClient

    tmp = path.with_name(path.name + ".edge-migrating")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    client = QdrantClient(path=str(path))  # raises while another process holds the old store
    backend = _EdgeBackend(tmp)
    try:
        if not backend.try_lock():
            raise QdrantBusy(f"{tmp} is locked by another migration")
        for coll in client.get_collections().collections:
            name = coll.name
            params = client.get_collection(name).config.params.vectors
            dims = ({k: int(p.size) for k, p in params.items()} if isinstance(params, Mapping)
                    else {"": int(params.size)})
            backend.create_collection(name, dims)
            n_old = client.count(name, exact=True).count
            offset, n = None, 0
            while True:
                pts, offset = client.scroll(name, limit=512, offset=offset, with_payload=True, with_vectors=True)
                if pts:
                    backend.update(name, qe.UpdateOperation.upsert_points([
                        qe.Point(str(p.id), p.vector if isinstance(p.vector, dict) else {"": p.vector},
                                 dict(p.payload or {}))
                        for p in pts
                    ]))
                    n += len(pts)
                if offset is None:
                    break
            n_new = backend.shard(name).count(qe.CountRequest(exact=True))
            if not n_old == n == n_new:
                raise RuntimeError(f"migration of {name} copied {n}/{n_new} of {n_old} points; old store kept")
            log.warning("migrated %d points of Qdrant collection %s from local mode to qdrant-edge", n, name)
    finally:
        backend.close()
        client.close()
    backup = path.with_name(f"{path.name}.local-backup-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
    path.rename(backup)
    tmp.rename(path)
    return backup
