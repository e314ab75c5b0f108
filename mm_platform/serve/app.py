"""The explorer service: JSON API + pages for search, the cluster gallery, the embedding map and records.

One process holds the resources (encoders load lazily, once, on the first query that needs them). Choices:

- DuckDB: every query goes through :func:`connect` (one read-only connection per request, parameterised
  SQL only).
- Qdrant embedded mode allows one process at a time. The service holds the store open while it is being
  used and closes it after ``MM_SERVE_QDRANT_IDLE_S`` seconds without a request (default 2), so an ingest
  (which retries opening for up to 120 s) gets it between requests; a request arriving while an ingest holds
  it waits up to 5 s and then answers 503 with the reason. With ``QDRANT_URL`` (a server) nothing is released.
- Media: only files recorded in ``raw_images`` / ``raw_audio`` are served, looked up by record id; a request
  never names a path.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from mm_platform.lib.storage.lake import Lake, connect_restricted
from mm_platform.lib.storage.qdrant import QdrantBusy, QdrantStore
from mm_platform.lib.settings import Paths, setting_float
from mm_platform.serve.browse_routes import browse_router
from mm_platform.serve.common import MODALITIES, _rows  # noqa: F401  (re-exported)
from mm_platform.serve.media_routes import media_router
from mm_platform.serve.search_routes import search_router

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "mm_token"


def connect(lake: Lake, duckdb_path: Path) -> duckdb.DuckDBPyConnection:
    """The one place the service opens DuckDB: the restricted connection of ``mm-platform sql`` (the lake's
    views; no file outside the lake, no COPY/ATTACH/INSTALL/LOAD, settings locked)."""
    return connect_restricted(lake, duckdb_path)


class StoreHolder:
    """The Qdrant store, opened on demand and closed after ``idle_s`` without use (see module docstring)."""

    def __init__(self, factory, idle_s: float = 2.0):
        self._factory = factory
        self.idle_s = idle_s
        self._lock = threading.RLock()
        self._store: QdrantStore | None = None
        self._last = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reaper, daemon=True, name="qdrant-release")
        self._thread.start()

    @contextlib.contextmanager
    def store(self) -> Iterator[QdrantStore]:
        with self._lock:
            if self._store is None:
                store = self._factory()
                store.open_timeout_s = min(store.open_timeout_s, 5.0)
                self._store = store.open()
            try:
                yield self._store
            finally:
                self._last = time.monotonic()

    def release(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _reaper(self) -> None:
        while not self._stop.wait(min(self.idle_s, 0.5) or 0.5):
            if self._store is not None and self.idle_s >= 0 and time.monotonic() - self._last > self.idle_s:
                if self._lock.acquire(blocking=False):
                    try:
                        if time.monotonic() - self._last > self.idle_s:
                            self.release()
                    finally:
                        self._lock.release()

    def close(self) -> None:
        self._stop.set()
        self.release()


class Services:
    """What the app needs: paths, the lake, encoders (lazy), the Qdrant holder, caches."""

    def __init__(self, paths: Paths, resources: Any, qdrant_idle_s: float = 2.0):
        self.paths = paths
        self.res = resources
        self.lake: Lake = resources.warehouse.lake
        # restored from the lake on open if an unlogged write to it was interrupted
        self.holder = StoreHolder(lambda: resources.qdrant.store(self.lake), idle_s=qdrant_idle_s)
        self.thumb_dir = paths.data_dir / "serve_cache" / "thumbs"
        self._cache: dict[str, tuple[Any, Any]] = {}
        self._cache_lock = threading.Lock()

    def _cached(self, name: str, key: Any, build):
        with self._cache_lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] == key:
                return hit[1]
        value = build()
        with self._cache_lock:
            self._cache[name] = (key, value)
        return value

    def _mtime(self, *tables: str) -> tuple:
        return tuple(self.lake.version(t) or 0 for t in tables)  # a Delta version changes with every commit

    @contextlib.contextmanager
    def db(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of one restricted connection, rebuilt when the warehouse's views change (a new table
        column, say); the views read the lake's files at query time, so new batches show without a rebuild."""
        wh = self.paths.duckdb_path
        key = wh.stat().st_mtime_ns if wh.exists() else 0
        base = self._cached("duckdb", key, lambda: connect(self.lake, wh))
        cur = base.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def shared_space(self):
        from mm_platform.lib.search import SharedSpace

        return self._cached("shared", self._mtime("shared_embeddings", "alignment_models"),
                            lambda: SharedSpace.from_lake(self.lake))

    def tabular_state(self):
        from mm_platform.lib.storage.model_files import tabular_state_dir
        from mm_platform.lib.features.tabular import load_state

        d = tabular_state_dir(self.lake)
        key = max((p.stat().st_mtime_ns for p in d.rglob("*")), default=0) if d.exists() else 0
        return self._cached("tabular", key, lambda: load_state(d))

    def map_blob(self) -> tuple[bytes, dict[str, Any]]:
        return self._cached("map", self._mtime("embedding_map"), self._build_map)

    def _build_map(self) -> tuple[bytes, dict[str, Any]]:
        with self.db() as con:
            rows = con.execute(
                "SELECT record_id, x, y, coalesce(cluster_id, -1), label, method, space FROM embedding_map "
                "ORDER BY record_id").fetchall()
        labels = sorted({r[4] for r in rows if r[4] is not None})
        index = {lab: i for i, lab in enumerate(labels)}
        n = len(rows)
        xs = np.array([r[1] for r in rows], dtype=np.float32)
        ys = np.array([r[2] for r in rows], dtype=np.float32)
        cl = np.array([r[3] for r in rows], dtype=np.int32)
        lb = np.array([index.get(r[4], -1) for r in rows], dtype=np.int32)
        blob = struct.pack("<I", n) + xs.tobytes() + ys.tobytes() + cl.tobytes() + lb.tobytes()
        meta = {"n": n, "record_ids": [r[0] for r in rows], "labels": labels,
                "clusters": sorted({int(c) for c in cl.tolist()}),
                "method": rows[0][5] if rows else None, "space": rows[0][6] if rows else None}
        return blob, meta


# -- token ------------------------------------------------------------------------------------------

def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        raise SystemExit(f"refusing to bind {host} without MM_SERVE_TOKEN set (anyone who can reach the port "
                         "could read the corpus): set MM_SERVE_TOKEN, or bind 127.0.0.1")


def _authorised(request: Request, token: str) -> tuple[bool, bool]:
    """(allowed, came by ?token=)."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and secrets.compare_digest(auth[7:].strip(), token):
        return True, False
    q = request.query_params.get("token")
    if q is not None and secrets.compare_digest(q, token):
        return True, True
    c = request.cookies.get(TOKEN_COOKIE)
    return (c is not None and secrets.compare_digest(c, token)), False


# -- the app ----------------------------------------------------------------------------------------

def create_app(services: Services, token: str | None = None) -> FastAPI:
    app = FastAPI(title="mm-platform explorer", docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.services = services

    if token:
        @app.middleware("http")
        async def require_token(request: Request, call_next):
            ok, by_query = _authorised(request, token)
            if not ok:
                return JSONResponse({"error": "missing or wrong token (Authorization: Bearer, ?token= or cookie)"},
                                    status_code=401)
            response = await call_next(request)
            if by_query:
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(QdrantBusy)
    async def busy(request: Request, exc: QdrantBusy):
        return JSONResponse({"error": str(exc)}, status_code=503)

    # pages ------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(), headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        allowed = {p.name: p for p in STATIC.iterdir() if p.is_file()}
        if name not in allowed:
            raise HTTPException(404, "not found")
        return FileResponse(allowed[name])

    # API --------------------------------------------------------------------------------------------
    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "data_dir": str(services.paths.data_dir), "pid": os.getpid()}

    @app.get("/api/status")
    def status() -> dict[str, Any]:
        """What `mm-platform status --json` prints (the CLI asks here first when the service runs)."""
        from mm_platform.cli_read import status_report

        return json.loads(json.dumps(status_report(services.paths, qdrant=services.holder.store), default=str))

    for router in (browse_router(services), search_router(services), media_router(services)):
        app.include_router(router)

    @app.on_event("shutdown")
    def _shutdown() -> None:
        services.holder.close()

    return app


def _warm(encoders) -> None:
    with contextlib.suppress(Exception):  # a model that cannot load says so on the first query instead
        encoders.text().encode(["warm up"])


@contextlib.contextmanager
def open_services(paths: Paths | None = None, qdrant_idle_s: float | None = None,
                  warm: bool = False) -> Iterator[Services]:
    """The code location's resources (as a Dagster run gets them) wrapped for the service."""
    import dagster as dg

    from mm_platform.defs.resources import build_resources

    paths = paths or Paths.from_env()
    idle = setting_float("MM_SERVE_QDRANT_IDLE_S") if qdrant_idle_s is None else qdrant_idle_s
    with dg.build_resources(build_resources()) as res:
        services = Services(paths, res, qdrant_idle_s=idle)
        if warm:  # the first text query should not pay for the model load (EncoderSet is thread-safe)
            threading.Thread(target=_warm, args=(res.encoders.encoders,), daemon=True, name="warmup").start()
        try:
            yield services
        finally:
            services.holder.close()
