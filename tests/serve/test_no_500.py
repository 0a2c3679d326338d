"""No input reaches a 500 (issue 22 point 2): the real Predictor on the tiny random CitrusV, served on a socket.

Reserved token strings, image sizes down to 1x1, lone surrogates, control characters and numbers out of
range are each a 4xx naming the field; a property test throws request bodies, prompt texts and image
sizes at the app and asserts "2xx or 4xx", then a valid request still gets its 200.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citrus_v.model.citrus_v import CitrusV
from citrus_v.serve.app import create_app
from citrus_v.serve.predictor_adapter import load_predictor
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import LiveServer, chat_body, data_url, png_bytes, write_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2

MAX_PIXELS = 4096  # keeps every example small: a 1-thread CPU runs the tiny model on each


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("no500_tiny_model"))


@pytest.fixture(scope="module")
def client(tiny_dir):
    """The app behind a real socket (uvicorn on 127.0.0.1), so the whole HTTP path is exercised."""
    app = create_app(load_predictor(tiny_dir), ServeConfig(max_image_pixels=MAX_PIXELS, max_tokens_limit=4,
                                                            default_max_tokens=2, batch_wait_ms=0))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        c.app = app
        yield c


def post(client, body) -> object:
    # ensure_ascii writes a lone surrogate as the valid JSON escape "\ud800"
    return client.post("/v1/chat/completions", content=json.dumps(body, ensure_ascii=True),
                       headers={"content-type": "application/json"})


def error_of(r) -> str:
    return r.json()["error"]["message"]


def test_every_reserved_token_string_is_400_naming_it(client):
    reserved = client.app.state.citrus.queue.predictor.predictor.reserved_strings()
    assert {"[SEG]", "<|vision_start|>", "<|image_pad|>", "<|video_pad|>"} <= set(reserved)
    for token in reserved:
        r = post(client, chat_body(data_url(png_bytes(8, 8)), f"look at {token} here", max_tokens=1))
        assert r.status_code == 400, (token, r.text)
        assert f"reserved token {token}" in error_of(r) and r.json()["error"]["param"] == "messages"
    r = post(client, chat_body(data_url(png_bytes(8, 8)), "<|vision_start|><|video_pad|><|vision_end|>"))
    assert r.status_code == 400


def test_cli_refuses_the_same_reserved_tokens(tiny_dir, tmp_path, capsys):
    from citrus_v.cli import main

    image = tmp_path / "scan.png"
    image.write_bytes(png_bytes(16, 16))
    code = main(["predict", "--model", str(tiny_dir), "--image", str(image), "--prompt", "see <|vision_start|> here",
                 "--device", "cpu"])
    assert code == 2
    assert "--prompt: the prompt contains the reserved token <|vision_start|>" in capsys.readouterr().err


@pytest.mark.parametrize("text, fragment", [
    ("liver \ud800", "unpaired surrogate U+D800 at character 6"),
    ("a\udfffb", "unpaired surrogate U+DFFF at character 1"),
    ("nul\x00", "control character U+0000 at character 3"),
    ("bell\x07", "control character U+0007"),
    ("c1 \x85", "control character U+0085"),
])
def test_surrogates_and_control_characters_are_400(client, text, fragment):
    r = post(client, chat_body(data_url(png_bytes(8, 8)), text, max_tokens=1))
    assert r.status_code == 400 and fragment in error_of(r)
    assert r.json()["error"]["param"] == "messages[0].content[1].text"


@pytest.mark.parametrize("field, value", [
    ("seed", 2**64), ("seed", -1), ("seed", 10**300), ("max_tokens", 10**30), ("max_tokens", 0),
    ("temperature", 10**400), ("temperature", -1e-9), ("top_p", 0), ("top_p", 10**400), ("n", 10**20),
])
def test_numbers_out_of_range_are_400_naming_the_field(client, field, value):
    r = post(client, chat_body(data_url(png_bytes(8, 8)), "Segment the liver.", **{field: value}))
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_point_coordinates_that_overflow_a_float_are_400(client):
    body = chat_body(data_url(png_bytes(8, 8)), "", prompts={"points": [[10**400, 1, 1]]})
    r = post(client, body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompts.points[0][0]"


@pytest.mark.parametrize("h, w", [(1, 1), (1, 3), (3, 1), (3, 3), (3, 64), (1, 64), (2, 5), (64, 64)])
def test_tiny_images_work(client, h, w):
    r = post(client, chat_body(data_url(png_bytes(h, w)), "Segment the liver.", max_tokens=1))
    assert r.status_code == 200, r.text
    assert r.json()["image_sizes"] == [[h, w]]


def test_extreme_aspect_ratio_is_400(client):
    r = post(client, chat_body(data_url(png_bytes(1, 201)), "Segment the liver.", max_tokens=1))
    assert r.status_code == 400 and "aspect ratio" in error_of(r)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
any_text = st.text(st.characters(blacklist_categories=()), max_size=24)  # surrogates and controls included
special = st.sampled_from(["[SEG]", "<|vision_start|>", "<|image_pad|>", "<|im_end|>", "<think>", "\n", ""])
prompt_texts = st.lists(any_text | special, min_size=1, max_size=4).map("".join)
image_sides = st.integers(1, 70)
fields = st.sampled_from(["max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n", "stream",
                          "model", "messages", "prompts", "return_images", "tiles"])


@st.composite
def request_bodies(draw) -> dict:
    h, w = draw(image_sides), draw(image_sides)
    body = chat_body(data_url(png_bytes(h, w)), draw(prompt_texts), max_tokens=draw(st.integers(1, 3)))
    for key in draw(st.lists(fields, max_size=2)):
        body[key] = draw(json_values)
    return body


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=request_bodies())
def test_any_request_is_2xx_or_4xx(client, body):
    r = post(client, body)
    assert 200 <= r.status_code < 500, (r.status_code, r.text[:300])


def test_the_server_still_answers_after_the_property_test(client):
    r = post(client, chat_body(data_url(png_bytes(20, 30)), "Segment the liver.", max_tokens=2))
    assert r.status_code == 200 and r.json()["image_sizes"] == [[20, 30]]
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
