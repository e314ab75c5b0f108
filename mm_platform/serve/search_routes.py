"""The search API: one query (text, fields, an uploaded image or audio clip) in any modality, with filters."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request, UploadFile

from mm_platform.serve.common import MODALITIES, _filters, _hit_json, _save_upload

if TYPE_CHECKING:
    from mm_platform.serve.app import Services


def search_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.api_route("/api/search", methods=["GET", "POST"])
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

    return router
