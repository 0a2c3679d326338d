"""Serve test helpers: a deterministic test double of the predictor and image builders."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from citrus_v.infer.types import Box, Mask, Prediction


class EchoPredictor:
    """Fixed, checkable predictions: one box and one mask per request, both over the image's
    top-left quarter ((H//4..H//2, W//4..W//2)), text echoing the prompt and image count. The box
    comes tightened, its written box 6 px wider up and left and 2 px down and right."""

    model_name = "citrus-v-test-double"

    def __init__(self) -> None:
        self.calls: list[int] = []  # batch size of each predict_batch call

    def predict_batch(self, items, settings):
        self.calls.append(len(items))
        out = []
        for images, prompt in items:
            h, w = images[0].shape[:2] if images else (8, 8)
            mask = np.zeros((h, w), dtype=bool)
            mask[h // 4 : h // 2, w // 4 : w // 2] = True
            out.append(
                Prediction(
                    answer=f"Echo ({len(images)} image(s)): {prompt}",
                    raw_text=f"<think>looked</think><answer>Echo: {prompt} [SEG]</answer>",
                    reasoning="looked",
                    # as if the segmenter had tightened the written box [w/4-6, h/4-6, w/2+2, h/2+2]
                    boxes=[Box([w / 4, h / 4, w / 2, h / 2], "lesion", text_bbox=[w / 4 - 6, h / 4 - 6, w / 2 + 2, h / 2 + 2], score=0.8)],
                    masks=[Mask(mask, 0.875, "lesion")],
                    num_generated_tokens=7,
                )
            )
        return out


def png_bytes(h: int = 32, w: int = 48, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(h * 1000 + w)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def tiff_bytes(h: int = 32, w: int = 48) -> bytes:
    """The pixels of ``png_bytes(h, w)`` as an uncompressed one-page RGB TIFF."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(h, w))).convert("RGB").save(buf, format="TIFF")
    return buf.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode("ascii")


def chat_body(url: str | None, text: str = "Please segment the lesion.", **extra) -> dict:
    content: list[dict] = []
    if url is not None:
        content.append({"type": "image_url", "image_url": {"url": url}})
    content.append({"type": "text", "text": text})
    return {"model": "citrus-v", "messages": [{"role": "user", "content": content}], **extra}


def local_client(app, **kwargs):
    """An in-process client that, like a browser on this workstation, sends ``Host: 127.0.0.1``
    (the server refuses other hosts by default; TestClient's own is ``testserver``)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1", **kwargs)


@pytest.fixture
def echo_predictor() -> EchoPredictor:
    return EchoPredictor()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn on 127.0.0.1:<free port> in a thread, for clients that need a real socket."""

    def __init__(self, app) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        import time

        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 20 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_echo_server(echo_predictor):
    from citrus_v.serve.app import create_app
    from citrus_v.serve.settings import ServeConfig

    with LiveServer(create_app(echo_predictor, ServeConfig(max_batch=8, batch_wait_ms=10))) as server:
        yield server


def write_tiny_model(directory):
    """A tiny random CitrusV (seed 0) with a small trained tokenizer saved in ``directory``; returns it."""
    import torch

    from citrus_v.config import tiny_config
    from citrus_v.data.tokenizer import train_tiny_tokenizer
    from citrus_v.model.citrus_v import CitrusV
    from tests.infer.conftest import SENTENCES

    train_tiny_tokenizer(SENTENCES, vocab_size=400).save_pretrained(str(directory))
    torch.manual_seed(0)
    CitrusV(tiny_config()).eval().save_pretrained(directory)
    return directory
