"""Property tests: whatever JSON or bytes arrive, the parser returns a request or a 4xx RequestError."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citrus_v.serve.errors import RequestError
from citrus_v.serve.images import PNG_MAGIC, decode_image_bytes
from citrus_v.serve.schemas import ChatRequest, parse_chat_request
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import png_bytes

# pydicom warns while reading the fuzzed headers it still accepts
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CONFIG = ServeConfig(max_image_pixels=200_000, max_image_bytes=200_000)
VALID_PNG = png_bytes(6, 5)

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
    assert 0 < len(req.prompt) <= CONFIG.max_prompt_chars and req.prompt.strip()
    assert 1 <= req.sampling.max_tokens <= CONFIG.max_tokens_limit
    assert len(req.images) <= CONFIG.max_images_per_request
    for image in req.images:
        assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 3 and image.pixels.shape[2] == 3
    return req


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_parser_never_crashes(body):
    check(body)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([b"", PNG_MAGIC, b"\xff\xd8\xff", b"\0" * 128 + b"DICM", VALID_PNG[:33]]))
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
