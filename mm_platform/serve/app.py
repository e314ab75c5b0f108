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
import io
import json
import os
import secrets
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from fastapi import FastAPI, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from mm_platform.lib.storage.lake import Lake, connect_restricted, execute_restricted
from mm_platform.lib.storage.qdrant import QdrantBusy, QdrantStore
from mm_platform.lib.settings import Paths, setting_float

STATIC = Path(__file__).parent / "static"
MODALITIES = ("text", "image", "audio", "tabular", "fused", "shared")
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
THUMB_SIZES = (96, 192, 384)
TOKEN_COOKIE = "mm_token"


def connect(lake: Lake, duckdb_path: Path) -> duckdb.DuckDBPyConnection:
    """The one place the service opens DuckDB: the restricted connection of ``mm-platform sql`` (the lake's
    views; no file outside the lake, no COPY/ATTACH/INSTALL/LOAD, settings locked)."""
    return connect_restricted(lake, duckdb_path)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = execute_restricted(con, sql, params or [])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


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
        self.holder = StoreHolder(resources.qdrant.store, idle_s=qdrant_idle_s)
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

def _hit_json(h) -> dict[str, Any]:
    p = h.payload
    rid = h.record_id
    return {"record_id": rid, "score": round(float(h.score), 5), "modality": h.vector,
            "label": p.get("label"), "cluster_id": p.get("cluster_id"), "batch_id": p.get("batch_id"),
            "text": p.get("text"), "modalities": p.get("modalities") or [],
            "image": f"/media/image/{rid}" if p.get("image_uri") else None,
            "audio": f"/media/audio/{rid}" if p.get("audio_uri") else None}


def _filters(cluster: str | None, label: str | None, batch: str | None) -> dict[str, Any]:
    where: dict[str, Any] = {}
    if cluster not in (None, ""):
        try:
            where["cluster_id"] = int(cluster)  # type: ignore[arg-type]
        except ValueError:
            raise HTTPException(400, f"cluster must be an integer, got {cluster!r}") from None
    if label:
        where["label"] = label
    if batch:
        where["batch_id"] = batch
    return where


async def _save_upload(upload: UploadFile, kind: str, tmp: Path) -> Path:
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if not data:
        raise HTTPException(400, f"the uploaded {kind} is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(400, f"the uploaded {kind} is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB")
    suffix = Path(upload.filename or "").suffix.lower()
    if not suffix or len(suffix) > 6 or not suffix[1:].isalnum():
        suffix = ".bin"
    if kind == "image":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise HTTPException(400, f"the uploaded file {upload.filename!r} is not a readable image "
                                     f"(PNG, JPEG, WebP, ...): {type(exc).__name__}") from None
    path = tmp / f"query{suffix}"
    path.write_bytes(data)
    return path


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
        from mm_platform.cli import status_report

        return json.loads(json.dumps(status_report(services.paths, qdrant=services.holder.store), default=str))

    @app.get("/api/facets")
    def facets() -> dict[str, Any]:
        with services.db() as con:
            labels = [r[0] for r in con.execute(
                "SELECT DISTINCT label FROM aligned_records WHERE label IS NOT NULL ORDER BY 1").fetchall()]
            batches = [r[0] for r in con.execute("SELECT DISTINCT batch_id FROM aligned_records ORDER BY 1").fetchall()]
            clusters = _rows(con, "SELECT cluster_id, name, size FROM cluster_summary ORDER BY cluster_id")
        return {"labels": labels, "batches": batches, "clusters": clusters, "modalities": list(MODALITIES)}

    @app.api_route("/api/search", methods=["GET", "POST"])
    async def api_search(request: Request) -> dict[str, Any]:
        from mm_platform.lib.search import SearchError, search

        params: dict[str, Any] = dict(request.query_params)
        uploads: dict[str, UploadFile] = {}
        if request.method == "POST":
            ctype = request.headers.get("content-type", "")
            if ctype.startswith("application/json"):
                try:
                    body = await request.json()
                except ValueError:
                    raise HTTPException(400, "the request body is not valid JSON") from None
                if not isinstance(body, dict):
                    raise HTTPException(400, "the request body must be a JSON object")
                params.update(body)
            else:
                form = await request.form()
                for key, value in form.multi_items():
                    if hasattr(value, "read"):
                        if getattr(value, "filename", None):
                            uploads[key] = value  # type: ignore[assignment]
                    elif value != "":
                        params[key] = value
        modality = params.get("modality") or None
        if modality is not None and modality not in MODALITIES:
            raise HTTPException(400, f"modality must be one of {', '.join(MODALITIES)}")
        try:
            k = int(params.get("k", 12))
        except (TypeError, ValueError):
            raise HTTPException(400, "k must be an integer") from None
        if not 1 <= k <= 200:
            raise HTTPException(400, "k must be between 1 and 200")
        where = _filters(params.get("cluster"), params.get("label"), params.get("batch"))
        fields = params.get("fields")
        if isinstance(fields, dict):
            fields = json.dumps(fields)
        text = params.get("text")
        unknown = set(uploads) - {"image", "audio"}
        if unknown:
            raise HTTPException(400, f"unexpected upload field(s) {sorted(unknown)}: use image or audio")
        given = [n for n, v in (("text", text), ("fields", fields)) if v] + sorted(uploads)
        if len(given) != 1:
            raise HTTPException(400, "give exactly one query: text, fields (JSON object), an image or an audio file"
                                + (f" (got {', '.join(given)})" if given else ""))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mm-serve-") as tmp:
            image = audio = None
            if "image" in uploads:
                image = await _save_upload(uploads["image"], "image", Path(tmp))
            if "audio" in uploads:
                audio = await _save_upload(uploads["audio"], "audio", Path(tmp))
            try:
                state = services.tabular_state() if fields else None
                shared = services.shared_space()
                fetch = min(max(k * 10, 100), 2000) if where else k
                with services.holder.store() as store:
                    hits = search(store, services.res.encoders.encoders, text=text or None, image=image,
                                  audio=audio, fields=fields or None, tabular_state=state, modality=modality,
                                  k=fetch, shared=shared)
            except SearchError as exc:
                msg = str(exc)
                for key, up in uploads.items():  # name the user's file, not our temp copy
                    msg = msg.replace(str(image if key == "image" else audio), repr(up.filename or key))
                raise HTTPException(400, msg) from None
        if where:
            hits = [h for h in hits if all(h.payload.get(key) == v for key, v in where.items())]
        hits = hits[:k]
        return {"results": [_hit_json(h) for h in hits], "took_ms": round((time.perf_counter() - t0) * 1000, 1),
                "filters": where}

    @app.get("/api/clusters")
    def clusters() -> dict[str, Any]:
        with services.db() as con:
            rows = _rows(con, """
                SELECT cluster_id, name, size, representative_record_ids, top_terms, label_counts_json,
                       agreement_json, text_coverage, image_coverage, audio_coverage, tabular_coverage,
                       n_outliers, algorithm, name_source
                FROM cluster_summary ORDER BY size DESC, cluster_id""")
            reps = sorted({r for row in rows for r in (row["representative_record_ids"] or [])})
            media: dict[str, dict[str, Any]] = {}
            if reps:
                for rid, text, has_img, has_aud in con.execute("""
                        SELECT a.record_id, t.text, i.record_id IS NOT NULL, au.record_id IS NOT NULL
                        FROM aligned_records a
                        LEFT JOIN raw_text t USING (record_id)
                        LEFT JOIN raw_images i USING (record_id)
                        LEFT JOIN raw_audio au USING (record_id)
                        WHERE a.record_id IN (SELECT unnest(?))""", [reps]).fetchall():
                    media[rid] = {"record_id": rid, "text": (text or "")[:160] or None,
                                  "image": f"/media/image/{rid}" if has_img else None,
                                  "audio": f"/media/audio/{rid}" if has_aud else None}
        for row in rows:
            row["label_counts"] = json.loads(row.pop("label_counts_json") or "{}")
            row["agreement"] = json.loads(row.pop("agreement_json") or "{}")
            row["representatives"] = [media.get(r, {"record_id": r}) for r in row["representative_record_ids"] or []]
        return {"clusters": rows}

    @app.get("/api/map/meta")
    def map_meta() -> dict[str, Any]:
        return services.map_blob()[1]

    @app.get("/api/map/points")
    def map_points() -> Response:
        """Little-endian: uint32 n, then float32 x[n], float32 y[n], int32 cluster[n], int32 label index[n]."""
        return Response(services.map_blob()[0], media_type="application/octet-stream")

    @app.get("/api/record/{record_id}")
    def record(record_id: str) -> dict[str, Any]:
        with services.db() as con:
            rec = _rows(con, "SELECT * FROM aligned_records WHERE record_id = ?", [record_id])
            if not rec:
                raise HTTPException(404, f"no current record {record_id!r}")
            out: dict[str, Any] = {k: v for k, v in rec[0].items()}
            text = con.execute("SELECT text FROM raw_text WHERE record_id = ?", [record_id]).fetchone()
            out["text"] = text[0] if text else None
            img = _rows(con, "SELECT width, height, format, sha256, n_bytes FROM raw_images WHERE record_id = ?",
                        [record_id])
            out["image"] = {**img[0], "url": f"/media/image/{record_id}"} if img else None
            aud = _rows(con, "SELECT format, sample_rate, channels, duration_s, sha256 FROM raw_audio "
                             "WHERE record_id = ?", [record_id])
            out["audio"] = {**aud[0], "url": f"/media/audio/{record_id}"} if aud else None
            tab = con.execute("SELECT values_json FROM raw_tabular WHERE record_id = ?", [record_id]).fetchone()
            out["fields"] = json.loads(tab[0]) if tab and tab[0] else None
            cl = _rows(con, "SELECT c.cluster_id, c.algorithm, c.distance_to_centroid, c.is_outlier, s.name "
                            "FROM current_clusters c LEFT JOIN cluster_summary s USING (cluster_id) WHERE c.record_id = ?",
                       [record_id])
            out["cluster"] = cl[0] if cl else None
            prov = []
            for m in ("text", "image", "audio", "tabular"):
                prov += _rows(con, f"SELECT '{m}' AS modality, model, model_version, dim, batch_id "
                                   f"FROM {m}_embeddings WHERE record_id = ?", [record_id])
            out["embeddings"] = prov
            out["manifest"] = (_rows(con, "SELECT batch_id, line_number, manifest_sha256, landed_at, ingested_at "
                                          "FROM raw_records WHERE record_id = ? AND batch_id = ? LIMIT 1",
                                     [record_id, out["batch_id"]]) or [None])[0]
        out["neighbours"] = {}
        with services.holder.store() as store:
            point = store.retrieve([record_id], with_vectors=True).get(record_id)
            if point is not None:
                vectors = point.vector if isinstance(point.vector, dict) else {}
                for name in ("fused", "text", "image", "audio", "tabular"):
                    if name in vectors:
                        hits = [h for h in store.search(np.asarray(vectors[name]), using=name, k=7)
                                if h.record_id != record_id][:6]
                        out["neighbours"][name] = [_hit_json(h) for h in hits]
        return json.loads(json.dumps(out, default=str))

    # media ------------------------------------------------------------------------------------------
    def _media_row(table: str, record_id: str) -> tuple[Path, str]:
        with services.db() as con:
            row = con.execute(f"SELECT uri, sha256 FROM {table} WHERE record_id = ?", [record_id]).fetchone()
        if row is None or not row[0]:
            raise HTTPException(404, "no such media")
        path = Path(row[0].removeprefix("file://"))
        if not path.is_file():
            raise HTTPException(404, "the recorded file is gone")
        return path, row[1]

    @app.get("/media/image/{record_id}")
    def media_image(record_id: str, size: int = 192) -> Response:
        if size not in THUMB_SIZES:
            raise HTTPException(400, f"size must be one of {THUMB_SIZES}")
        path, sha = _media_row("raw_images", record_id)
        cached = services.thumb_dir / f"{sha}_{size}.jpg"
        if not cached.is_file():
            from PIL import Image

            cached.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((size, size))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=85)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(cached)
        return FileResponse(cached, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/media/audio/{record_id}")
    def media_audio(record_id: str) -> FileResponse:
        path, _ = _media_row("raw_audio", record_id)
        types = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}
        return FileResponse(path, media_type=types.get(path.suffix.lower(), "application/octet-stream"))

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
