"""``citrus-v eval``: score a model on a JSONL file, write eval.json, eval.md, predictions.jsonl."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on a JSONL file (VQA, detection, segmentation, reports, documents)",
        description="Run the predictor over every record of --data, score each by its task and write "
        "OUT/eval.json, OUT/eval.md (a table stating each number's aggregation) and OUT/predictions.jsonl.",
    )
    p.add_argument("--data", required=True, type=Path, help="records in JSON lines (paths relative to its folder)")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded default model)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace, predictor=None) -> int:
    """The handler; ``predictor`` lets tests inject one instead of loading ``--model``."""
    from citrus_v.data.schema import read_jsonl
    from citrus_v.eval.runner import evaluate, to_markdown, write_outputs

    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"citrus-v eval: --limit must be >= 1, got {args.limit}")
    if not args.data.is_file():
        raise SystemExit(f"citrus-v eval: --data {args.data} is not a file")
    records = read_jsonl(args.data)
    if predictor is None:
        # heavy import (torch, transformers) only when a model is really needed
        from citrus_v.infer.predictor import Predictor

        predictor = Predictor.from_pretrained(args.model)
    result = evaluate(predictor, records, args.data.parent, limit=args.limit, progress=not args.no_progress)
    meta = {"data": str(args.data), "model": str(args.model) if args.model else "embedded default",
            "limit": args.limit}
    paths = write_outputs(result, args.out, meta=meta)
    sys.stdout.write(to_markdown(result))
    sys.stdout.write(f"\nwrote {paths['json']}, {paths['md']}, {paths['predictions']}\n")
    return 0
