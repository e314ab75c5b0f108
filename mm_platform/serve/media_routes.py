"""Media: image thumbnails (cached by content hash) and audio files of current records."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

from mm_platform.serve.common import THUMB_SIZES

if TYPE_CHECKING:
    from mm_platform.serve.app import Services


def media_router(services: Services) -> APIRouter:
    router = APIRouter()

    def _media_row(table: str, record_id: str) -> tuple[Path, str]:
        with services.db() as con:
            row = con.execute(f"SELECT uri, sha256 FROM {table} WHERE record_id = ?", [record_id]).fetchone()
        if row is None or not row[0]:
            raise HTTPException(404, "no such media")
        path = Path(row[0].removeprefix("file://"))
        if not path.is_file():
            raise HTTPException(404, "the recorded file is gone")
        return path, row[1]

    @router.get("/media/image/{record_id}")
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

    @router.get("/media/audio/{record_id}")
    def media_audio(record_id: str) -> FileResponse:
        path, _ = _media_row("raw_audio", record_id)
        types = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}
        return FileResponse(path, media_type=types.get(path.suffix.lower(), "application/octet-stream"))

    return router
