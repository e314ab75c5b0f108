"""The explorer in a real browser: `mm-platform serve` in a subprocess over a small ingested corpus, driven
with Playwright on Debian's chromium; asserts on what a person sees. Screenshots go to $MM_SHOTS_DIR when set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mm_platform_tests.e2e.conftest import free_port
from mm_platform_tests.serve.corpus import build_corpus

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    env = build_corpus(tmp_path_factory.mktemp("explorer-e2e"))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mm_platform.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as resp:
                if json.loads(resp.read())["ok"]:
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"serve did not start: {proc.stdout.read() if proc.stdout else ''}") from None
            time.sleep(0.3)
    yield url, env
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    assert not (Path(env["MM_DATA_DIR"]) / "serve.json").exists(), "serve.json left behind"


@pytest.fixture(scope="module")
def page(service):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1360, "height": 900})
        yield pg
        browser.close()


def _shot(page, name: str) -> None:
    out = os.environ.get("MM_SHOTS_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / f"{name}.png"), full_page=True)


def test_search_shows_results_with_loaded_images(service, page):
    url, _ = service
    page.goto(url + "/#/search")
    page.fill("input[name=text]", "waterproof backpack for rainy hikes")
    page.click("button[type=submit]")
    page.wait_for_selector(".card.result img")
    page.wait_for_function("[...document.querySelectorAll('.card.result img')].every(i => i.complete)")
    assert page.locator(".card.result").count() == 12
    widths = page.eval_on_selector_all(".card.result img", "els => els.map(e => e.naturalWidth)")
    assert widths and all(w > 0 for w in widths)
    assert "results in" in page.inner_text("#status")
    assert page.locator(".card.result audio").count() > 0
    _shot(page, "search")


def test_search_error_is_shown(service, page):
    url, _ = service
    page.goto(url + "/#/search")
    page.click("#qtabs button[data-q=fields]")
    page.fill("input[name=fields]", "{not json")
    page.click("button[type=submit]")
    assert "JSON object" in page.locator(".error").inner_text()


def test_cluster_gallery(service, page):
    url, _ = service
    page.goto(url + "/#/clusters")
    page.wait_for_selector(".cluster")
    assert page.locator(".cluster").count() >= 2
    first = page.locator(".cluster").first
    assert "records" in first.inner_text() and first.locator(".reps img").count() > 0
    page.wait_for_function("[...document.querySelectorAll('.reps img')].every(i => i.complete && i.naturalWidth > 0)")
    _shot(page, "clusters")


def test_map_hover_shows_a_record_and_click_opens_it(service, page):
    url, _ = service
    page.goto(url + "/#/map")
    page.wait_for_function("document.querySelector('#mapinfo') && document.querySelector('#mapinfo').textContent")
    box = page.locator("#map").bounding_box()
    found = None
    # sweep the canvas until the tooltip appears over a point
    for fy in [i / 24 for i in range(1, 24)]:
        for fx in [i / 40 for i in range(1, 40)]:
            page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
            if page.locator("#tooltip").is_visible():
                found = page.locator("#tooltip .tip-id").inner_text()
                break
        if found:
            break
    assert found and found.startswith("demo-"), "no tooltip with a record id appeared over the map"
    _shot(page, "map")
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    page.wait_for_url(f"**/#/record/{found}")
    page.wait_for_selector("h2:has-text('Provenance')")


def test_record_page(service, page):
    url, _ = service
    page.goto(url + "/#/clusters")
    page.wait_for_selector(".cluster .reps a")
    page.locator(".cluster .reps a").first.click()
    page.wait_for_selector("h2:has-text('Nearest by fused')")
    page.wait_for_function("document.querySelector('.hero img') && document.querySelector('.hero img').naturalWidth > 0")
    text = page.inner_text("#view")
    for needle in ("Text", "Fields", "Cluster", "Provenance", "manifest line", "Nearest by image"):
        assert needle in text
    assert page.locator(".hero audio").count() == 1
    _shot(page, "record")


def test_cli_search_uses_the_running_service(service):
    url, env = service
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mm_platform.cli", "search", "--text", "tea", "-k", "3", "--json"],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    elapsed = time.perf_counter() - t0
    answer = json.loads(proc.stdout)
    assert "took_ms" in answer and len(answer["results"]) == 3  # only the service reports took_ms
    assert elapsed < 10, elapsed


def test_cli_status_asks_the_running_service(service):
    _, env = service
    report = json.loads(subprocess.run([sys.executable, "-m", "mm_platform.cli", "status", "--json"], env=env,
                                       capture_output=True, text=True, timeout=120, check=True).stdout)
    assert report["data_dir"] == env["MM_DATA_DIR"]
    assert report["qdrant"]["points"] == report["current_records"] > 0  # the service holds Qdrant; no QdrantBusy
