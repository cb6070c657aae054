"""The clinician UI in a real browser: Debian's Chromium, headless, driven by Playwright against a real `xray serve`.

Screenshots of every screen go to tests/artifacts/ (git-ignored). Skips with the reason when Chromium or Playwright
is missing (the Makefile's test target installs both)."""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.security import new_key
from tests.conftest import PROJECT_ROOT, SHARED_DATA, require_shared
from tests.service.processes import free_port, launch_xray, stop, wait_ready

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"
AXE = PROJECT_ROOT / ".cache" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
USER_KEY, USER_ENTRY = new_key("user")

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra (make test)")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (make test installs Debian's chromium)", allow_module_level=True)


@dataclass
class Server:
    url: str
    films: Path  # a folder under the server's allowed root: 12 NIH films and one text file


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ui")
    films = root / "films"
    films.mkdir()
    for path in sorted((SHARED_DATA / "nih1000" / "test" / "1_abnormal").glob("*.png"))[:12]:
        shutil.copyfile(path, films / path.name)
    (films / "notes.txt").write_text("not a film")
    port = free_port()
    env = {
        **os.environ,
        "XRAY_REGISTRY_DIR": str(PROJECT_ROOT / "registry"),
        "XRAY_DATA_DIR": str(root / "data"),
        "XRAY_ALLOWED_SOURCE_ROOTS": str(root),
        "XRAY_API_KEYS": USER_ENTRY,
        "XRAY_GPUS": "none",
        "XRAY_INTRA_OP_THREADS": "1",
        "XRAY_JOB_POLL_S": "0.2",
    }
    log = root / "serve.log"
    process = launch_xray(["serve", "--host", "127.0.0.1", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield Server(url, films)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server: Server, request: pytest.FixtureRequest) -> Iterator:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.goto(server.url + "/")
    page.locator("details.key summary").click()
    page.fill("#api-key", USER_KEY)
    page.locator("#api-key").dispatch_event("change")
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def _upload(page, path: Path) -> None:
    page.set_input_files("#file", str(path))
    page.wait_for_function(
        "() => !document.getElementById('result').hidden || !document.getElementById('error').hidden"
    )


def _api_prediction(server: Server, path: Path) -> dict:
    answer = httpx.post(
        f"{server.url}/v1/predict",
        content=path.read_bytes(),
        headers={"Content-Type": "application/octet-stream", "X-API-Key": USER_KEY},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _canvas_sum(page, canvas_id: str) -> float:
    return page.evaluate(
        """(id) => { const c = document.getElementById(id);
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let s = 0; for (let i = 0; i < d.length; i++) s += d[i]; return s; }""",
        canvas_id,
    )


@pytest.mark.parametrize(
    "parts", [("dicom", "siim_cr_chest_jpeg_baseline.dcm"), ("nih1000", "test", "1_abnormal", "00000165_005.png")]
)
def test_a_film_shows_the_findings_the_api_returns(page, server: Server, parts: tuple[str, ...]) -> None:
    path = require_shared(*parts)
    _upload(page, path)
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    expected = _api_prediction(server, path)
    shown = {
        button.get_attribute("data-label"): button.locator(".value").inner_text()
        for button in page.locator(".finding").all()
    }
    assert shown == {f["label"]: f"{100 * f['probability']:.1f}%" for f in expected["findings"]}
    labels = [button.get_attribute("data-label") for button in page.locator(".finding").all()]
    positives = [f["label"] for f in expected["findings"] if f["positive"]]
    assert labels[: len(positives)] == sorted(
        positives, key=lambda name: -next(f["probability"] for f in expected["findings"] if f["label"] == name)
    )  # positives first
    verdict = page.locator("#verdict").inner_text()
    assert ("detected" in verdict) and f"{100 * expected['abnormal']['probability']:.1f}%" in verdict
    facts = page.locator("#facts").inner_text()
    assert expected["image"]["format"].upper() in facts and str(expected["image"]["width"]) in facts
    assert "Research use only" in page.locator("#notice").inner_text()


def test_a_heatmap_overlays_the_film_and_stays_aligned(page) -> None:
    _upload(page, require_shared("dicom", "siim_cr_chest_jpeg_baseline.dcm"))
    assert _canvas_sum(page, "heat-canvas") == 0
    sums = {}
    for finding in page.locator(".finding").all():  # a finding without positive evidence has an empty layer
        label = finding.get_attribute("data-label")
        finding.click()
        page.wait_for_function(
            "(label) => document.getElementById('heat-caption').textContent.includes(` ${label} `)", arg=label
        )
        assert finding.get_attribute("aria-pressed") == "true"
        sums[label] = _canvas_sum(page, "heat-canvas")
        caption = page.locator("#heat-caption").inner_text()
        assert caption.startswith("Heatmap") == (sums[label] > 0), caption
    assert max(sums.values()) > 0, sums  # the overlay canvas's pixels changed
    shown = max(sums, key=sums.get)
    page.locator(f".finding[data-label='{shown}']").click()
    for width, height in [(1280, 900), (820, 1100), (1600, 700)]:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(150)
        film = page.locator("#film-canvas").bounding_box()
        heat = page.locator("#heat-canvas").bounding_box()
        assert film == heat and film["width"] > 100
    page.locator("#viewport").focus()
    page.keyboard.press("+")
    page.keyboard.press("ArrowLeft")
    assert page.locator("#film-canvas").bounding_box() == page.locator("#heat-canvas").bounding_box()
    page.fill("#opacity", "20")
    page.locator("#opacity").dispatch_event("input")
    assert page.locator("#heat-canvas").evaluate("c => c.style.opacity") == "0.2"


def test_dragging_changes_window_and_level(page) -> None:
    _upload(page, require_shared("nih1000", "test", "1_abnormal", "00000165_005.png"))
    before = _canvas_sum(page, "film-canvas")
    box = page.locator("#viewport").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 120, y + 40, steps=5)
    page.mouse.up()
    assert _canvas_sum(page, "film-canvas") != before
    assert page.locator("#window").input_value() != "255"


def test_a_ct_slice_is_flagged_and_its_findings_are_held_back(page) -> None:
    _upload(page, require_shared("dicom", "IM-0001-0001-0001.dcm"))
    banner = page.locator("#banner")
    assert banner.is_visible()
    assert "CT" in banner.inner_text()
    assert page.locator("#findings-block").is_hidden()
    page.locator("#show-anyway").click()
    assert page.locator("#findings-block").is_visible()
    assert "greyed" in page.locator("#findings-block").get_attribute("class")


def test_random_bytes_give_a_sentence_not_json(page, tmp_path: Path) -> None:
    noise = tmp_path / "noise.bin"
    noise.write_bytes(random.Random(7).randbytes(4096))  # seeded: the detail quotes the first bytes
    _upload(page, noise)
    error = page.locator("#error")
    assert error.is_visible()
    text = error.inner_text()
    assert text.endswith(".") and not text.lstrip().startswith(("{", "[")) and len(text) > 20  # a sentence, not JSON
    assert page.locator("#result").is_hidden()


def test_a_batch_job_runs_to_the_end_and_its_csv_downloads(page, server: Server) -> None:
    page.locator("#tab-batch").click()
    page.fill("#batch-folder", str(server.films))
    page.locator("#batch-form button[type=submit]").click()
    page.wait_for_selector("#job-rows:not([hidden])", timeout=60_000)
    assert "succeeded" in page.locator("#job-title").inner_text()
    counts = page.locator("#job-counts").inner_text()
    assert "13 of 13 done" in counts and "1 could not be scored" in counts
    with page.expect_download() as info:
        page.locator("#download-csv").click()
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
    assert len(rows) == 13 and sorted(row["state"] for row in rows).count("succeeded") == 12
    assert page.locator("#job-rows tbody tr").count() == 13
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "batch-page.png"), full_page=True)
    page.locator("#job-rows tbody tr").first.click()
    page.wait_for_function("() => document.getElementById('film-status').textContent.includes('(from job')")
    assert page.locator("#page-film").is_visible() and page.locator(".finding").count() > 0
    assert _canvas_sum(page, "film-canvas") > 0  # a server-folder film is still there: the viewer shows it


def test_no_serious_accessibility_violations(page) -> None:
    if not AXE.exists():
        pytest.skip(f"{AXE} is missing (make test installs axe-core from npm)")
    _upload(page, require_shared("dicom", "IM-0001-0001-0001.dcm"))  # banner, verdict, facts all on screen
    page.locator("#show-anyway").click()
    page.evaluate(AXE.read_text())  # through the devtools protocol: the page's CSP rightly refuses inline script
    violations = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"
    )
    serious = [v for v in violations if v["impact"] in ("serious", "critical")]
    assert serious == [], serious
