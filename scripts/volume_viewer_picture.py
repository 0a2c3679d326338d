"""docs/images/viewer_volume_model.png: the viewer's volume reader on the fixture CT series with the
embedded default model (no --model), slice 11 of 20, prompt "Please segment the liver.".

    python scripts/volume_viewer_picture.py [OUT.png]

Needs /usr/bin/chromium and playwright (as tests/serve/test_viewer_volume.py). Prints the request's
wall time and the liver's measurements. The PNG is shrunk to 3/4 and 64 colours (< 100 KB).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from citrus_v.serve.app import create_app  # noqa: E402
from citrus_v.serve.predictor_adapter import load_predictor  # noqa: E402
from citrus_v.serve.settings import ServeConfig  # noqa: E402
from tests.serve.conftest import LiveServer  # noqa: E402
from tests.serve.test_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.serve.test_viewer_volume import move_slider  # noqa: E402

SERIES = ROOT / "tests" / "fixtures" / "totalseg_example" / "ct_dicom"


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with LiveServer(create_app(load_predictor(None), ServeConfig())) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.goto(server.url + "/", wait_until="load")
        page.set_input_files("#volume-input", [str(f) for f in sorted(SERIES.iterdir())])
        page.fill("#volume-prompt", "Please segment the liver.")
        start = time.monotonic()
        page.click("#volume-submit")
        page.wait_for_function("!document.getElementById('volume-submit').disabled", timeout=600_000)
        print(f"{page.text_content('#volume-status')} in {time.monotonic() - start:.1f} s")
        print(page.text_content("#volume-structures"))
        move_slider(page, 10)
        full = out.with_suffix(".full.png")
        page.locator("#volume-section").screenshot(path=str(full))
        browser.close()
    im = Image.open(full).convert("RGB")
    im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.LANCZOS).quantize(64).save(out, optimize=True)
    full.unlink()
    print(f"{out}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images" / "viewer_volume_model.png")
