"""Browsing: facets, the cluster gallery, the embedding map and record pages."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from mm_platform.serve.common import MODALITIES, _hit_json, _rows

if TYPE_CHECKING:
    from mm_platform.serve.app import Services


def browse_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.get("/api/facets")
    def facets() -> dict[str, Any]:
        with services.db() as con:
            labels = [r[0] for r in con.execute(
                "SELECT DISTINCT label FROM aligned_records WHERE label IS NOT NULL ORDER BY 1").fetchall()]
            batches = [r[0] for r in con.execute("SELECT DISTINCT batch_id FROM aligned_records ORDER BY 1").fetchall()]
            clusters = _rows(con, "SELECT cluster_id, name, size FROM cluster_summary ORDER BY cluster_id")
        return {"labels": labels, "batches": batches, "clusters": clusters, "modalities": list(MODALITIES)}

    @router.get("/api/clusters")
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

    @router.get("/api/map/meta")
    def map_meta() -> dict[str, Any]:
        return services.map_blob()[1]

    @router.get("/api/map/points")
    def map_points() -> Response:
        """Little-endian: uint32 n, then float32 x[n], float32 y[n], int32 cluster[n], int32 label index[n]."""
        return Response(services.map_blob()[0], media_type="application/octet-stream")

    @router.get("/api/record/{record_id}")
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

    return router
