"""The decoded-pixel budget (issue 22 point 3): per request 413, server-wide 429, always given back."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from citrus_v.serve.app import create_app
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import EchoPredictor, chat_body, data_url, local_client, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2


def two_images(h: int, w: int, text: str = "Segment it.") -> dict:
    body = chat_body(data_url(png_bytes(h, w)), text)
    body["messages"][0]["content"].insert(0, {"type": "image_url", "image_url": {"url": data_url(png_bytes(h, w))}})
    return body


def held(client) -> int:
    return client.app.state.citrus.pixels.held


def test_request_over_its_pixel_budget_is_413_and_gives_back_what_it_took():
    with local_client(create_app(EchoPredictor(), ServeConfig(max_request_pixels=1000, max_pixels_in_flight=5000))) as c:
        assert c.post("/v1/chat/completions", json=chat_body(data_url(png_bytes(20, 30)))).status_code == 200
        r = c.post("/v1/chat/completions", json=two_images(20, 30))  # 600 + 600 > 1000
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert "max_request_pixels=1000" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "messages[0].content[1].image_url.url"  # the image that went over
        assert held(c) == 0


def test_a_bomb_is_counted_from_its_header_before_it_is_decoded():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((3000, 3000), dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    assert len(buf.getvalue()) < 20_000  # 9 M pixels in a few KB
    config = ServeConfig(max_image_pixels=40_000_000, max_request_pixels=1_000_000, max_pixels_in_flight=2_000_000)
    with local_client(create_app(EchoPredictor(), config)) as c:
        t0 = time.perf_counter()
        r = c.post("/v1/chat/completions", json=chat_body(data_url(buf.getvalue())))
        assert r.status_code == 413 and "9000000 pixels" in r.json()["error"]["message"]
        assert c.get("/readyz").json()["peak_pixels_in_flight"] == 0  # never held: refused from the header
        assert time.perf_counter() - t0 < 5


class GatedPredictor(EchoPredictor):
    def __init__(self, gate: threading.Event):
        super().__init__()
        self.gate = gate

    def predict_batch(self, items, settings):
        self.gate.wait(10)
        return super().predict_batch(items, settings)


def test_server_budget_full_is_429_with_retry_after_and_frees_up():
    gate = threading.Event()
    config = ServeConfig(max_batch=1, batch_wait_ms=0, max_request_pixels=1000, max_pixels_in_flight=1500)
    with local_client(create_app(GatedPredictor(gate), config)) as c:
        body = chat_body(data_url(png_bytes(20, 30)))  # 600 pixels
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(c.post("/v1/chat/completions", json=body)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while held(c) < 1200 and time.monotonic() < deadline:  # one in the model, one queued
            time.sleep(0.01)
        assert held(c) == 1200
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "pixel_budget_full" and "max_pixels_in_flight=1500" in r.json()["error"]["message"]
        gate.set()
        for t in threads:
            t.join()
        assert [x.status_code for x in results] == [200, 200] and held(c) == 0
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
            assert s.status_code == 200 and list(s.iter_lines())
        assert held(c) == 0 and c.get("/readyz").json()["peak_pixels_in_flight"] == 1200


class RefusingPredictor(EchoPredictor):
    def predict_batch(self, items, settings):
        raise ValueError("the model refuses")


def test_budget_is_given_back_when_a_request_fails_after_decoding():
    config = ServeConfig(max_request_pixels=1000, max_pixels_in_flight=1000)
    with local_client(create_app(EchoPredictor(), config)) as c:
        body = chat_body(data_url(png_bytes(20, 30)))  # 600 pixels taken, then the second image is corrupt
        body["messages"][0]["content"].insert(1, {"type": "image_url", "image_url": {"url": data_url(png_bytes(8, 8)[:60])}})
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[1].image_url.url"
        assert held(c) == 0
    with local_client(create_app(RefusingPredictor(), config)) as c:
        assert c.post("/v1/chat/completions", json=chat_body(data_url(png_bytes(20, 30)))).status_code == 422
        assert held(c) == 0 and c.get("/readyz").json()["peak_pixels_in_flight"] == 600


def test_budget_config_validates():
    with pytest.raises(ValueError, match="max_request_pixels: 10 exceeds max_pixels_in_flight=5"):
        ServeConfig(max_request_pixels=10, max_pixels_in_flight=5)


@pytest.mark.parametrize("argv, message", [
    (["--max-request-pixels", "10", "--max-pixels-in-flight", "5"], "--max-request-pixels: 10 exceeds --max-pixels-in-flight 5"),
    (["--max-batch", "0"], "--max-batch: must be an int >= 1, got 0"),
    (["--max-tiles", "0"], "--max-tiles: must be an int >= 1, got 0"),
])
def test_serve_flags_out_of_range_are_one_line_naming_the_flag(argv, message, capsys):
    from citrus_v.cli import main

    assert main(["serve", *argv]) == 2  # refused before any model is loaded or port bound
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def traced_peak(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "I;16", "F"])
def test_decoding_makes_no_full_size_copy_beside_the_kept_array(mode):
    """What a budgeted pixel costs (serve/budget.py): the 3-byte array, converted band by band. A whole
    converted, float or composited copy (4-8 bytes a pixel) would make numpy's traced peak grow by more
    than 3 bytes for each pixel added; the band's own temporaries do not grow with the image."""
    from citrus_v.serve.images import _to_rgb8

    rng = np.random.default_rng(0)
    w = 800

    def image(h: int) -> Image.Image:
        arrays = {"RGB": lambda: rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                  "RGBA": lambda: rng.integers(0, 256, (h, w, 4), dtype=np.uint8),
                  "I;16": lambda: rng.integers(0, 65535, (h, w), dtype=np.uint16),
                  "F": lambda: rng.normal(size=(h, w)).astype(np.float32)}
        return Image.fromarray(arrays[mode]())

    small, large = image(1024), image(3072)
    grew = traced_peak(lambda: _to_rgb8(large)) - traced_peak(lambda: _to_rgb8(small))
    per_pixel = grew / ((3072 - 1024) * w)
    assert per_pixel <= 3.1, f"{mode}: {per_pixel:.2f} traced bytes for each pixel added"


def test_readyz_states_the_budget_in_memory():
    from citrus_v.serve.budget import BYTES_PER_PIXEL

    with local_client(create_app(EchoPredictor(), ServeConfig(max_request_pixels=1_000_000, max_pixels_in_flight=3_000_000))) as c:
        body = c.get("/readyz").json()
    assert body["max_pixels_in_flight"] == 3_000_000
    assert body["pixel_budget_mb"] == round(3_000_000 * BYTES_PER_PIXEL / 2**20, 1)


def test_a_dicom_pixel_is_charged_as_two():
    from pydicom.data import get_testdata_file

    data = open(get_testdata_file("CT_small.dcm"), "rb").read()  # 128 x 128
    config = ServeConfig(max_request_pixels=100_000, max_pixels_in_flight=100_000)
    with local_client(create_app(EchoPredictor(), config)) as c:
        assert c.post("/v1/chat/completions", json=chat_body(data_url(data))).status_code == 200
        assert c.get("/readyz").json()["peak_pixels_in_flight"] == 2 * 128 * 128
