"""What the explorer's routes share: the query modalities, upload and thumbnail limits, row and hit helpers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import duckdb
from fastapi import HTTPException, UploadFile

from mm_platform.lib.storage.lake import execute_restricted

MODALITIES = ("text", "image", "audio", "tabular", "fused", "shared")
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
THUMB_SIZES = (96, 192, 384)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = execute_restricted(con, sql, params or [])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


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
