"""The web viewer in headless Debian Chromium (Playwright): upload, ask, see the overlay, toggle it off.

Needs /usr/bin/chromium (scripts/test.sh installs it) and the ``playwright`` Python package; never
``playwright install``. Skipped on a machine without them, except under CI (``CI`` set) where it fails.
The screenshot is kept in ``$CITRUS_V_ARTIFACTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citrus_v.serve.app import create_app
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import EchoPredictor, LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
H, W = 96, 128
GREY = 100
MASK0_RGB = ((GREY + 255) >> 1, (GREY + 64) >> 1, (GREY + 64) >> 1)  # 50 % blend with the first colour

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@contextlib.contextmanager
def viewer_page(p, server, **page_args):
    """Headless Chromium on the viewer at ``server``: -> (page, the console's error messages); closed after."""
    browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    try:
        page = browser.new_page(**page_args)
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(server.url + "/", wait_until="load")
        yield page, errors
    finally:
        browser.close()


def need_browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = [what for what, ok in (("/usr/bin/chromium", CHROMIUM.exists()), ("playwright", sync_playwright is not None)) if not ok]
    if missing:
        message = f"browser test needs {', '.join(missing)} (apt-get install -y chromium; pip install playwright)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


def grey_png(tmp_path: Path) -> Path:
    """An H x W image of one grey level: the mask blend over it is checkable to the pixel."""
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((H, W, 3), GREY, dtype=np.uint8)).save(path)
    return path


def canvas_pixels(page) -> np.ndarray:
    url = page.evaluate("document.getElementById('overlay-canvas').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_viewer_upload_overlay_toggle_screenshot(tmp_path):
    sync_playwright = need_browser()
    image_path = grey_png(tmp_path)
    artifacts = Path(os.environ.get("CITRUS_V_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "viewer.png"

    with LiveServer(create_app(EchoPredictor(), ServeConfig())) as server, sync_playwright() as p:
        with viewer_page(p, server, viewport={"width": 1200, "height": 800}) as (page, console_errors):
            page.wait_for_function("document.getElementById('model-name').textContent.includes('citrus-v-test-double')")
            page.set_input_files("#image-input", str(image_path))
            page.fill("#prompt-input", "Please segment the lesion.")
            page.click("#submit-button")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=20_000)

            assert page.text_content("#status") == "Done: 1 mask(s), 1 box(es)."
            assert page.text_content("#answer") == "Echo (1 image(s)): Please segment the lesion."
            assert page.text_content("#reasoning") == "looked"
            assert page.text_content("#box-list") == (
                "lesion: [32, 24, 64, 48] (as written [26, 18, 66, 50], tightened by the segmenter, predicted IoU 0.8)"
            )
            assert "mask 1 (lesion): 768 px, score 0.875" in page.text_content("#mask-list")  # 24 x 32 pixels

            pixels = canvas_pixels(page)  # (H, W, 3) at the image's own size
            assert pixels.shape == (H, W, 3)
            inner = pixels[H // 4 + 3 : H // 2 - 3, W // 4 + 3 : W // 2 - 3]  # inside the mask, off the box outline
            assert (inner == MASK0_RGB).all()
            assert (pixels[H // 2 + 5 :, :] == GREY).all()  # below the mask and the boxes: the image untouched
            written_left = (pixels[20:49, 26] != GREY).any(axis=-1)  # the written box's left edge (x 26), dashed
            assert 0.2 < written_left.mean() < 0.8, written_left
            assert (pixels[20:49, 22] == GREY).all()  # beside it: untouched

            page.screenshot(path=str(shot), full_page=True)
            page.uncheck("#mask-toggle-0")
            toggled = canvas_pixels(page)
            assert (toggled[H // 4 + 3 : H // 2 - 3, W // 4 + 3 : W // 2 - 3] == GREY).all()  # overlay gone
            page.check("#mask-toggle-0")
            assert (canvas_pixels(page)[H // 4 + 3 : H // 2 - 3, W // 4 + 3 : W // 2 - 3] == MASK0_RGB).all()
            assert console_errors == []

    # the screenshot artifact: right size, not blank, and the overlay colour is on it
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[1] == 1200 and image.shape[0] >= 800
    assert image.std() > 10
    overlay = np.all(np.abs(image - np.array(MASK0_RGB)) <= 3, axis=2)
    assert overlay.sum() >= 500  # the 24x32 mask, drawn at least at 1:1


def test_viewer_shows_api_errors(tmp_path):
    sync_playwright = need_browser()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature and nothing valid after it
    with LiveServer(create_app(EchoPredictor(), ServeConfig())) as server, sync_playwright() as p:
        with viewer_page(p, server) as (page, _):
            page.set_input_files("#image-input", str(bad))
            page.click("#submit-button")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Error')", timeout=20_000)
            status = page.text_content("#status")
            assert "messages[0].content[0].image_url.url" in status and "image header" in status
            assert page.get_attribute("#status", "class") == "error"


def test_viewer_click_is_a_point_prompt(tmp_path):
    from tests.serve.test_prompts import RefiningEcho

    sync_playwright = need_browser()
    image_path = grey_png(tmp_path)
    model = RefiningEcho()
    with LiveServer(create_app(model, ServeConfig())) as server, sync_playwright() as p:
        with viewer_page(p, server, viewport={"width": 1200, "height": 800}) as (page, _):
            page.set_input_files("#image-input", str(image_path))
            page.click("#submit-button")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=20_000)
            box = page.locator("#overlay-canvas").bounding_box()  # shown scaled: CSS px != image px

            def click_at(x: int, y: int, shift: bool = False) -> None:
                if shift:
                    page.keyboard.down("Shift")
                page.mouse.click(box["x"] + (x + 0.5) * box["width"] / W, box["y"] + (y + 0.5) * box["height"] / H)
                if shift:
                    page.keyboard.up("Shift")

            click_at(100, 70)
            page.wait_for_function("document.getElementById('status').textContent.includes('from 1 point')", timeout=20_000)
            (_, text, prompts, _), = model.refined
            assert text == "" and len(prompts.points) == 1
            x, y, label = prompts.points[0]
            assert abs(x - 100) <= 1 and abs(y - 70) <= 1 and label == 1  # within the 1 px canvas border
            assert "mask 1 (refined): 25 px" in page.text_content("#mask-list")
            assert tuple(canvas_pixels(page)[int(y), int(x)]) == (40, 220, 40)  # the click is drawn
            click_at(20, 10, shift=True)
            page.wait_for_function("document.getElementById('status').textContent.includes('from 2 point')", timeout=20_000)
            assert [pt[2] for pt in model.refined[1][2].points] == [1, 0]  # the shift-click removes


def test_viewer_tiles_option_on_a_tiff_sends_tiles_auto(tmp_path):
    from tests.serve.test_tiles import TilingEcho

    sync_playwright = need_browser()
    image_path = tmp_path / "field.tif"  # a pathology field comes as TIFF: the browser cannot show one, the server can
    Image.open(grey_png(tmp_path)).save(image_path, format="TIFF")
    model = TilingEcho()
    with LiveServer(create_app(model, ServeConfig())) as server, sync_playwright() as p:
        with viewer_page(p, server) as (page, errors):
            page.set_input_files("#image-input", str(image_path))
            page.click("summary")  # open Options
            page.check("#tiles-input")
            page.click("#submit-button")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=20_000)
            assert [(shape, tiles) for shape, _, tiles, _ in model.tiled] == [((H, W, 3), "auto")]
            assert model.calls == [1]  # the echo answers through predict_batch once, inside predict_tiled
            assert "mask 1" in page.text_content("#mask-list") and errors == []
            assert tuple(canvas_pixels(page)[H // 3, W // 3]) == MASK0_RGB  # drawn over the server's decoded image
