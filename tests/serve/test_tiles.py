"""``"tiles"`` on the chat endpoint (``Predictor.predict_tiled`` behind the server): parsing, the refusals
that name the field, and the HTTP path, with a test double and with the real tiny model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from citrus_v.infer.generation import GenerationSettings
from citrus_v.serve.app import create_app
from citrus_v.serve.errors import RequestError
from citrus_v.serve.rle import decode_mask
from citrus_v.serve.schemas import parse_chat_request
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import EchoPredictor, chat_body, data_url, local_client, png_bytes
from tests.serve.test_prompts import error_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2

CONFIG = ServeConfig()
URL = data_url(png_bytes(64, 90))  # H=64, W=90


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), (2, (2, 2)), ([1, 3], (1, 3)), ("1x3", (1, 3)),
                                              ("2", (2, 2)), (None, None)])
def test_valid_tiles_are_parsed(value, parsed):
    body = chat_body(URL, "Segment the nuclei.") | ({} if value is None else {"tiles": value})
    assert parse_chat_request(body, CONFIG).tiles == parsed


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"tiles": 0}, 'must be "auto", N, "RxC" or [rows, cols] (whole numbers >= 1), got number 0'),
        ({"tiles": True}, 'must be "auto"'),
        ({"tiles": [2]}, 'must be "auto"'),
        ({"tiles": [2, "3"]}, 'must be "auto"'),
        ({"tiles": "2x"}, 'must be "auto"'),
        ({"tiles": 2.5}, 'must be "auto"'),
        ({"tiles": [3, 1]}, "a 3x1 grid cuts this 64x90 image into tiles under 28 px a side"),
        ({"tiles": 2, "stream": True}, "cannot be streamed"),
        ({"tiles": 2, "prompts": {"points": [[1, 1, 1]]}}, "tiles and point/box prompts do not go together"),
    ],
)
def test_bad_tiles_are_400_naming_the_field(extra, fragment):
    err = error_of(chat_body(URL, "Segment the nuclei.", **extra))
    assert (err.status, err.param) == (400, "tiles") and fragment in err.message


def test_tiles_over_the_servers_limit_are_413():
    body = chat_body(URL, "Segment the nuclei.", tiles=[2, 3])
    assert parse_chat_request(body, ServeConfig(max_tiles=6)).tiles == (2, 3)
    with pytest.raises(RequestError) as info:
        parse_chat_request(body, ServeConfig(max_tiles=5))
    err = info.value
    assert (err.status, err.param, err.code) == (413, "tiles", "too_many_tiles")
    assert "a 2x3 grid on this 64x90 image is 6 tiles, above the server's max_tiles=5" in err.message
    with pytest.raises(ValueError, match="ServeConfig.max_tiles: must be an int >= 1, got 0"):
        ServeConfig(max_tiles=0)


def test_tiles_need_one_image_and_one_user_turn():
    assert "exactly one image in the request, got 0" in error_of(chat_body(None, "x", tiles="auto")).message
    body = chat_body(URL, "x", tiles="auto")
    body["messages"].insert(0, {"role": "system", "content": "You are a pathologist."})
    assert "one user message" in error_of(body).message


class TilingEcho(EchoPredictor):
    """The echo double that also takes tiles: records them and answers as predict_batch does."""

    def __init__(self) -> None:
        super().__init__()
        self.tiled: list[tuple] = []

    def predict_tiled(self, image, text, tiles, settings):
        """Each tile answered as predict_batch answers (7 tokens), stitched as the predictor stitches."""
        from citrus_v.infer.tiling import grid_for, stitch, tile_windows

        self.tiled.append((image.shape, text, tiles, settings.max_tokens))
        windows = tile_windows(*image.shape[:2], grid_for(tiles, *image.shape[:2]))
        tiles_in = [([np.ascontiguousarray(image[y0:y1, x0:x1])], text) for y0, y1, x0, x1 in windows]
        return stitch(self.predict_batch(tiles_in, settings), windows, image.shape[:2])


def test_http_tiles_reach_predict_tiled_alone():
    model = TilingEcho()
    with local_client(create_app(model, ServeConfig())) as client:
        r = client.post("/v1/chat/completions", json=chat_body(URL, "Segment the nuclei.", max_tokens=9, tiles=[2, 3]))
        plain = client.post("/v1/chat/completions", json=chat_body(URL, "Segment the nuclei.", max_tokens=9))
    assert r.status_code == 200 and plain.status_code == 200, r.text
    assert model.tiled == [((64, 90, 3), "Segment the nuclei.", (2, 3), 9)]
    d = r.json()
    assert d["seg_masks_rle"][0]["size"] == [64, 90]
    assert [t["window"] for t in d["tiles"]] == [[0, 32, 0, 30], [0, 32, 30, 60], [0, 32, 60, 90],
                                                 [32, 64, 0, 30], [32, 64, 30, 60], [32, 64, 60, 90]]
    # six tiles of 7 tokens: 42 generated, but no tile reached max_tokens 9, so the answer stopped
    assert d["usage"]["completion_tokens"] == 42 and d["choices"][0]["finish_reason"] == "stop"
    assert "tiles" not in plain.json()


def test_a_tiled_request_runs_after_the_plain_ones_that_came_with_it():
    import threading

    order = []

    class Recording(TilingEcho):
        def predict_batch(self, items, settings):
            order.append(("batch", len(items)))
            return super().predict_batch(items, settings)

        def predict_tiled(self, image, text, tiles, settings):
            order.append(("tiled", None))
            return super().predict_tiled(image, text, tiles, settings)

    model = Recording()
    with local_client(create_app(model, ServeConfig(batch_wait_ms=500))) as client:  # both land in one batch
        tiled = threading.Thread(target=client.post, args=("/v1/chat/completions",),
                                 kwargs={"json": chat_body(URL, "Segment the nuclei.", max_tokens=9, tiles=2)})
        tiled.start()
        plain = client.post("/v1/chat/completions", json=chat_body(URL, "Segment the nuclei.", max_tokens=9))
        tiled.join()
    assert plain.status_code == 200
    assert order[:2] == [("batch", 1), ("tiled", None)]  # the plain request first, though it came second


def test_http_tiles_on_a_model_without_them_is_501():
    with local_client(create_app(EchoPredictor(), ServeConfig())) as client:
        r = client.post("/v1/chat/completions", json=chat_body(URL, "x", tiles="auto"))
    assert r.status_code == 501 and r.json()["error"]["code"] == "tiles_unsupported"


def test_served_tiles_equal_the_predictor_on_the_real_model(tmp_path):
    from tests.serve.conftest import write_tiny_model
    from tests.serve.test_real_model import script, unscript

    from citrus_v.serve.predictor_adapter import load_predictor

    adapter = load_predictor(write_tiny_model(tmp_path / "tiny"))
    pixels = np.asarray(Image.open(io.BytesIO(png_bytes(64, 90))).convert("RGB"))  # what URL decodes to
    with local_client(create_app(adapter, ServeConfig())) as client:
        try:
            script(adapter, "Sure, it is [SEG].")
            served = client.post("/v1/chat/completions", json=chat_body(URL, "Segment the nuclei.", max_tokens=20, tiles=[1, 2]))
            unscript(adapter)
            script(adapter, "Sure, it is [SEG].")  # the first tile's answer; the second tile's is the model's own
            direct = adapter.predictor.predict_tiled(pixels, "Segment the nuclei.", (1, 2), settings=GenerationSettings(max_new_tokens=20))
        finally:
            unscript(adapter)
    assert served.status_code == 200, served.text
    d = served.json()
    assert d["choices"][0]["message"]["content"] == direct.answer
    (rle,) = d["seg_masks_rle"]
    assert rle["size"] == [64, 90]
    np.testing.assert_array_equal(decode_mask(rle), direct.masks[0].mask)
