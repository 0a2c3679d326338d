"""The viewer as a reading tool in headless Chromium (issue 23 point 7): a report read as Findings /
Impression with its cited box linked to the overlay, window/level (preset and drag), mask opacity,
per-structure names and colours, a drawn box and clicked points as prompts, undo and reset, the
answer kept after a refinement, the masks (PNG) and the report downloaded. Screenshots are kept in
``$CITRUS_V_ARTIFACTS`` (docs/images/viewer_report.png and viewer_refined.png were made so)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from citrus_v.infer.text import parse_report
from citrus_v.infer.types import Box, Mask, Prediction
from citrus_v.serve.app import create_app
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import EchoPredictor, LiveServer, png_bytes
from tests.serve.test_browser import canvas_pixels, need_browser, viewer_page

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
H, W, GREY = 96, 128, 100
ANSWER = ('Findings: A cyst in the spleen at ```json\n[{"bbox_2d": [80, 50, 110, 80], "label": "cyst"}]\n```. '
          'The liver is normal.\nImpression: Splenic cyst.')


class ReportingEcho(EchoPredictor):
    """A report citing one box, a liver and a spleen mask; ``refine`` outlines the drawn box and a
    5x5 square around each positive point."""

    def __init__(self) -> None:
        super().__init__()
        self.refined: list = []

    def predict_batch(self, items, settings):
        liver, spleen = np.zeros((H, W), bool), np.zeros((H, W), bool)
        liver[10:40, 10:50] = True
        spleen[10:40, 70:110] = True
        boxes = [Box([80.0, 50.0, 110.0, 80.0], "cyst")]
        return [Prediction(ANSWER, ANSWER, boxes=boxes, masks=[Mask(liver, 0.9, "liver"), Mask(spleen, 0.8, "spleen")],
                           report=parse_report(ANSWER, boxes), num_generated_tokens=40) for _ in items]

    def refine(self, image, text, prompts, settings):
        self.refined.append(prompts)
        mask = np.zeros(image.shape[:2], bool)
        if prompts.box is not None:
            x1, y1, x2, y2 = (int(v) for v in prompts.box)
            mask[y1:y2, x1:x2] = True
        for x, y, label in prompts.points:
            mask[max(0, int(y) - 2): int(y) + 3, max(0, int(x) - 2): int(x) + 3] = bool(label)
        return Prediction(answer="", raw_text="", masks=[Mask(mask, 0.5, "refined")])


def wait_status(page, text: str) -> None:
    page.wait_for_function(f"document.getElementById('status').textContent.includes({text!r})", timeout=20_000)


def test_viewer_is_a_reading_tool(tmp_path):
    sync_playwright = need_browser()
    image_path = tmp_path / "grey.png"
    Image.fromarray(np.full((H, W, 3), GREY, dtype=np.uint8)).save(image_path)
    artifacts = Path(os.environ.get("CITRUS_V_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    model = ReportingEcho()
    with LiveServer(create_app(model, ServeConfig())) as server, sync_playwright() as p:
        with viewer_page(p, server, viewport={"width": 1200, "height": 820}, accept_downloads=True) as (page, errors):
            page.set_input_files("#image-input", str(image_path))
            page.fill("#prompt-input", "Write a report.")
            page.click("#submit-button")
            wait_status(page, "Done")
            read_report(page)
            structures(page)
            window_level(page)
            page.screenshot(path=str(artifacts / "viewer_report.png"))
            downloads(page, tmp_path)
            prompts_undo_reset(page, model)
            assert errors == []
    shot = np.asarray(Image.open(artifacts / "viewer_report.png").convert("RGB")).astype(int)
    assert shot.std() > 10 and (np.abs(shot - [0, 255, 0]).sum(axis=2) <= 6).sum() >= 1000  # the recoloured liver


def read_report(page) -> None:
    assert page.text_content("#report-findings") == "A cyst in the spleen. The liver is normal."
    assert page.text_content("#report-impression") == "Splenic cyst."
    assert "```" not in page.text_content("#report") and page.text_content("#answer") == ""
    assert "```json" in page.text_content("#raw-answer-text")  # the model's own words stay one click away
    assert page.text_content("#report-box-0") == "cyst [80, 50, 110, 80]"
    edge = lambda: canvas_pixels(page)[60:70, 81]  # just inside the box's left edge: grey until highlighted
    assert (edge() == GREY).all()
    page.click("#report-box-0")  # the cited box, linked to the overlay: drawn 3x thicker
    assert (edge() != GREY).any(axis=-1).all()
    page.click("#report-box-0")
    assert (edge() == GREY).all()


def structures(page) -> None:
    masks = page.text_content("#mask-list")
    assert "mask 1 (liver): 1200 px, score 0.9" in masks and "mask 2 (spleen): 1200 px, score 0.8" in masks
    colours = [page.input_value(f"#mask-color-{i}") for i in (0, 1)]
    assert colours[0] != colours[1]  # one colour per structure
    page.fill("#mask-color-0", "#00ff00")
    assert tuple(canvas_pixels(page)[20, 20]) == (50, 177, 50)  # 50 % blend of grey 100 and green
    page.fill("#opacity", "100")
    assert tuple(canvas_pixels(page)[20, 20]) == (0, 255, 0)
    page.fill("#opacity", "0")
    assert tuple(canvas_pixels(page)[20, 20]) == (GREY,) * 3
    page.fill("#opacity", "100")


def window_level(page) -> None:
    page.select_option("#wl-preset", "High contrast")  # W 128 L 128: 64..191 -> 0..255
    assert page.text_content("#wl-readout") == "W 128 L 128"
    assert tuple(canvas_pixels(page)[90, 5]) == (72,) * 3  # round((100 - 64) * 255 / 127)
    page.check("#tool-wl")
    box = page.locator("#overlay-canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 64, cy + 28, steps=4)  # right: wider window; down: higher level (darker)
    page.mouse.up()
    assert page.text_content("#wl-readout") == "W 192 L 100"
    assert tuple(canvas_pixels(page)[90, 5]) == (128,) * 3  # 4..195 -> round((100 - 4) * 255 / 191)
    page.select_option("#wl-preset", "High contrast")


def downloads(page, tmp_path) -> None:
    with page.expect_download() as info:
        page.click("#mask-download-0")
    assert info.value.suggested_filename == "mask_1_liver.png"
    mask = np.asarray(Image.open(info.value.path()))
    assert mask.shape[:2] == (H, W) and (mask[..., 0] > 0).sum() == 1200 and mask[20, 20, 0] == 255
    with page.expect_download() as info:
        page.click("#download-report")
    text = Path(info.value.path()).read_text()
    assert "## Findings\n\nA cyst in the spleen. The liver is normal." in text and "- cyst: [80, 50, 110, 80]" in text


def canvas_point(page, x: int, y: int) -> tuple[float, float]:
    box = page.locator("#overlay-canvas").bounding_box()  # shown scaled: CSS px != image px
    return box["x"] + (x + 0.5) * box["width"] / W, box["y"] + (y + 0.5) * box["height"] / H


def prompts_undo_reset(page, model) -> None:
    page.check("#tool-box")
    page.mouse.move(*canvas_point(page, 10, 60))
    page.mouse.down()
    page.mouse.move(*canvas_point(page, 39, 89), steps=5)
    page.mouse.up()
    wait_status(page, "from a box")
    assert model.refined[-1].box == pytest.approx([10, 60, 40, 90], abs=1) and model.refined[-1].points == []
    assert "mask 1 (refined): " in page.text_content("#mask-list")
    assert page.text_content("#report-findings") == "A cyst in the spleen. The liver is normal."  # answer kept
    page.check("#tool-point")
    page.mouse.click(*canvas_point(page, 100, 20))
    wait_status(page, "from 1 point(s) and a box")
    assert len(model.refined[-1].points) == 1 and model.refined[-1].box is not None
    page.screenshot(path=str(Path(os.environ.get("CITRUS_V_ARTIFACTS", "/nonexistent")) / "viewer_refined.png")) \
        if os.environ.get("CITRUS_V_ARTIFACTS") else None
    page.click("#undo-button")
    wait_status(page, "Done: 1 mask(s) from a box")
    assert model.refined[-1].points == [] and len(model.refined) == 3
    page.click("#reset-button")
    wait_status(page, "Reset")
    masks = page.text_content("#mask-list")
    assert "(liver)" in masks and "(spleen)" in masks and "refined" not in masks
    assert page.text_content("#wl-readout") == "W 256 L 128" and tuple(canvas_pixels(page)[90, 5]) == (GREY,) * 3
    assert page.text_content("#report-impression") == "Splenic cyst."


class GroundingEcho(ReportingEcho):
    def predict_batch(self, items, settings):
        text = 'The liver is here: ```json\n[{"bbox_2d": [10, 10, 50, 40], "label": "liver"}]\n```'
        return [Prediction(text, text, boxes=[Box([10.0, 10.0, 50.0, 40.0], "liver")]) for _ in items]


def test_viewer_shows_box_json_as_boxes_not_as_text(tmp_path):
    sync_playwright = need_browser()
    image_path = tmp_path / "grey.png"
    Image.fromarray(np.full((H, W, 3), GREY, dtype=np.uint8)).save(image_path)
    with LiveServer(create_app(GroundingEcho(), ServeConfig())) as server, sync_playwright() as p:
        with viewer_page(p, server) as (page, _):
            page.set_input_files("#image-input", str(image_path))
            page.click("#submit-button")
            wait_status(page, "Done")
            assert page.text_content("#answer") == "The liver is here: [box: see Boxes]"
            assert page.text_content("#box-list") == "liver: [10, 10, 50, 40]"
            assert page.is_hidden("#report") and "```json" in page.text_content("#raw-answer-text")
            assert not page.is_hidden("#raw-answer")


class PlainEcho(EchoPredictor):
    def predict_batch(self, items, settings):  # text only: nothing drawn over the image
        return [Prediction("A CT slice.", "A CT slice.") for _ in items]


CT_SLICE = sorted((Path(__file__).parents[1] / "fixtures" / "totalseg_example" / "ct_dicom").iterdir())[10]


def test_viewer_windows_a_ct_in_hounsfield_units(tmp_path):
    """A CT slice: the presets are HU windows over the file's own values, drawn as a PACS draws them."""
    from citrus_v.data.dicom_io import read_dicom

    sync_playwright = need_browser()
    ct = read_dicom(CT_SLICE.read_bytes(), name="ct")
    hu, shown = ct.hu.astype(np.float64), ct.display(frame=0)
    lung = np.clip(np.floor((hu - (-600 - 750)) / 1500 * 255 + 0.5), 0, 255)  # Math.round: half up
    with LiveServer(create_app(PlainEcho(), ServeConfig())) as server, sync_playwright() as p:
        with viewer_page(p, server, viewport={"width": 1200, "height": 820}) as (page, _):
            page.set_input_files("#image-input", str(CT_SLICE))
            page.click("#submit-button")
            wait_status(page, "Done")
            c, w = ct.file_window or (40, 400)
            assert page.text_content("#wl-readout") == f"as sent (about W {round(w)} L {round(c)} HU)"
            np.testing.assert_array_equal(canvas_pixels(page), shown)  # "As sent": the server's own display
            options = page.eval_on_selector_all("#wl-preset option", "os => os.map(o => o.value)")
            assert options == ["As sent", "Soft tissue", "Lung", "Bone", "Brain", "Liver"]
            page.select_option("#wl-preset", "Lung")
            assert page.text_content("#wl-readout") == "W 1500 L -600 HU"
            drawn = canvas_pixels(page)[..., 0].astype(int)
            assert drawn.shape == hu.shape and np.abs(drawn - lung).max() <= 1 and (drawn == lung).mean() > 0.99
            assert not np.array_equal(drawn, shown[..., 0])  # a different window than the one sent
            page.screenshot(path=str(Path(os.environ.get("CITRUS_V_ARTIFACTS", tmp_path)) / "viewer_ct_lung.png"))


def test_a_ct_dicom_carries_its_hounsfield_values_for_the_viewer():
    import base64

    from citrus_v.data.dicom_io import read_dicom
    from citrus_v.serve.images import decode_image_bytes, encode_values

    data = CT_SLICE.read_bytes()
    decoded = decode_image_bytes(data, ServeConfig(), "img")
    ct = read_dicom(data, name="ct")
    np.testing.assert_array_equal(decoded.pixels, ct.display(frame=0))  # what the model sees is unchanged
    sent = encode_values(decoded)
    values = np.frombuffer(base64.b64decode(sent["data"]), dtype=np.dtype(sent["dtype"]).newbyteorder("<"))
    np.testing.assert_array_equal(values.reshape(sent["shape"]), ct.hu)
    assert sent["unit"] == "HU" and sent["dtype"] == "int16" and sent["invert"] is False
    assert encode_values(decode_image_bytes(png_bytes(), ServeConfig(), "img")) is None  # a PNG has no values
