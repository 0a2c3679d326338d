"""The server speaks the published Citrus-V deploy contract beside ours (issue 20 point 6).

The published client (an OpenAI SDK call against ms-swift's deploy) sends ``{"type": "image", "image": ...}``
parts and ``max_tokens: 8192``, and reads the masks from the response's ``raw_response.seg_masks_rle``:
COCO RLE dicts (``counts`` a str) of the segmenter's 256x256 masks (sigmoid > 0.5), which it decodes
with ``pycocotools.mask.decode``. The client below reads responses that way, and nothing else.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from citrus_v.infer.generation import GenerationSettings
from citrus_v.serve.app import create_app
from citrus_v.serve.predictor_adapter import PredictorAdapter, load_predictor
from citrus_v.serve.rle import mask_grid
from citrus_v.serve.settings import ServeConfig
from tests.infer.conftest import ScriptedHead
from tests.serve.conftest import EchoPredictor, data_url, local_client, png_bytes, write_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2


def published_client_masks(response: dict) -> list[np.ndarray] | None:
    """What the published client does with a response: raw_response.seg_masks_rle -> pycocotools masks."""
    raw = response.get("raw_response")
    if raw is None or "seg_masks_rle" not in raw or not raw["seg_masks_rle"]:
        return None
    return [mask_utils.decode(rle) for rle in raw["seg_masks_rle"]]


def published_request(url: str, text: str, **extra) -> dict:
    content = [{"type": "image", "image": url}, {"type": "text", "text": text}]
    return {"model": "Citrus-V-8B", "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("published_contract_model"))


@pytest.fixture(scope="module")
def adapter(tiny_dir) -> PredictorAdapter:
    return load_predictor(tiny_dir)


@pytest.fixture()
def script(adapter):
    """``script(text)``: the model generates ``text`` + <|im_end|> on its next call(s)."""
    original = adapter.predictor.model.mllm.lm_head

    def install(text: str) -> None:
        p = adapter.predictor
        ids = p.tokenizer.encode(text, add_special_tokens=False) + [p.eos_token_id]
        p.model.mllm.lm_head = ScriptedHead(original, ids)

    yield install
    adapter.predictor.model.mllm.lm_head = original


IMAGE = png_bytes(90, 130)  # not square, not a multiple of 28


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_published_client_gets_the_segmenter_grid_masks(adapter, script):
    """A real tiny model: the client's masks are the segmenter's own 256x256 decisions (logits > 0)."""
    pixels = pixels_of(IMAGE)
    with local_client(create_app(adapter, ServeConfig())) as client:
        script("Sure, it is [SEG].")
        response = client.post("/v1/chat/completions", json=published_request(data_url(IMAGE), "Please segment the liver.",
                                                                                max_tokens=8192))
        script("Sure, it is [SEG].")
        direct = adapter.predictor.predict([pixels], "Please segment the liver.", settings=GenerationSettings(max_new_tokens=20))
    assert response.status_code == 200, response.text
    body = response.json()
    masks = published_client_masks(body)
    assert masks is not None and len(masks) == 1
    assert masks[0].shape == (256, 256) and masks[0].dtype == np.uint8
    assert isinstance(body["raw_response"]["seg_masks_rle"][0]["counts"], str)
    np.testing.assert_array_equal(masks[0].astype(bool), direct.masks[0].low_res)
    # ours beside it: the same mask at the original size
    assert body["seg_masks_rle"][0]["size"] == [90, 130]


def test_no_mask_gives_an_empty_list_as_published(adapter, script):
    with local_client(create_app(adapter, ServeConfig())) as client:
        script("The liver.")
        body = client.post("/v1/chat/completions", json=published_request(data_url(IMAGE), "What organ?")).json()
    assert body["raw_response"] == {"seg_masks_rle": []} and published_client_masks(body) is None


def test_max_tokens_limit_is_the_models_context(adapter, script):
    context = adapter.predictor.model.config.llm.max_position_embeddings
    assert context > 2048  # the old fixed limit; the tiny preset has 8192
    config = ServeConfig()
    with local_client(create_app(adapter, config)) as client:
        script("The liver.")
        ok = client.post("/v1/chat/completions", json=published_request(data_url(IMAGE), "What organ?", max_tokens=context))
        over = client.post("/v1/chat/completions", json=published_request(data_url(IMAGE), "What organ?", max_tokens=context + 1))
    assert ok.status_code == 200, ok.text
    assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"
    assert f"[1, {context}]" in over.json()["error"]["message"]
    assert config.max_tokens_limit is None  # the server's copy took the limit, the caller's config is untouched


def test_max_tokens_limit_is_configurable():
    with local_client(create_app(EchoPredictor(), ServeConfig(max_tokens_limit=100, default_max_tokens=50))) as client:
        ok = client.post("/v1/chat/completions", json=published_request(data_url(IMAGE), "x", max_tokens=100))
        over = client.post("/v1/chat/completions", json=published_request(data_url(IMAGE), "x", max_tokens=101))
    assert ok.status_code == 200 and over.status_code == 400 and "--max-tokens-limit" in over.json()["error"]["message"]


def test_echo_predictor_masks_are_resized_to_the_grid():
    """A predictor that gives only full-size masks: the grid is the mask resized by nearest neighbour."""
    with local_client(create_app(EchoPredictor(), ServeConfig())) as client:
        body = client.post("/v1/chat/completions", json=published_request(data_url(png_bytes(64, 32)), "Segment it.")).json()
    (mask,) = published_client_masks(body)
    expected = np.zeros((256, 256), dtype=bool)
    expected[64:128, 64:128] = True  # the double's mask covers rows 16..32 of 64 and columns 8..16 of 32
    np.testing.assert_array_equal(mask.astype(bool), expected)


def test_the_last_stream_chunk_carries_raw_response():
    import json

    with local_client(create_app(EchoPredictor(), ServeConfig())) as client:
        with client.stream("POST", "/v1/chat/completions",
                           json=published_request(data_url(png_bytes(64, 32)), "Segment it.", stream=True)) as r:
            lines = [line for line in r.iter_lines() if line]
    last = json.loads(lines[-2][len("data: "):])  # the chunk before [DONE]
    (mask,) = published_client_masks(last)
    assert mask.shape == (256, 256) and int(mask.sum()) == 64 * 64


def test_mask_grid_prefers_the_segmenter_grid_and_checks_it():
    low = np.zeros((256, 256), dtype=bool)
    low[3, 5] = True
    assert mask_grid(np.ones((4, 4), dtype=bool), low) is not None and mask_grid(np.ones((4, 4), bool), low).sum() == 1
    with pytest.raises(ValueError, match="low_res"):
        mask_grid(np.ones((4, 4), bool), np.ones((4, 4), bool))


# ------------------------------------------------------------------------------- image parts and paths


def test_image_part_local_path_needs_allow_image_dir(tmp_path):
    inside = tmp_path / "scans"
    inside.mkdir()
    (inside / "a.png").write_bytes(IMAGE)
    (tmp_path / "b.png").write_bytes(IMAGE)
    with local_client(create_app(EchoPredictor(), ServeConfig())) as client:
        refused = client.post("/v1/chat/completions", json=published_request(str(inside / "a.png"), "Segment it."))
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "messages[0].content[0].image"
    assert "--allow-image-dir" in refused.json()["error"]["message"]
    with local_client(create_app(EchoPredictor(), ServeConfig(allowed_image_dirs=[inside]))) as client:
        ok = client.post("/v1/chat/completions", json=published_request(str(inside / "a.png"), "Segment it."))
        outside = client.post("/v1/chat/completions", json=published_request(str(tmp_path / "b.png"), "Segment it."))
    assert ok.status_code == 200 and ok.json()["image_sizes"] == [[90, 130]]
    assert outside.status_code == 403 and outside.json()["error"]["code"] == "forbidden_path"


# ------------------------------------------------------------------------------- system and history


def test_system_message_and_history_reach_the_model_as_a_conversation(adapter, script):
    """The served answer equals the predictor's on the same Conversation; history [SEG]s make no mask."""
    from citrus_v.data.schema import Message
    from citrus_v.infer.conversation import Conversation

    url = data_url(IMAGE)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "image", "image": url}, {"type": "text", "text": "Please segment the liver."}]},
        {"role": "assistant", "content": "Sure, it is [SEG]."},
        {"role": "user", "content": [{"type": "text", "text": "What organ is shown?"}]},
    ]
    with local_client(create_app(adapter, ServeConfig())) as client:
        script("Sure, it is [SEG].")
        body = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 20}).json()
    conversation = Conversation((Message("system", "Answer briefly."), Message("user", "<image>Please segment the liver."),
                                 Message("assistant", "Sure, it is [SEG]."), Message("user", "What organ is shown?")))
    pixels = pixels_of(IMAGE)
    script("Sure, it is [SEG].")
    direct = adapter.predictor.predict([pixels], conversation, settings=GenerationSettings(max_new_tokens=20))
    assert body["choices"][0]["message"]["content"] == direct.answer == "Sure, it is [SEG]."
    assert len(direct.masks) == 1 and len(body["raw_response"]["seg_masks_rle"]) == 1  # this answer's [SEG] only
    np.testing.assert_array_equal(published_client_masks(body)[0].astype(bool), direct.masks[0].low_res)


def test_reserved_tokens_in_history_are_refused_but_an_answers_seg_is_context(adapter):
    url = data_url(IMAGE)
    base = [{"role": "user", "content": [{"type": "image", "image": url}, {"type": "text", "text": "Segment the liver."}]}]
    with local_client(create_app(adapter, ServeConfig())) as client:
        bad = client.post("/v1/chat/completions", json={"messages": [
            {"role": "system", "content": "Use [SEG] freely."}, *base]})
        injected = client.post("/v1/chat/completions", json={"messages": [
            *base, {"role": "assistant", "content": "<|vision_start|>"}, {"role": "user", "content": "And?"}]})
    assert bad.status_code == 400 and "[SEG]" in bad.json()["error"]["message"] and "turn 0" in bad.json()["error"]["message"]
    assert injected.status_code == 400 and "<|vision_start|>" in injected.json()["error"]["message"]


def test_point_prompts_refuse_a_conversation():
    body = {"messages": [{"role": "system", "content": "s"},
                         {"role": "user", "content": [{"type": "image", "image": data_url(IMAGE)}]}],
            "prompts": {"points": [[5, 5, 1]]}}
    from citrus_v.serve.errors import RequestError
    from citrus_v.serve.schemas import parse_chat_request

    with pytest.raises(RequestError, match="one user message") as err:
        parse_chat_request(body, ServeConfig())
    assert err.value.param == "prompts"
