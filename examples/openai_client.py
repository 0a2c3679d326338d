#!/usr/bin/env python
"""Talk to ``citrus-v serve`` with the official ``openai`` package (pip install openai).

    python examples/openai_client.py scan.png "Please segment the liver." --base-url http://127.0.0.1:8000/v1

The answer streams as the model writes it. The extras beyond OpenAI's fields (masks as COCO RLE,
boxes in original pixels, each mask's label and predicted IoU) arrive on the chunk that carries
``finish_reason``; the openai package keeps unknown fields in ``model_extra``. The last chunk
(``stream_options.include_usage``) carries the token counts.
"""

from __future__ import annotations

import argparse
import base64
import mimetypes
import sys
from pathlib import Path


def image_part(path: Path) -> dict:
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"  # .dcm: the server sniffs bytes
    url = f"data:{media};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}}


def ask(client, image: Path, prompt: str, model: str = "citrus-v", max_tokens: int = 256, out=sys.stdout) -> dict:
    """Stream the answer to ``out``; return the text, the extras and the usage."""
    stream = client.chat.completions.create(
        model=model, max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [image_part(image), {"type": "text", "text": prompt}]}],
    )
    text, extras, usage = [], {}, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
                print(choice.delta.content, end="", flush=True, file=out)
            if choice.finish_reason is not None:
                extras = dict(chunk.model_extra or {})
    print(file=out)
    return {"answer": "".join(text), "extras": extras, "usage": usage}


def describe(result: dict, out=sys.stdout) -> None:
    extras = result["extras"]
    for rle, info in zip(extras.get("seg_masks_rle", []), extras.get("seg_masks_info", [])):
        height, width = rle["size"]
        print(f"mask '{info['label']}': {height}x{width}, predicted IoU {info['score']}", file=out)
    for box in extras.get("boxes", []):
        print(f"box '{box['label']}': {box['bbox']}", file=out)
    if result["usage"]:
        usage = result["usage"]
        print(f"tokens: {usage['prompt_tokens']} prompt + {usage['completion_tokens']} generated", file=out)


def main(argv: list[str] | None = None) -> int:
    try:
        from openai import OpenAI, OpenAIError
    except ImportError:  # citrus-v does not need it; this example does
        print("this example needs the openai package: pip install openai", file=sys.stderr)
        return 2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("prompt")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    parser.add_argument("--model", default="citrus-v")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    try:
        describe(ask(client, args.image, args.prompt, args.model, args.max_tokens))
    except OpenAIError as err:  # the server's error.message, in one line
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
