"""Point/box prompts on the chat endpoint: parsing, bounds, the previous-mask RLE, and the HTTP path."""

from __future__ import annotations

import numpy as np
import pytest

from citrus_v.infer.types import Mask, Prediction
from citrus_v.serve.app import create_app
from citrus_v.serve.errors import RequestError
from citrus_v.serve.rle import decode_mask, decode_untrusted_mask, encode_mask
from citrus_v.serve.schemas import parse_chat_request
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import EchoPredictor, chat_body, data_url, local_client, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2

CONFIG = ServeConfig()
URL = data_url(png_bytes(32, 48))  # H=32, W=48


def error_of(body) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_chat_request(body, CONFIG)
    return info.value


def test_valid_prompts_are_parsed_and_text_becomes_optional():
    previous = np.zeros((32, 48), bool)
    previous[3:9, 5:20] = True
    body = chat_body(URL, "", prompts={
        "points": [[10, 5.5, 1], [0, 31, 0]], "box": [1, 2, 48, 32], "mask_input_rle": encode_mask(previous),
        "seg_index": 2, "multimask": False,
    })  # fmt: skip
    req = parse_chat_request(body, CONFIG)
    assert req.prompt == ""
    p = req.prompts
    assert p.points == [(10.0, 5.5, 1), (0.0, 31.0, 0)] and p.box == [1.0, 2.0, 48.0, 32.0]
    assert (p.seg_index, p.multimask) == (2, False)
    np.testing.assert_array_equal(p.mask_input, previous)
    kwargs = p.refine_kwargs()
    assert kwargs["points"] == p.points and kwargs["box"] == p.box and kwargs["mask_input"] is p.mask_input
    # without prompts, an empty text is still refused
    assert error_of(chat_body(URL, "")).message == "the user turn has no text prompt"


@pytest.mark.parametrize(
    "prompts, param, fragment",
    [
        ([[1, 2, 1]], "prompts", "must be an object"),
        ({"point": [[1, 2, 1]]}, "prompts", "unknown key(s) ['point']"),
        ({}, "prompts", "at least one point or a box"),
        ({"points": []}, "prompts", "at least one point or a box"),
        ({"points": [1, 2, 1]}, "prompts.points[0]", "must be [x, y, label]"),
        ({"points": [[1, 2]]}, "prompts.points[0]", "must be [x, y, label]"),
        ({"points": [[1, 2, 1], [1, 2, 3]]}, "prompts.points[1][2]", "label must be 1 (add) or 0 (remove)"),
        ({"points": [[1, 2, True]]}, "prompts.points[0][2]", "label must be"),
        ({"points": [[1, 2, 1.0]]}, "prompts.points[0][2]", "label must be"),
        ({"points": [["1", 2, 1]]}, "prompts.points[0][0]", "finite number"),
        ({"points": [[48, 2, 1]]}, "prompts.points[0]", "outside the 48x32 image"),
        ({"points": [[5, -1, 1]]}, "prompts.points[0]", "outside the 48x32 image"),
        ({"points": [[5, 32, 1]]}, "prompts.points[0]", "outside"),
        ({"points": [[0, 0, 1]] * 65}, "prompts.points", "above the limit of 64"),
        ({"box": [1, 2, 3]}, "prompts.box", "must be [x1, y1, x2, y2]"),
        ({"box": [5, 2, 3, 9]}, "prompts.box", "x1 < x2 and y1 < y2"),
        ({"box": [0, 0, 49, 10]}, "prompts.box", "reaches outside the 48x32 image"),
        ({"box": [0, 0, 10, None]}, "prompts.box[3]", "finite number"),
        ({"box": [0, 0, 10, 10], "seg_index": -1}, "prompts.seg_index", "int >= 0"),
        ({"box": [0, 0, 10, 10], "multimask": "yes"}, "prompts.multimask", "true, false or null"),
        ({"box": [0, 0, 10, 10], "mask_input_rle": "abc"}, "prompts.mask_input_rle", "COCO RLE"),
        ({"box": [0, 0, 10, 10], "mask_input_rle": {"size": [48, 32], "counts": "0"}}, "prompts.mask_input_rle.size",
         "differs from the image's [H, W] = [32, 48]"),
        ({"box": [0, 0, 10, 10], "mask_input_rle": {"size": [32, 48], "counts": "Y"}}, "prompts.mask_input_rle.counts",
         "ends inside a number"),
        ({"box": [0, 0, 10, 10], "mask_input_rle": {"size": [32, 48], "counts": "0;"}}, "prompts.mask_input_rle.counts",
         "runs cover"),
    ],
)
def test_bad_prompts_are_400_naming_the_field(prompts, param, fragment):
    err = error_of(chat_body(URL, "Segment it.", prompts=prompts))
    assert (err.status, err.param) == (400, param)
    assert fragment in err.message


def test_prompts_need_exactly_one_image():
    two = chat_body(URL, "x", prompts={"points": [[1, 1, 1]]})
    two["messages"][0]["content"].insert(0, {"type": "image_url", "image_url": {"url": URL}})
    assert (error_of(two).param, error_of(two).status) == ("prompts", 400)
    assert "exactly one image" in error_of(chat_body(None, "x", prompts={"points": [[1, 1, 1]]})).message


def test_untrusted_rle_round_trips_and_refuses_overflowing_runs():
    rng = np.random.default_rng(3)
    for _ in range(30):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = rng.random((h, w)) < rng.random()
        rle = encode_mask(mask)
        np.testing.assert_array_equal(decode_untrusted_mask(rle, (h, w)), mask)
        np.testing.assert_array_equal(decode_untrusted_mask(rle, (h, w)), decode_mask(rle))
    # one run of 10_000 pixels on a 2x2 image: pycocotools would write past its buffer
    big = encode_mask(np.zeros((100, 100), bool))["counts"]
    with pytest.raises(ValueError, match="runs cover 10000 pixels, the image has 2x2 = 4"):
        decode_untrusted_mask({"size": [2, 2], "counts": big}, (2, 2))
    with pytest.raises(ValueError, match="not COCO RLE"):
        decode_untrusted_mask({"size": [2, 2], "counts": "4 "}, (2, 2))


class RefiningEcho(EchoPredictor):
    """The test double plus ``refine``: records what it was given, answers a mask around the first point."""

    def __init__(self) -> None:
        super().__init__()
        self.refined: list[tuple] = []

    def refine(self, image, text, prompts, settings):
        self.refined.append((image.shape, text, prompts, settings.max_tokens))
        h, w = image.shape[:2]
        x, y, _ = prompts.points[0]
        mask = np.zeros((h, w), bool)
        mask[max(0, int(y) - 2) : int(y) + 3, max(0, int(x) - 2) : int(x) + 3] = True
        return Prediction(answer="", raw_text="", masks=[Mask(mask, 0.5, "refined")])


def test_http_point_prompt_reaches_refine_and_returns_one_rle_mask():
    model = RefiningEcho()
    with local_client(create_app(model, ServeConfig())) as client:
        body = chat_body(URL, "", max_tokens=9, prompts={"points": [[20, 10, 1]]})
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        bad = client.post("/v1/chat/completions", json=chat_body(URL, "", prompts={"points": [[20, 40, 1]]}))
    d = r.json()
    (shape, text, prompts, max_tokens), = model.refined
    assert shape == (32, 48, 3) and text == "" and prompts.points == [(20.0, 10.0, 1)] and max_tokens == 9
    assert model.calls == []  # nothing went through predict_batch
    (rle,) = d["seg_masks_rle"]
    mask = decode_mask(rle)
    assert rle["size"] == [32, 48] and mask.sum() == 25 and mask[10, 20]
    assert d["seg_masks_info"] == [{"score": 0.5, "label": "refined", "image_index": 0}]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompts.points[0]"


def test_http_prompts_on_a_model_without_refine_is_501():
    with local_client(create_app(EchoPredictor(), ServeConfig())) as client:
        r = client.post("/v1/chat/completions", json=chat_body(URL, "x", prompts={"points": [[1, 1, 1]]}))
    assert r.status_code == 501 and r.json()["error"]["code"] == "prompts_unsupported"
