#!/usr/bin/env python
"""When do a streamed answer's chunks arrive? Asks a running ``citrus-v serve`` with the official
``openai`` client and prints, per run, the number of content chunks and the seconds (since the request)
of the first and last text chunk and of the chunk that carries the masks, with ``usage`` and labels.

    python scripts/stream_probe.py --url http://127.0.0.1:8000 --prompt "Please segment the liver." --runs 2
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import time


def image_url(side: int) -> str:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def probe(client, messages: list, max_tokens: int) -> str:
    start, times, usage, labels, finished = time.perf_counter(), [], None, None, None
    stream = client.chat.completions.create(model="citrus-v", messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        now = time.perf_counter() - start
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(now)
        if chunk.choices and chunk.choices[0].finish_reason:
            finished, labels = now, [m["label"] for m in chunk.model_extra.get("seg_masks_info", [])]
        if chunk.usage:
            usage = chunk.usage
    first, last = (f"{times[0]:.2f}", f"{times[-1]:.2f}") if times else ("-", "-")
    return (f"{len(times)} content chunks, first {first} s, last text {last} s, finish chunk {finished:.2f} s; "
            f"usage {usage.prompt_tokens} + {usage.completion_tokens}; labels {labels}")


def main() -> int:
    from openai import OpenAI

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--prompt", default="Please segment the liver.")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--side", type=int, default=224, help="side of the random test image")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    client = OpenAI(base_url=args.url.rstrip("/") + "/v1", api_key="none", max_retries=0)
    content = [{"type": "image_url", "image_url": {"url": image_url(args.side)}}, {"type": "text", "text": args.prompt}]
    for run in range(args.runs):
        print(f"run {run}: {probe(client, [{'role': 'user', 'content': content}], args.max_tokens)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
