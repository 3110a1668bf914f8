"""The Gradio app in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Starts `vlmfo1 ui` on a tiny model scripted to answer "red circle: regions 1 and 3" (see
tests/pipeline_support.py), uploads a picture, draws a box by clicking two corners, adds three by
typing, runs detection and checks what the page shows. Screenshots go to test-artifacts/.

Skips when Playwright or Chromium is missing (a user's machine); CI sets VLMFO1_REQUIRE_BROWSER=1
so that there a missing browser fails instead.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = os.environ.get("VLMFO1_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _require_browser():
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install 'vlmfo1[dev]')")
    if not os.path.isfile(CHROMIUM):
        missing.append("Chromium (apt-get install chromium, or set VLMFO1_CHROMIUM)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("VLMFO1_REQUIRE_BROWSER"):
            pytest.fail(reason + " (VLMFO1_REQUIRE_BROWSER is set)")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ui_url(tmp_path_factory):
    _require_browser()
    from pipeline_support import make_processor, save_model, scripted_model

    processor = make_processor()
    model = save_model(scripted_model(processor), processor, tmp_path_factory.mktemp("scripted-model"))
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "vlmfo1.cli.main", "ui", "--model", str(model), "--proposer", "contours",
             "--port", str(port), "--max-new-tokens", "24"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"vlmfo1 ui exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vlmfo1 ui did not come up:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture()
def page(ui_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.set_default_timeout(60_000)
        page.goto(ui_url)
        page.wait_for_selector("#run")
        try:
            yield page
        finally:
            browser.close()


def scene_file(tmp_path: Path) -> Path:
    image = Image.new("RGB", (200, 150), (30, 40, 180))
    draw = ImageDraw.Draw(image)
    draw.ellipse([20, 20, 80, 80], fill=(230, 20, 20))
    draw.rectangle([110, 60, 180, 130], fill=(20, 200, 60))
    path = tmp_path / "scene.png"
    image.save(path)
    return path


def painted_area(picture) -> tuple[float, float, float]:
    """Page position of the image's top-left pixel and its display scale (the <img> is object-fit)."""
    box = picture.bounding_box()
    fit, natural_width, natural_height = picture.evaluate("i => [getComputedStyle(i).objectFit, i.naturalWidth, i.naturalHeight]")
    scale = min(box["width"] / natural_width, box["height"] / natural_height)
    if fit == "scale-down":
        scale = min(scale, 1.0)
    elif fit not in ("contain", "scale-down"):
        scale = box["width"] / natural_width
    left = box["x"] + (box["width"] - natural_width * scale) / 2
    top = box["y"] + (box["height"] - natural_height * scale) / 2
    return left, top, scale


def test_running_without_an_image_explains_why(page):
    page.locator("#run").click()
    page.get_by_text("upload an image first").first.wait_for()


def test_upload_draw_and_detect_in_a_browser(page, tmp_path):
    page.locator("#input-image input[type=file]").set_input_files(str(scene_file(tmp_path)))
    picture = page.locator("#input-image img")
    picture.wait_for()
    page.wait_for_function("() => { const i = document.querySelector('#input-image img'); return i && i.naturalWidth === 200; }")
    left, top, scale = painted_area(picture)

    # Draw a box around the red circle: two clicks on opposite corners.
    page.mouse.click(left + 18 * scale, top + 18 * scale)
    page.mouse.click(left + 82 * scale, top + 82 * scale)
    page.wait_for_function("() => document.querySelector('#boxes textarea').value.trim().length > 0")
    drawn = [float(v) for v in page.locator("#boxes textarea").input_value().split(",")]
    assert drawn == pytest.approx([18, 18, 82, 82], abs=2)

    # Three more regions typed into the boxes text; the picture is redrawn with them.
    drawn_picture = picture.get_attribute("src")
    page.locator("#boxes textarea").click()
    page.keyboard.press("End")
    page.keyboard.type("\n110, 60, 180, 130\n5, 100, 40, 140\n120, 5, 190, 40")
    page.wait_for_function("(before) => document.querySelector('#input-image img').src !== before", arg=drawn_picture)

    page.locator("#prompt-text textarea, #prompt-text input").first.fill("red circle")
    page.locator("#run").click()
    page.get_by_text("Detection done:").first.wait_for()
    # The model names regions 1 and 3: two detections, labelled as asked, on the typed boxes.
    assert "2 detection(s), 4 region(s)" in page.locator("#status").inner_text()
    assert page.locator("#raw-answer textarea").input_value() == "<ground>red circle</ground><objects><region1><region3></objects>"

    # The rendered result: both pictures loaded (enlarged to >= 640 px) and the JSON shown.
    for element in ("#annotated img", "#proposals img"):
        page.wait_for_function(f"() => {{ const i = document.querySelector('{element}'); return i && i.complete && i.naturalWidth >= 640; }}")
    json_text = " ".join(page.locator("#result-json").inner_text().split())
    assert "Please detect red circle in this image. Answer the question with object indexes." in json_text
    assert '"label" : "red circle"' in json_text.replace('":', '" :') and '"source" : "user"' in json_text.replace('":', '" :')

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serving-ui-detect.png"), full_page=True)
    assert (ARTIFACTS / "serving-ui-detect.png").stat().st_size > 10_000


def test_proposer_path_in_a_browser(page, tmp_path):
    page.locator("#input-image input[type=file]").set_input_files(str(scene_file(tmp_path)))
    page.wait_for_function("() => { const i = document.querySelector('#input-image img'); return i && i.naturalWidth === 200; }")
    page.locator("#task input").click()
    page.get_by_role("option", name="Detect everything", exact=True).click()
    page.locator("#run").click()
    page.get_by_text("Detect everything done:").first.wait_for()
    json_text = page.locator("#result-json").inner_text()
    assert "Please identify every object in the image" in json_text and '"contours"' in json_text
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serving-ui-proposals.png"), full_page=True)
