"""OpenAI/vLLM conventions (issue 23 point 6): tokens streamed while generated, real usage, the usage
chunk, OpenAI's error shape on every route, masks named after the prompt's structure, IoUs in [0, 1],
report prose without dangling markup. The official ``openai`` client is the one that reads them."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from citrus_v.infer.text import clean_report_prose, parse_report, structures_named
from citrus_v.infer.types import Box, Mask, Prediction
from citrus_v.serve.app import create_app
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import EchoPredictor, LiveServer, chat_body, data_url, local_client, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class GatedStreamer(EchoPredictor):
    """Streams its answer in three pieces; the second waits until the client has READ the first: a
    server that held the text back until the end would never release it (the gate times out)."""

    def __init__(self) -> None:
        super().__init__()
        self.first_read = threading.Event()
        self.gate_opened: bool | None = None

    def predict_stream(self, images, text, settings, on_text):
        on_text("Liver ")
        self.gate_opened = self.first_read.wait(timeout=20)
        on_text("is ")
        on_text("normal.")
        prediction = self.predict_batch([(images, text)], settings)[0]
        prediction.answer, prediction.num_prompt_tokens = "Liver is normal.", 11
        return prediction


def openai_client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_stream_sends_the_first_token_before_the_model_has_finished():
    model = GatedStreamer()
    with LiveServer(create_app(model, ServeConfig())) as server:
        client = openai_client(server)
        stream = client.chat.completions.create(
            model="citrus-v", messages=chat_body(data_url(png_bytes()))["messages"], stream=True,
            stream_options={"include_usage": True})
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            if chunk.choices and chunk.choices[0].delta.content == "Liver ":
                model.first_read.set()  # the model may go on only once this chunk is read
    assert model.gate_opened is True  # the first piece reached the client while the model waited
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == ["Liver ", "is ", "normal."]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-2].model_extra["seg_masks_info"][0]["label"] == "lesion"
    last = chunks[-1]  # OpenAI's usage chunk: no choices
    assert last.choices == [] and last.usage.prompt_tokens == 11 and last.usage.completion_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])


def test_without_stream_options_no_usage_chunk(echo_predictor):
    with local_client(create_app(echo_predictor, ServeConfig())) as client:
        r = client.post("/v1/chat/completions", json=chat_body(data_url(png_bytes()), stream=True))
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        bad = client.post("/v1/chat/completions", json=chat_body(None, stream_options={"include_usage": True}))
    assert all(e["choices"] and "usage" not in e for e in events)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "stream_options"


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


def test_every_error_route_answers_in_openai_shape(echo_predictor):
    config = ServeConfig(max_request_bytes=4096)
    app = create_app(echo_predictor, config)

    @app.get("/probe/{n}")
    async def probe(n: int) -> dict:  # a typed path parameter: FastAPI's own validation (422)
        return {"n": n}

    with local_client(app) as client:
        r422 = client.get("/probe/abc")
        assert r422.status_code == 422 and error_of(r422)["code"] == "validation_error"
        assert error_of(r422)["param"] == "path.n"
        assert error_of(client.get("/v1/nothing"))["code"] == "not_found"
        assert client.get("/v1/nothing").status_code == 404
        r405 = client.get("/v1/chat/completions")
        assert r405.status_code == 405 and error_of(r405)["code"] == "method_not_allowed"
        assert error_of(client.get("/static/missing.js"))["type"] == "invalid_request_error"
        r400 = client.post("/v1/chat/completions", json={"messages": "no"})
        assert r400.status_code == 400 and error_of(r400)["param"]
        r413 = client.post("/v1/chat/completions", json=chat_body(data_url(png_bytes(64, 64))))
        assert r413.status_code == 413 and error_of(r413)


class Crashing(EchoPredictor):
    @property
    def model_name(self):  # read outside every guarded block: an unexpected crash
        raise KeyError("boom")


def test_an_unexpected_crash_is_a_500_in_openai_shape():
    with local_client(create_app(Crashing(), ServeConfig(model_name="")), raise_server_exceptions=False) as client:
        r = client.post("/v1/chat/completions", json=chat_body(None, model=None))
    assert r.status_code == 500 and error_of(r)["type"] == "server_error"


def test_openai_client_reads_an_error(live_echo_server):
    openai = pytest.importorskip("openai")
    client = openai_client(live_echo_server)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-4o" in caught.value.body["message"]


@pytest.mark.parametrize("prompt, names", [
    ("Please segment the liver.", ["liver"]),
    ("Segment the left kidney, the spleen and the aorta in this CT.", ["left kidney", "spleen", "aorta"]),
    ("Can you segment out the pancreas on the image?", ["pancreas"]),
    ("Describe the image.", []),
])
def test_structures_named_by_a_prompt(prompt, names):
    assert structures_named(prompt) == names


class Unlabelled(EchoPredictor):
    def predict_batch(self, items, settings):
        out = super().predict_batch(items, settings)
        for p in out:
            p.masks = [Mask(m.mask, m.score, "") for m in p.masks]
        return out


def test_served_masks_carry_the_structure_of_the_prompt():
    with local_client(create_app(Unlabelled(), ServeConfig())) as client:
        d = client.post("/v1/chat/completions", json=chat_body(data_url(png_bytes()), "Please segment the liver.")).json()
    assert [m["label"] for m in d["seg_masks_info"]] == ["liver"]


def test_every_iou_score_lies_in_unit_interval():
    assert Box([0, 0, 1, 1], score=2.06).score == 1.0 and Box([0, 0, 1, 1], score=-0.1).score == 0.0
    assert Box([0, 0, 1, 1]).score is None
    assert Mask(np.zeros((2, 2), bool), 1.7).score == 1.0


def test_box_tightening_clips_the_segmenter_iou():
    import torch

    from citrus_v.infer.box_tightening import tighten_boxes

    class Transforms:
        orig_hw = (8, 8)

        def masks_to_original(self, logits):
            return (logits > 0).numpy()

    class Session:
        transforms = Transforms()

        def masks_from_prompts(self, box, multimask):
            logits = torch.full((1, 8, 8), -1.0)
            logits[0, 2:5, 1:4] = 1.0
            return logits, torch.tensor([2.06])

    box = Box([0.0, 0.0, 6.0, 6.0], "cyst")
    tighten_boxes(Session(), [box])
    assert box.bbox == [1.0, 2.0, 4.0, 5.0] and box.score == 1.0


def test_report_prose_has_no_dangling_preposition_or_fence():
    answer = ('Findings: A cyst in the spleen at ```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "cyst"}]\n```. '
              'Liver normal (see <bbox>[1,2,3,4]</bbox>).\nImpression: Splenic cyst at ```json\n{"broken": \n```.')
    report = parse_report(answer, [])
    assert report.findings == "A cyst in the spleen. Liver normal."
    assert report.impression == "Splenic cyst."
    assert clean_report_prose("Seen at the hilum.") == "Seen at the hilum."  # a real "at" stays


class FailingStreamer(EchoPredictor):
    def __init__(self, pieces_first: int) -> None:
        super().__init__()
        self.pieces_first = pieces_first

    def predict_stream(self, images, text, settings, on_text):
        for _ in range(self.pieces_first):
            on_text("Liver ")
        raise RuntimeError("decoder fell over")


def test_a_stream_error_before_any_text_has_its_status_and_after_it_goes_in_the_stream():
    body = chat_body(data_url(png_bytes()), stream=True)
    with local_client(create_app(FailingStreamer(0), ServeConfig())) as client:
        early = client.post("/v1/chat/completions", json=body)
    assert early.status_code == 500 and error_of(early)["code"] == "prediction_failed"
    with local_client(create_app(FailingStreamer(1), ServeConfig())) as client:
        late = client.post("/v1/chat/completions", json=body)
    events = [line[6:] for line in late.text.splitlines() if line.startswith("data: ")]
    assert late.status_code == 200 and events[-1] == "[DONE]"
    assert json.loads(events[1])["choices"][0]["delta"] == {"content": "Liver "}
    error = json.loads(events[-2])["error"]
    assert error["code"] == "prediction_failed" and "decoder fell over" in error["message"]
