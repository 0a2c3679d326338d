"""The HTTP API end to end (in-process) against a deterministic test double: exact outputs."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from citrus_v.serve.app import create_app
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import EchoPredictor, chat_body, data_url, local_client, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2


@pytest.fixture
def client(echo_predictor):
    with local_client(create_app(echo_predictor, ServeConfig())) as c:
        yield c


def expected_mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 1
    return mask


def test_completion_has_openai_shape_masks_and_boxes(client):
    r = client.post("/v1/chat/completions", json=chat_body(data_url(png_bytes(32, 48)), "Segment it.", max_tokens=50))
    assert r.status_code == 200
    d = r.json()
    assert d["object"] == "chat.completion" and d["id"].startswith("chatcmpl-")
    assert d["model"] == "citrus-v-test-double"
    assert d["choices"] == [{
        "index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "Echo (1 image(s)): Segment it.", "reasoning_content": "looked"},
    }]
    assert d["usage"] == {"prompt_tokens": 0, "completion_tokens": 7, "total_tokens": 7}
    assert d["boxes"] == [{"bbox": [12.0, 8.0, 24.0, 16.0], "label": "lesion", "image_index": 0,
                           "text_bbox": [6.0, 2.0, 26.0, 18.0], "score": 0.8}]
    assert d["seg_masks_info"] == [{"score": 0.875, "label": "lesion", "image_index": 0}]
    assert d["image_sizes"] == [[32, 48]] and d["reasoning"] == "looked"
    (rle,) = d["seg_masks_rle"]
    assert set(rle) == {"size", "counts"} and rle["size"] == [32, 48]
    np.testing.assert_array_equal(mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}), expected_mask(32, 48))
    assert "images" not in d


def test_finish_reason_length_when_max_tokens_reached(client):
    d = client.post("/v1/chat/completions", json=chat_body(data_url(png_bytes()), max_tokens=7)).json()
    assert d["choices"][0]["finish_reason"] == "length"


def test_return_images_echoes_decoded_png(client):
    d = client.post("/v1/chat/completions", json=chat_body(data_url(png_bytes(10, 12)), return_images=True)).json()
    assert len(d["images"]) == 1 and d["images"][0].startswith("data:image/png;base64,")


def test_streaming_sse_reassembles_to_the_answer(client):
    with client.stream("POST", "/v1/chat/completions", json=chat_body(data_url(png_bytes(32, 48)), "a b  c", stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Echo (1 image(s)): a b  c"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["seg_masks_rle"][0]["size"] == [32, 48] and chunks[-1]["boxes"][0]["label"] == "lesion"


def test_models_health_ready_and_viewer(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "citrus-v-test-double"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["citrus-v-test-double"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="overlay-canvas"' in page.text
    assert "rleDecode" in client.get("/static/rle.js").text


@pytest.mark.parametrize(
    "content, headers, status, fragment",
    [
        (b"{bad json", {}, 400, "malformed JSON at line 1, column 2"),
        (b'{"messages": NaN}', {}, 400, "NaN is not valid JSON"),
        (b"\xff\xfe\x00", {}, 400, "not UTF-8"),
        (b"", {}, 400, "body is empty"),
        (b"[" * 100_000 + b"]" * 100_000, {}, 400, "malformed JSON"),  # recursion depth, not a crash
        (b'"just a string"', {}, 400, "must be a JSON object, got string"),
    ],
)
def test_malformed_bodies_are_400_and_server_survives(client, content, headers, status, fragment):
    r = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json", **headers})
    assert r.status_code == status
    assert fragment in r.json()["error"]["message"]
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/chat/completions", json=chat_body(data_url(png_bytes()))).status_code == 200


def test_body_over_limit_is_413(echo_predictor):
    with local_client(create_app(echo_predictor, ServeConfig(max_request_bytes=1000))) as c:
        r = c.post("/v1/chat/completions", json=chat_body(data_url(png_bytes(64, 64))))
        assert r.status_code == 413 and "max_request_bytes=1000" in r.json()["error"]["message"]


def test_api_key(echo_predictor):
    with local_client(create_app(echo_predictor, ServeConfig(api_key="s3cret"))) as c:
        body = chat_body(data_url(png_bytes()))
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes need no key


def test_concurrent_requests_are_batched(echo_predictor):
    app = create_app(echo_predictor, ServeConfig(max_batch=4, batch_wait_ms=200))
    with local_client(app) as c:
        results: list = [None] * 8
        body = [chat_body(data_url(png_bytes(16 + i, 16)), f"q{i}") for i in range(8)]

        def go(i: int) -> None:
            results[i] = c.post("/v1/chat/completions", json=body[i])

        threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # every client got ITS answer and ITS mask size back, whatever batch it rode in
    for i, r in enumerate(results):
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == f"Echo (1 image(s)): q{i}"
        assert r.json()["seg_masks_rle"][0]["size"] == [16 + i, 16]
    assert sum(echo_predictor.calls) == 8 and max(echo_predictor.calls) <= 4
    assert len(echo_predictor.calls) < 8  # some requests shared a model call


class SlowPredictor(EchoPredictor):
    def __init__(self, gate: threading.Event):
        super().__init__()
        self.gate = gate

    def predict_batch(self, items, settings):
        self.gate.wait(10)
        return super().predict_batch(items, settings)


def test_full_queue_is_503_with_retry_after():
    gate = threading.Event()
    app = create_app(SlowPredictor(gate), ServeConfig(max_batch=1, max_queue=1, batch_wait_ms=0))
    with local_client(app) as c:
        body = chat_body(data_url(png_bytes()))
        first = threading.Thread(target=c.post, args=("/v1/chat/completions",), kwargs={"json": body})
        second = threading.Thread(target=c.post, args=("/v1/chat/completions",), kwargs={"json": body})
        first.start()
        time.sleep(0.3)  # the worker now holds request 1 inside the (blocked) model
        second.start()
        time.sleep(0.3)  # request 2 waits in the queue: it is full
        r = c.post("/v1/chat/completions", json=body)
        gate.set()
        first.join()
        second.join()
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "queue_full"


class FailingPredictor(EchoPredictor):
    def predict_batch(self, items, settings):
        raise ValueError("2 <|image_pad|> blocks but 1 image")


def test_model_errors_do_not_kill_the_server():
    with local_client(create_app(FailingPredictor(), ServeConfig())) as c:
        r = c.post("/v1/chat/completions", json=chat_body(data_url(png_bytes())))
        assert r.status_code == 422 and "2 <|image_pad|> blocks but 1 image" in r.json()["error"]["message"]
        assert c.get("/readyz").json()["failures"] == 1


def test_readiness_while_loading_and_after_failure():
    gate = threading.Event()

    def slow_loader():
        gate.wait(10)
        return EchoPredictor()

    with local_client(create_app(config=ServeConfig(), loader=slow_loader)) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503 and c.get("/readyz").json()["status"] == "loading"
        r = c.post("/v1/chat/completions", json=chat_body(data_url(png_bytes())))
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        gate.set()
        deadline = time.monotonic() + 5
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.post("/v1/chat/completions", json=chat_body(data_url(png_bytes()))).status_code == 200

    def broken_loader():
        raise FileNotFoundError("no config.json in /nowhere")

    with local_client(create_app(config=ServeConfig(), loader=broken_loader)) as c:
        deadline = time.monotonic() + 5
        while c.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/readyz").json() == {"status": "failed", "error": "FileNotFoundError: no config.json in /nowhere"}


def test_serve_config_validates():
    with pytest.raises(ValueError, match="ServeConfig.max_batch: must be an int >= 1, got 0"):
        ServeConfig(max_batch=0)
    with pytest.raises(ValueError, match="default_max_tokens"):
        ServeConfig(default_max_tokens=10, max_tokens_limit=5)
    with pytest.raises(ValueError, match="allowed_image_dirs"):
        ServeConfig(allowed_image_dirs=["/definitely/not/here"])


class PickyPredictor(EchoPredictor):
    """Fails a whole ``predict_batch`` call when ANY of its requests is poisoned, as the real
    Predictor does when one row's prompt or image is refused while encoding the batch."""

    def predict_batch(self, items, settings):
        self.calls.append(len(items))
        for i, (_, prompt) in enumerate(items):
            if "poison" in prompt:
                raise ValueError(f"request {i}: the prompt is poisoned ({prompt})")
        self.calls.pop()
        return super().predict_batch(items, settings)


def test_one_bad_request_fails_alone_in_its_batch():
    predictor = PickyPredictor()
    app = create_app(predictor, ServeConfig(max_batch=8, batch_wait_ms=500))
    with local_client(app) as c:
        bodies = [chat_body(data_url(png_bytes()), "good one"), chat_body(data_url(png_bytes()), "poison pill"),
                  chat_body(data_url(png_bytes()), "good two")]
        results: list = [None] * len(bodies)

        def go(i: int) -> None:
            results[i] = c.post("/v1/chat/completions", json=bodies[i])

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert predictor.calls[0] == 3  # the three rode in one model call, which the poisoned one failed
    good_one, poisoned, good_two = results
    assert good_one.status_code == 200 and good_one.json()["choices"][0]["message"]["content"] == "Echo (1 image(s)): good one"
    assert good_two.status_code == 200 and good_two.json()["choices"][0]["message"]["content"] == "Echo (1 image(s)): good two"
    assert poisoned.status_code == 422 and "poison pill" in poisoned.json()["error"]["message"]
    assert "good" not in poisoned.json()["error"]["message"]
