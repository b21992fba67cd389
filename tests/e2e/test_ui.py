"""The web UI in a real headless Chromium: draw a digit, upload an image, predict, give feedback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelloop.data.builtin import seed_case_traffic
from modelloop.feedback import FeedbackStore
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed; 'make test' installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def _feedback_rows(directory):
    store = FeedbackStore(f"sqlite:///{directory / 'feedback.db'}")
    try:
        return store._latest_feedback_rows(with_input=False)
    finally:
        store.close()


def test_browser_flow(demo_run, serve, browser, tmp_path):
    directory, res = demo_run
    copy = tmp_path / "proj"
    shutil.copytree(directory, copy)
    server = serve(copy)
    key = server.auth("client")["Authorization"].split()[1]
    before = len(_feedback_rows(copy))

    page = browser.new_page(viewport={"width": 1366, "height": 850})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/#key={key}")
    page.wait_for_selector("#models tbody tr")
    assert page.locator("#models tbody tr").count() == len(res["versions"])  # one row per registered version
    assert "champion" in page.locator("#models tbody").inner_text()

    # Draw a "1": one vertical stroke in the middle of the canvas.
    box = page.locator("#canvas").bounding_box()
    x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(x0 + i * 0.5, y0 + i * box["height"] * 0.03)
    page.mouse.up()
    page.click("#predict-drawing")
    page.wait_for_selector("#feedback:not(.hidden)")
    drawn_label = page.locator("#result").inner_text().split("\n")[0].split("model")[0].strip()
    assert drawn_label in ("even", "odd")
    assert page.locator("#scores .bar").count() == 2
    page.click("#fb-correct")
    page.wait_for_selector("#fb-status.ok")
    rows = _feedback_rows(copy)
    assert len(rows) == before + 1
    assert rows[-1]["label"] == drawn_label == rows[-1]["predicted"]

    # Upload a real digit image and correct the model with the other label.
    x, _ = seed_case_traffic()
    png = tmp_path / "digit.png"
    Image.fromarray(x[3][0].astype(np.uint8)).resize((84, 84)).save(png)
    page.click("#tab-upload")
    page.set_input_files("#file", str(png))
    page.click("#predict-file")
    page.wait_for_function("document.querySelector('#fb-status').textContent.startsWith('prediction')")
    page.wait_for_selector("#fb-status:not(.ok)")
    uploaded_label = page.locator("#result").inner_text().split("\n")[0].split("model")[0].strip()
    other = "odd" if uploaded_label == "even" else "even"
    page.select_option("#fb-label", other)
    page.click("#fb-send")
    page.wait_for_selector("#fb-status.ok")
    rows = _feedback_rows(copy)
    assert len(rows) == before + 2 and rows[-1]["label"] == other and rows[-1]["predicted"] == uploaded_label

    # Counters catch up with what happened.
    page.wait_for_function("document.querySelector('#c-requests').textContent === '2'", timeout=10000)
    assert page.locator("#c-version").inner_text() == res["champion"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not errors, errors
