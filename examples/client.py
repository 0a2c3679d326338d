#!/usr/bin/env python
"""Ask a running ``citrus-v serve`` about an image and save its masks: standard library + pycocotools.

    python examples/client.py scan.png "Please segment the liver." --url http://127.0.0.1:8000 --out masks/

The request is a plain OpenAI chat completion with the image as a data: URL; the answer is
``choices[0].message.content``, masks are COCO RLE in ``seg_masks_rle`` (original image size) and
boxes ``[x1, y1, x2, y2]`` in original pixels in ``boxes``.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import sys
import urllib.error
import urllib.request
from pathlib import Path


def image_data_url(path: Path) -> str:
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"  # .dcm: the server sniffs bytes
    return f"data:{media};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def ask(url: str, image: Path, prompt: str, max_tokens: int = 256, api_key: str | None = None, timeout: float = 300.0) -> dict:
    body = {
        "model": "citrus-v",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(image)}},
            {"type": "text", "text": prompt},
        ]}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url.rstrip("/") + "/v1/chat/completions", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:  # the server explains a 4xx in error.message
        detail = json.loads(err.read() or b"{}").get("error", {}).get("message", err.reason)
        raise RuntimeError(f"HTTP {err.code}: {detail}") from None


def save_masks(response: dict, out_dir: Path) -> list[Path]:
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rle in enumerate(response["seg_masks_rle"]):
        mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})  # (H, W) uint8
        path = out_dir / f"mask_{i}.png"
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("prompt")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--out", type=Path, default=None, help="write mask_<i>.png here")
    args = parser.parse_args(argv)
    try:
        response = ask(args.url, args.image, args.prompt, args.max_tokens, args.api_key)
    except (RuntimeError, urllib.error.URLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(response["choices"][0]["message"]["content"])
    for box in response.get("boxes", []):
        print(f"box {box['label'] or '-'}: {box['bbox']}")
    if args.out is not None:
        for path in save_masks(response, args.out):
            print(f"mask -> {path}")
    else:
        print(f"{len(response['seg_masks_rle'])} mask(s) (use --out DIR to save them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
