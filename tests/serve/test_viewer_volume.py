"""The viewer's volume reader in headless Chromium (issue 23 point 7): upload the real CT series in
tests/fixtures/totalseg_example, segment it (POST /v1/volumes/segment), move the slice slider and see the
mask follow the slice, download the slice's mask (PNG), the 3D mask (NIfTI), the DICOM SEG and the report.
A NIfTI upload shows no DICOM SEG link. The screenshot is kept in ``$CITRUS_V_ARTIFACTS``
(docs/images/viewer_volume.png was made so)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from citrus_v.serve.app import create_app
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import LiveServer
from tests.serve.test_browser import need_browser, viewer_page
from tests.serve.test_volume_endpoint import CT_SERIES, BrightEcho, cube_nifti

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def volume_canvas(page) -> np.ndarray:
    import base64
    import io

    url = page.evaluate("document.getElementById('volume-canvas').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)


def masked(px: np.ndarray) -> np.ndarray:
    """Pixels the first colour (#ff4040) is blended into: red well above green; a grey pixel has R == G."""
    return px[..., 0] - px[..., 1] > 50


def move_slider(page, index: int) -> None:
    page.evaluate(f"(() => {{ const s = document.getElementById('slice-slider'); s.value = '{index}';"
                  "s.dispatchEvent(new Event('input')); })()")
    total = page.evaluate("vol.data.slices.length")
    page.wait_for_function(f"document.getElementById('slice-readout').textContent === 'slice {index + 1} / {total}'")


def segment(page, files: list[Path]) -> None:
    page.set_input_files("#volume-input", [str(f) for f in files])
    page.click("#volume-submit")
    page.wait_for_function("document.getElementById('volume-status').textContent.startsWith('Done')"
                           " || document.getElementById('volume-status').className === 'error'", timeout=120_000)
    status = page.text_content("#volume-status")
    assert status.startswith("Done"), status


def server_mask_area(page, index: int) -> int:
    return page.evaluate(f"rleDecode(vol.data.slices[{index}].masks[0]).reduce((a, v) => a + v, 0)")


def download(page, selector: str, folder: Path) -> Path:
    with page.expect_download() as info:
        page.click(selector)
    path = folder / info.value.suggested_filename
    info.value.save_as(path)
    return path


@pytest.mark.skipif(not CT_SERIES.is_dir(), reason="CT fixture series missing")
def test_viewer_browses_a_ct_series_with_its_mask(tmp_path):
    sync_playwright = need_browser()
    artifacts = Path(os.environ.get("CITRUS_V_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    with LiveServer(create_app(BrightEcho(), ServeConfig(max_batch=8, batch_wait_ms=5))) as server, sync_playwright() as p:
        with viewer_page(p, server, viewport={"width": 1100, "height": 1400}, accept_downloads=True) as (page, errors):
            segment(page, sorted(CT_SERIES.iterdir()))
            first = page.evaluate("vol.index")
            shown = {}
            for k in (first, 19, 10):
                move_slider(page, k)
                area = masked(volume_canvas(page))
                assert area.sum() == server_mask_area(page, k) > 0  # the canvas shows this slice's own mask
                shown[k] = area
            assert (shown[first] != shown[19]).sum() > 100 and (shown[19] != shown[10]).sum() > 100
            page.locator("#volume-section").screenshot(path=str(artifacts / "viewer_volume_full.png"))
            check_downloads(page, tmp_path, slice_area=int(shown[10].sum()))
            assert not errors, errors


def check_downloads(page, folder: Path, slice_area: int) -> None:
    png = download(page, "#volume-mask-png-0", folder)
    assert (np.asarray(Image.open(png).convert("L")) > 127).sum() == slice_area
    nifti = download(page, "#download-volume-nifti", folder)
    labels = np.asarray(nib.load(str(nifti)).dataobj)
    assert nifti.name == "segmentation.nii.gz" and labels.shape == (512, 512, 20) and (labels == 1).sum() > 0
    seg = pydicom.dcmread(download(page, "#download-volume-seg", folder))
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "liver"
    report = download(page, "#download-volume-report", folder).read_text()
    assert report.startswith("Findings:") and "liver" in report


def test_viewer_nifti_volume_has_no_dicom_seg_link(tmp_path):
    sync_playwright = need_browser()
    data = cube_nifti(tmp_path / "cube.nii.gz")
    with LiveServer(create_app(BrightEcho(), ServeConfig(max_batch=8, batch_wait_ms=5))) as server, sync_playwright() as p:
        with viewer_page(p, server, accept_downloads=True) as (page, _):
            segment(page, [tmp_path / "cube.nii.gz"])
            areas = []
            for k in (0, 5):
                move_slider(page, k)
                areas.append(int(masked(volume_canvas(page)).sum()))
            assert areas == [int((data[..., k] > 0).sum()) for k in (0, 5)]
            assert page.is_hidden("#download-volume-seg") and page.is_visible("#download-volume-nifti")
