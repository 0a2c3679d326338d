"""Through a real socket: the load script, the example client and the published client's request shape."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.serve.conftest import data_url, png_bytes

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def test_load_script_against_test_double(live_echo_server, echo_predictor, capsys):
    load_test = load_module(ROOT / "scripts" / "load_test.py")
    result = asyncio.run(load_test.run_load(live_echo_server.url, requests=24, timeout_s=60))
    assert result.failures == 0 and result.statuses == {200: 24} and len(result.latencies_s) == 24
    assert result.throughput > 0 and 0 < result.percentile(50) <= result.percentile(95)
    assert result.server_after["requests"] - result.server_before["requests"] == 24
    assert sum(echo_predictor.calls) == 24 and max(echo_predictor.calls) > 1  # concurrency became batches
    # the CLI entry prints the numbers and exits 0 when nothing failed
    assert load_test.main(["--url", live_echo_server.url, "--requests", "4"]) == 0
    out = capsys.readouterr().out
    assert "requests 4  failures 0" in out and "throughput" in out and "p95" in out


def test_load_script_bomb_flood_meets_the_pixel_budget(echo_predictor):
    """The --bomb-side mode: a flood of zero PNGs is answered 200/413/429 (the budget), never 5xx."""
    from citrus_v.serve.app import create_app
    from citrus_v.serve.settings import ServeConfig
    from tests.serve.conftest import LiveServer

    load_test = load_module(ROOT / "scripts" / "load_test.py")
    config = ServeConfig(max_request_pixels=50_000, max_pixels_in_flight=100_000)
    with LiveServer(create_app(echo_predictor, config)) as server:
        over = asyncio.run(load_test.run_load(server.url, requests=8, timeout_s=60, bomb_side=300))  # 90 000 > 50 000
        assert over.statuses == {413: 8} and over.failures == 0
        flood = asyncio.run(load_test.run_load(server.url, requests=16, timeout_s=60, bomb_side=200))  # 40 000 each
        assert set(flood.statuses) <= {200, 429} and flood.statuses.get(200, 0) >= 1 and flood.failures == 0
        assert flood.server_after["peak_pixels_in_flight"] <= 80_000  # never 3 at once
        assert flood.server_after["pixels_in_flight"] == 0


def test_load_script_refuses_non_loopback_and_unbounded():
    load_test = load_module(ROOT / "scripts" / "load_test.py")
    with pytest.raises(ValueError, match="only target this machine"):
        asyncio.run(load_test.run_load("http://example.com:8000", requests=1))
    with pytest.raises(ValueError, match=r"--requests: must be in \[1, 1024\]"):
        asyncio.run(load_test.run_load("http://127.0.0.1:1", requests=5000))
    with pytest.raises(ValueError, match="--timeout-s"):
        asyncio.run(load_test.run_load("http://127.0.0.1:1", requests=1, timeout_s=10_000))


def test_example_client(live_echo_server, tmp_path, capsys):
    client = load_module(ROOT / "examples" / "client.py")
    image = tmp_path / "scan.png"
    image.write_bytes(png_bytes(20, 24))
    assert client.main([str(image), "Segment the lesion.", "--url", live_echo_server.url, "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "Echo (1 image(s)): Segment the lesion." in out and "box lesion: [6.0, 5.0, 12.0, 10.0]" in out
    saved = np.asarray(Image.open(tmp_path / "m" / "mask_0.png"))
    assert saved.shape == (20, 24) and int((saved > 0).sum()) == (10 - 5) * (12 - 6)
    # a 4xx comes back as a readable error, exit code 1
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert client.main([str(tmp_path / "bad.png"), "x", "--url", live_echo_server.url]) == 1
    assert "HTTP 415" in capsys.readouterr().err


def test_published_client_request_shape(live_echo_server):
    """Exactly what the published Citrus-V client sends and reads (extra keys must not disturb it)."""
    payload = {
        "model": "Citrus-V-8B",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(png_bytes(40, 30))}},
            {"type": "text", "text": "Please segment the liver in this image."},
        ]}],
        "max_tokens": 1024,
        "temperature": 0.0,
    }
    r = httpx.post(f"{live_echo_server.url}/v1/chat/completions", json=payload, timeout=30)
    assert r.status_code == 200
    result = r.json()
    assert result["choices"][0]["message"]["content"] == "Echo (1 image(s)): Please segment the liver in this image."
    masks = [mask_utils.decode(rle) for rle in
             ({"size": m["size"], "counts": m["counts"].encode("utf-8")} for m in result["seg_masks_rle"])]
    assert len(masks) == 1 and masks[0].shape == (40, 30) and int(masks[0].sum()) == (20 - 10) * (15 - 7)
