"""Property tests: whatever JSON or bytes arrive, the parser returns a request or a 4xx RequestError."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from citrus_v.serve.errors import RequestError
from citrus_v.serve.images import PNG_MAGIC, TIFF_MAGICS, decode_image_bytes
from citrus_v.serve.schemas import ChatRequest, parse_chat_request
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import png_bytes, tiff_bytes

# pydicom warns while reading the fuzzed headers it still accepts
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CONFIG = ServeConfig(max_image_pixels=200_000, max_image_bytes=200_000)
VALID_PNG = png_bytes(6, 5)
VALID_TIFF = tiff_bytes(6, 5)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# urls that reach every branch: garbage, valid PNG, corrupted PNG, fake DICOM, remote, paths
urls = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=200).map(lambda b: "data:image/png;base64," + b64(b)),
    st.binary(max_size=200).map(lambda b: "data:image/png;base64," + b64(PNG_MAGIC + b)),
    st.binary(max_size=300).map(lambda b: "data:application/dicom;base64," + b64(b"\0" * 128 + b"DICM" + b)),
    st.integers(0, len(VALID_PNG)).map(lambda n: "data:image/png;base64," + b64(VALID_PNG[:n])),
    st.sampled_from(["data:image/png;base64," + b64(VALID_PNG), "http://10.0.0.1/x.png", "/etc/hosts", "data:,"]),
    st.text(alphabet="ABCDabcd+/=!-_ \n", max_size=60).map(lambda t: "data:image/jpeg;base64," + t),
)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30) | json_values}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": urls}) | urls | json_values}),
    json_values,
)
messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "user", "system", "assistant", "tool"]) | json_values,
     "content": st.lists(parts, max_size=4) | st.text(max_size=30) | json_values}
)
# point/box prompts around the 6x5 VALID_PNG: in and out of bounds, bad labels, NaN, wrong lengths, bad RLE;
# mostly well-formed, so that acceptance is reached too
coords = st.integers(-2, 8) | st.floats(-2, 8) | st.floats() | json_values
good_points = st.lists(st.tuples(st.integers(-1, 5), st.integers(-1, 6), st.integers(0, 1)).map(list), min_size=1, max_size=3)
any_points = st.lists(st.lists(coords, min_size=2, max_size=4) | json_values, max_size=3) | json_values
prompts = st.one_of(
    json_values,
    st.fixed_dictionaries({"extra": json_values}),
    st.fixed_dictionaries(
        {"points": good_points | any_points},
        optional={
            "box": st.tuples(st.integers(-1, 2), st.integers(-1, 2), st.integers(1, 6), st.integers(1, 7)).map(list)
            | st.lists(coords, min_size=3, max_size=5) | json_values,
            "mask_input_rle": st.fixed_dictionaries(
                {"size": st.sampled_from([[6, 5], [6, 5], [5, 6], [6], "6x5"]) | json_values,
                 "counts": st.sampled_from(["0n0", "n0", "0", "0n0"]) | st.text(max_size=12) | json_values}
            ) | json_values,
            "seg_index": st.integers(-1, 3) | json_values,
            "multimask": st.booleans() | st.none() | json_values,
        },
    ),
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"messages": st.lists(messages, max_size=3) | json_values},
        optional={
            "model": st.text(max_size=10) | json_values,
            "max_tokens": st.integers(-5, 5000) | json_values,
            "temperature": st.floats(-1, 3) | json_values,
            "top_p": st.floats(-1, 2) | json_values,
            "stream": st.booleans() | json_values,
            "n": st.integers(0, 3),
            "seed": st.integers() | json_values,
            "prompts": prompts,
            "tiles": st.sampled_from(["auto", "2x2", 1, 2, [1, 2], [2, 1], 0, True]) | json_values,
        },
    ),
)


def check(body) -> ChatRequest | None:
    try:
        req = parse_chat_request(body, CONFIG)
    except RequestError as err:
        assert 400 <= err.status < 500, err
        assert err.message
        body_json = err.to_body()
        assert body_json["error"]["type"] == "invalid_request_error"
        return None
    assert isinstance(req, ChatRequest)
    assert len(req.prompt) <= CONFIG.max_prompt_chars
    assert 1 <= req.sampling.max_tokens <= CONFIG.tokens_limit  # max_tokens_limit None: the fallback until a model says
    assert len(req.images) <= CONFIG.max_images_per_request
    for image in req.images:
        assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 3 and image.pixels.shape[2] == 3
    if req.prompts is not None:  # accepted prompts are exactly what refine can take
        assert len(req.images) == 1 and (req.prompts.points or req.prompts.box is not None)
        h, w = req.images[0].size
        assert all(0 <= x < w and 0 <= y < h and label in (0, 1) for x, y, label in req.prompts.points)
        if req.prompts.box is not None:
            x1, y1, x2, y2 = req.prompts.box
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        if req.prompts.mask_input_rle is not None:
            assert req.prompts.mask_input.shape == (h, w) and req.prompts.mask_input.dtype == bool
    else:  # text, or (messages.py) a conversation whose last user turn is an image alone
        assert req.prompt.strip() or (req.conversation is not None and req.images)
    if req.tiles is not None:  # accepted tiles are a grid predict_tiled can cut this one image into
        from citrus_v.infer.tiling import tile_grid, tile_windows

        assert len(req.images) == 1 and req.prompts is None and req.conversation is None and not req.stream
        grid = tile_grid(*req.images[0].size) if req.tiles == "auto" else req.tiles
        tile_windows(*req.images[0].size, grid)
    return req


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
# found by the fuzz: an earlier empty user turn, then an image alone (accepted: the image is the question)
@example({"messages": [{"role": "user", "content": []}, {"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(VALID_PNG)}}]}]})
def test_parser_never_crashes(body):
    check(body)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([b"", PNG_MAGIC, b"\xff\xd8\xff", b"\0" * 128 + b"DICM", VALID_PNG[:33],
                                                *TIFF_MAGICS, VALID_TIFF[:8], VALID_TIFF[:40]]))
def test_image_decoder_never_crashes(tail, head):
    data = head + tail
    try:
        image = decode_image_bytes(data, CONFIG, "image")
    except RequestError as err:
        assert 400 <= err.status < 500 and err.param == "image"
        return
    assert image.pixels.dtype == np.uint8 and image.pixels.shape[2] == 3


def test_valid_bodies_are_reached():
    # the strategies must also produce accepted requests, or the fuzz only tests rejections
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(VALID_PNG)}}, {"type": "text", "text": "q"}]}]}
    req = check(body)
    assert req is not None and req.images[0].size == (6, 5)
    body["prompts"] = {"points": [[4, 5, 1]], "box": [0, 0, 5, 6], "mask_input_rle": {"size": [6, 5], "counts": "0n0"}}
    req = check(body)
    assert req is not None and req.prompts.points == [(4.0, 5.0, 1)] and req.prompts.mask_input.all()


@settings(max_examples=1000, deadline=None)
@given(prompts, st.sampled_from(["", "Segment the lesion."]))
def test_prompts_on_a_valid_image_are_accepted_or_4xx(value, text):
    # a valid image and text, so the prompts alone decide (the general fuzz rarely reaches a valid image)
    body = {"prompts": value, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(VALID_PNG)}}, {"type": "text", "text": text}]}]}
    req = check(body)
    if req is None:
        return
    assert req.prompts is not None or (value is None and text)
