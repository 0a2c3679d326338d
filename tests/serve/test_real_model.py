"""The server around the REAL Predictor on a tiny random CitrusV (the inference tests' recipe)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from citrus_v.infer.generation import GenerationSettings
from citrus_v.model.citrus_v import CitrusV
from citrus_v.serve.app import create_app
from citrus_v.serve.predictor_adapter import PredictorAdapter, load_predictor, to_generation_settings
from citrus_v.serve.rle import decode_mask, encode_box
from citrus_v.serve.schemas import SamplingParams
from citrus_v.serve.settings import ServeConfig
from tests.infer.conftest import ScriptedHead
from tests.serve.conftest import chat_body, data_url, local_client, write_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("serve_tiny_model"))


@pytest.fixture(scope="module")
def adapter(tiny_dir) -> PredictorAdapter:
    return load_predictor(tiny_dir)


@pytest.fixture(scope="module")
def image_png() -> tuple[np.ndarray, str]:
    from tests.serve.conftest import png_bytes  # (90, 130): not square, not a multiple of 28
    from PIL import Image
    import io

    data = png_bytes(90, 130)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), data_url(data)


def script(adapter: PredictorAdapter, text: str) -> None:
    p = adapter.predictor
    ids = p.tokenizer.encode(text, add_special_tokens=False) + [p.eos_token_id]
    p.model.mllm.lm_head = ScriptedHead(p.model.mllm.lm_head, ids)


def unscript(adapter: PredictorAdapter) -> None:
    head = adapter.predictor.model.mllm.lm_head
    if isinstance(head, ScriptedHead):
        adapter.predictor.model.mllm.lm_head = head.head


def test_sampling_maps_to_generation_settings():
    assert to_generation_settings(SamplingParams(12)) == GenerationSettings(max_new_tokens=12)
    hot = to_generation_settings(SamplingParams(5, temperature=0.7, top_p=0.9, seed=4))
    assert (hot.do_sample, hot.temperature, hot.top_p, hot.seed) == (True, 0.7, 0.9, 4)


def test_served_segmentation_equals_direct_prediction(adapter, image_png, tiny_dir):
    pixels, url = image_png
    assert adapter.model_name == f"citrus-v-{tiny_dir.name}"
    with local_client(create_app(adapter, ServeConfig())) as client:
        try:
            script(adapter, "Sure, it is [SEG].")
            served = client.post("/v1/chat/completions", json=chat_body(url, "Please segment the liver.", max_tokens=20))
            unscript(adapter)
            script(adapter, "Sure, it is [SEG].")
            direct = adapter.predictor.predict([pixels], "Please segment the liver.", settings=GenerationSettings(max_new_tokens=20))
        finally:
            unscript(adapter)
    assert served.status_code == 200, served.text
    d = served.json()
    assert d["choices"][0]["message"]["content"] == direct.answer == "Sure, it is [SEG]."
    (rle,) = d["seg_masks_rle"]
    assert rle["size"] == [90, 130]  # the ORIGINAL image size, not the model's resize
    np.testing.assert_array_equal(decode_mask(rle), direct.masks[0].mask)
    assert d["seg_masks_info"][0]["score"] == pytest.approx(direct.masks[0].score, abs=1e-4)


def test_served_boxes_are_original_pixels(adapter, image_png):
    pixels, url = image_png
    text = '```json\n[{"bbox_2d": [28, 14, 56, 42], "label": "liver"}]\n```'
    with local_client(create_app(adapter, ServeConfig())) as client:
        try:
            script(adapter, text)
            d = client.post("/v1/chat/completions", json=chat_body(url, "Locate the liver.", max_tokens=60)).json()
            unscript(adapter)
            script(adapter, text)
            direct = adapter.predictor.predict([pixels], "Locate the liver.", settings=GenerationSettings(max_new_tokens=60))
        finally:
            unscript(adapter)
    box = direct.boxes[0]
    assert box.text_bbox is not None  # the predictor tightened it: the response carries both boxes
    assert d["boxes"] == [{"bbox": encode_box(box.bbox, (90, 130)), "label": "liver", "image_index": 0,
                           "text_bbox": encode_box(box.text_bbox, (90, 130)), "score": round(box.score, 4)}]
    assert d["boxes"][0]["text_bbox"] == pytest.approx([26.0, 11.25, 52.0, 33.75])  # as written: 28..56 x 14..42 of the 140 x 112 resize


def test_concurrent_unscripted_requests_match_one_by_one(adapter, image_png):
    pixels, url = image_png
    prompts = ["What organ is shown?", "Please segment the liver.", "Write a report.", "Locate the kidney."]
    expected = [adapter.predictor.predict([pixels], p, settings=GenerationSettings(max_new_tokens=4)).answer for p in prompts]
    results: list = [None] * len(prompts)
    with local_client(create_app(adapter, ServeConfig(max_batch=4, batch_wait_ms=100))) as client:
        def go(i: int) -> None:
            results[i] = client.post("/v1/chat/completions", json=chat_body(url, prompts[i], max_tokens=4))

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = client.get("/readyz").json()
    assert [r.status_code for r in results] == [200] * 4
    # greedy batched decoding gives the same text as one-by-one (the predictor's promise, kept through HTTP)
    assert [r.json()["choices"][0]["message"]["content"] for r in results] == expected
    assert stats["requests"] == 4 and stats["batches"] < 4


def test_reserved_token_is_400_before_the_model_runs(adapter, image_png):
    _, url = image_png
    with local_client(create_app(adapter, ServeConfig())) as client:
        r = client.post("/v1/chat/completions", json=chat_body(url, "Say [SEG].", max_tokens=4))
        assert r.status_code == 400
        assert "reserved token [SEG]" in r.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200


def test_served_point_prompt_equals_predictor_refine(adapter, image_png):
    pixels, url = image_png  # (90, 130)
    prompts = {"points": [[40, 30, 1], [100, 70, 0]], "box": [20.5, 10, 90, 60]}
    with local_client(create_app(adapter, ServeConfig())) as client:
        served = client.post("/v1/chat/completions", json=chat_body(url, "", prompts=prompts))
        one = client.post("/v1/chat/completions", json=chat_body(url, "", prompts={"points": [[129, 89, 1]]}))
        bad = client.post("/v1/chat/completions", json=chat_body(url, "", prompts={"points": [[130, 10, 1]]}))
    direct = adapter.predictor.refine(pixels, points=[(40, 30, 1), (100, 70, 0)], box=[20.5, 10, 90, 60])
    assert served.status_code == 200, served.text
    d = served.json()
    (rle,) = d["seg_masks_rle"]
    assert rle["size"] == [90, 130]  # the original image size
    mask = decode_mask(rle)
    assert mask.shape == (90, 130) and mask.dtype == bool
    np.testing.assert_array_equal(mask, direct.masks[0].mask)
    assert d["seg_masks_info"] == [{"score": round(direct.masks[0].score, 4), "label": "refined", "image_index": 0}]
    assert d["choices"][0]["message"]["content"] == "" and d["usage"]["completion_tokens"] == 0
    # a click on the last pixel is inside; one past it is a 400 naming the point
    single = adapter.predictor.refine(pixels, points=[(129, 89, 1)])
    np.testing.assert_array_equal(decode_mask(one.json()["seg_masks_rle"][0]), single.masks[0].mask)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompts.points[0]"


def test_served_point_prompt_with_text_uses_the_answers_seg(adapter, image_png):
    pixels, url = image_png
    prompts = {"points": [[60, 45, 1]]}
    saved = adapter.predictor.settings
    with local_client(create_app(adapter, ServeConfig())) as client:
        try:
            script(adapter, "Sure, it is [SEG].")
            served = client.post("/v1/chat/completions", json=chat_body(url, "Segment the liver.", max_tokens=20, prompts=prompts))
            unscript(adapter)
            script(adapter, "Sure, it is [SEG].")
            adapter.predictor.settings = GenerationSettings(max_new_tokens=20)  # what the server uses for this request
            direct = adapter.predictor.refine(pixels, points=[(60, 45, 1)], prompt="Segment the liver.")
        finally:
            unscript(adapter)
            adapter.predictor.settings = saved
    d = served.json()
    assert d["choices"][0]["message"]["content"] == direct.answer == "Sure, it is [SEG]."
    np.testing.assert_array_equal(decode_mask(d["seg_masks_rle"][0]), direct.masks[0].mask)
    text_only = adapter.predictor.refine(pixels, points=[(60, 45, 1)])
    # the [SEG] embedding joined the click: a different prompt set, so a different mask than the click alone
    assert not np.array_equal(direct.masks[0].mask, text_only.masks[0].mask)


def test_an_answer_and_the_clicks_after_it_encode_the_image_once(adapter, image_png, monkeypatch):
    from citrus_v.infer.session import SessionCache

    pixels, url = image_png
    monkeypatch.setattr(adapter, "sessions", SessionCache(adapter.predictor.image_session))  # none kept from other tests
    calls = []
    real = adapter.predictor.model.segmenter.encode
    monkeypatch.setattr(adapter.predictor.model.segmenter, "encode", lambda x: calls.append(x.shape[0]) or real(x))
    with local_client(create_app(adapter, ServeConfig())) as client:
        try:
            script(adapter, "Sure, it is [SEG].")
            answer = client.post("/v1/chat/completions", json=chat_body(url, "Please segment the liver.", max_tokens=20))
        finally:
            unscript(adapter)
        click = client.post("/v1/chat/completions", json=chat_body(url, "", prompts={"points": [[40, 30, 1]]}))
        again = client.post("/v1/chat/completions", json=chat_body(url, "", prompts={"points": [[40, 30, 1], [100, 70, 0]]}))
    assert [r.status_code for r in (answer, click, again)] == [200, 200, 200]
    assert len(answer.json()["seg_masks_rle"]) == 1
    assert calls == [1]  # the viewer sent the image three times; the segmenter encoded it once
    direct = adapter.predictor.refine(pixels, points=[(40, 30, 1), (100, 70, 0)])
    np.testing.assert_array_equal(decode_mask(again.json()["seg_masks_rle"][0]), direct.masks[0].mask)


def test_tokens_stream_while_the_real_model_decodes(adapter, image_png):
    """TokenStreamer inside generate: each piece is handed over when only part of the answer's
    tokens exist; the pieces concatenate to the answer."""
    pixels, _ = image_png
    pieces: list[tuple[str, int]] = []
    from citrus_v.infer import streaming

    made = []
    real = streaming.TokenStreamer

    def spy(tokenizer, on_text):
        made.append(real(tokenizer, lambda piece: pieces.append((piece, len(made[0].ids)))))
        return made[0]

    try:
        script(adapter, "Sure, the liver is [SEG] here.")
        streaming.TokenStreamer = spy
        prediction = adapter.predict_stream([pixels], "Please segment the liver.", SamplingParams(30), lambda p: None)
    finally:
        streaming.TokenStreamer = real
        unscript(adapter)
    total = prediction.num_generated_tokens
    assert "".join(p for p, _ in pieces) == prediction.answer == "Sure, the liver is [SEG] here."
    assert len(pieces) >= 4 and pieces[0][1] < total // 2  # the first piece came with under half the tokens
    assert prediction.masks[0].label == "liver"  # named after the prompt's structure


def test_openai_client_example_against_the_real_model(adapter, image_png, tmp_path):
    pytest.importorskip("openai")
    import io

    from openai import OpenAI

    from examples.openai_client import ask, describe
    from tests.serve.conftest import LiveServer, png_bytes

    image = tmp_path / "scan.png"
    image.write_bytes(png_bytes(90, 130))
    pixels, _ = image_png
    expected = adapter.predictor._encode([pixels], "Please segment the liver.", "test").input_ids
    with LiveServer(create_app(adapter, ServeConfig())) as server:
        try:
            script(adapter, "Sure, it is [SEG].")
            out = io.StringIO()
            result = ask(OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0), image,
                         "Please segment the liver.", max_tokens=20, out=out)
        finally:
            unscript(adapter)
    assert result["answer"] == "Sure, it is [SEG]."
    assert result["usage"]["prompt_tokens"] == len(expected) > 0  # the encoded prompt, image tokens included
    assert result["usage"]["completion_tokens"] == len(adapter.predictor.tokenizer.encode("Sure, it is [SEG].", add_special_tokens=False)) + 1
    assert result["extras"]["seg_masks_info"][0]["label"] == "liver"
    assert result["extras"]["seg_masks_rle"][0]["size"] == [90, 130]
    describe(result, out)
    assert "mask 'liver': 90x130" in out.getvalue()


def test_serve_exits_non_zero_when_the_model_cannot_load(tiny_dir, tmp_path):
    """A folder that passes the early checks but whose weights are broken: the server stops and
    says why in one line, rather than staying up answering 503."""
    import shutil
    import subprocess
    import sys

    from tests.serve.conftest import free_port

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    run = subprocess.run(
        [sys.executable, "-m", "citrus_v.cli", "serve", "--model", str(broken), "--port", str(free_port())],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"citrus-v serve: --model {broken}: the model could not be loaded"), last
