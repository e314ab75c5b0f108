"""The explorer's JSON API and media routes, through FastAPI's TestClient, over a real ingested corpus."""

from __future__ import annotations

import io
import struct
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mm_platform.lib.storage.qdrant import QdrantStore
from mm_platform.serve.app import check_bind, create_app, open_services
from mm_platform.serve.discovery import running_service, write_discovery
from mm_platform_tests.serve.corpus import build_corpus, corpus_environ


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    env = build_corpus(tmp_path_factory.mktemp("explorer"))
    with corpus_environ(env) as paths, open_services(paths, qdrant_idle_s=0.3) as services:
        yield services


@pytest.fixture(scope="module")
def client(served):
    return TestClient(create_app(served))


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buf, "PNG")
    return buf.getvalue()


def test_text_search_returns_records_with_media(client):
    r = client.post("/api/search", data={"text": "waterproof backpack for rain", "k": "5"})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) == 5
    assert all(h["modality"] == "text" for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    with_image = [h for h in hits if h["image"]]
    assert with_image, hits
    thumb = client.get(with_image[0]["image"], params={"size": 96})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 96


def test_filters_and_cross_modal(client):
    label = client.get("/api/facets").json()["labels"][0]
    hits = client.post("/api/search", json={"text": "something useful", "label": label, "k": 50}).json()["results"]
    assert hits and {h["label"] for h in hits} == {label}
    cluster = client.get("/api/clusters").json()["clusters"][0]["cluster_id"]
    hits = client.get("/api/search", params={"text": "tea", "cluster": cluster}).json()["results"]
    assert hits and {h["cluster_id"] for h in hits} == {cluster}
    fused = client.post("/api/search", json={"text": "tea", "modality": "fused", "k": 3}).json()["results"]
    assert [h["modality"] for h in fused] == ["fused"] * 3
    fields = client.post("/api/search", json={"fields": {"price": 25, "material": "steel"}, "k": 3})
    assert fields.status_code == 200 and fields.json()["results"][0]["modality"] == "tabular"


def test_image_upload_search(client):
    r = client.post("/api/search", files={"image": ("query.png", _png(), "image/png")}, data={"k": "4"})
    assert r.status_code == 200, r.text
    assert [h["modality"] for h in r.json()["results"]] == ["image"] * 4


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"files": {"image": ("x.png", b"not an image", "image/png")}}, "not a readable image"),
    ({"files": {"audio": ("x.wav", b"RIFF garbage", "audio/wav")}}, "'x.wav'"),
    ({"files": {"image": ("x.png", b"", "image/png")}}, "empty"),
    ({"data": {}}, "exactly one query"),
    ({"data": {"text": "a", "fields": '{"price": 1}'}}, "exactly one query"),
    ({"data": {"text": "a", "modality": "smell"}}, "modality must be one of"),
    ({"data": {"text": "a", "k": "zero"}}, "k must be an integer"),
    ({"data": {"text": "a", "cluster": "x"}}, "cluster must be an integer"),
    ({"data": {"fields": "{not json"}}, "JSON object"),
    ({"files": {"other": ("x.bin", b"123", "application/octet-stream")}}, "unexpected upload"),
])
def test_bad_queries_are_400_with_a_reason(client, kwargs, needle):
    r = client.post("/api/search", **kwargs)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    assert "/tmp/mm-serve-" not in r.json()["error"]


@pytest.mark.parametrize("url", [
    "/media/image/..%2F..%2F..%2Fetc%2Fpasswd", "/media/audio/%2Fetc%2Fpasswd", "/media/image/no-such-record",
    "/media/audio/../../etc/passwd", "/static/..%2Fapp.py", "/static/app.py", "/media/image/%00",
])
def test_media_and_static_never_serve_arbitrary_paths(client, url):
    assert client.get(url).status_code == 404


def test_thumbnails_are_cached_and_sizes_bounded(client, served):
    rid = client.get("/api/map/meta").json()["record_ids"][0]
    assert client.get(f"/media/image/{rid}", params={"size": 5000}).status_code == 400
    assert client.get(f"/media/image/{rid}", params={"size": 384}).status_code == 200
    assert list(served.thumb_dir.glob("*_384.jpg"))
    audio = client.get(f"/media/audio/{rid}")
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"


def test_map_blob_matches_the_stored_coordinates(client, served):
    meta = client.get("/api/map/meta").json()
    blob = client.get("/api/map/points").content
    n = struct.unpack_from("<I", blob)[0]
    assert n == meta["n"] == len(meta["record_ids"]) > 0 and len(blob) == 4 + 16 * n
    with served.db() as con:
        x0 = con.execute("SELECT x FROM embedding_map WHERE record_id = ?", [meta["record_ids"][0]]).fetchone()[0]
    assert struct.unpack_from("<f", blob, 4)[0] == pytest.approx(x0, rel=1e-5)


def test_clusters_and_record(client):
    clusters = client.get("/api/clusters").json()["clusters"]
    assert clusters and all(c["representatives"] and c["size"] > 0 for c in clusters)
    assert any(r.get("image") for c in clusters for r in c["representatives"])
    rid = clusters[0]["representative_record_ids"][0]
    rec = client.get(f"/api/record/{rid}").json()
    assert rec["record_id"] == rid and rec["text"] and rec["image"]["url"] and rec["audio"]["url"]
    assert rec["cluster"]["cluster_id"] == clusters[0]["cluster_id"]
    assert rec["manifest"]["line_number"] >= 1 and {e["modality"] for e in rec["embeddings"]} >= {"text", "image"}
    assert {"fused", "text", "image"} <= set(rec["neighbours"])
    assert all(h["record_id"] != rid for hits in rec["neighbours"].values() for h in hits)
    assert client.get("/api/record/nope").status_code == 404


def test_token_is_enforced_on_every_route(served):
    c = TestClient(create_app(served, token="s3cret"))
    for url in ("/", "/api/health", "/api/clusters", "/media/image/x", "/static/app.js"):
        assert c.get(url).status_code == 401
    assert c.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = c.get("/", params={"token": "s3cret"})
    assert r.status_code == 200 and "mm_token" in r.headers.get("set-cookie", "")
    assert c.get("/api/health").status_code == 200  # the cookie now rides along
    c.cookies.clear()
    assert c.get("/api/health").status_code == 401


def test_binding_beyond_localhost_needs_a_token():
    check_bind("127.0.0.1", None)
    with pytest.raises(SystemExit, match="MM_SERVE_TOKEN"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "t")


def test_qdrant_is_released_when_idle(client, served):
    assert client.post("/api/search", data={"text": "tea"}).status_code == 200
    deadline = time.monotonic() + 5
    while served.holder._store is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    other = QdrantStore(served.res.qdrant.collection, path=served.paths.qdrant_path, open_timeout_s=0)
    with other:  # an ingest could open it now
        assert other.count() > 0
    assert client.post("/api/search", data={"text": "tea"}).status_code == 200  # and we reopen after


def test_discovery_file_only_names_a_live_process(tmp_path):
    write_discovery(tmp_path, "http://127.0.0.1:1", "t")
    assert running_service(tmp_path)["token"] == "t"
    assert oct((tmp_path / "serve.json").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "serve.json").write_text('{"url": "http://127.0.0.1:1", "pid": 999999999}')
    assert running_service(tmp_path) is None


def test_status_endpoint_matches_the_lake(client, served):
    report = client.get("/api/status").json()
    assert report["data_dir"] == str(served.paths.data_dir)
    assert report["qdrant"]["points"] == report["current_records"] > 0
    assert report["pending_batches"] == [] and len(report["ingested_batches"]) == 1
