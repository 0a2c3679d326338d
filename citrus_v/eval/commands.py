"""``citrus-v eval``: score a model on a JSONL file, write eval.json, eval.md, predictions.jsonl."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from citrus_v.errors import UserError

if TYPE_CHECKING:  # the runner imports numpy and the metrics: only when a command runs
    from citrus_v.eval.runner import EvalResult


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on a JSONL file (VQA, detection, segmentation, reports, documents)",
        description="Run the predictor over every record of --data, score each by its task and write "
        "OUT/eval.json, OUT/eval.md (a table stating each number's aggregation) and OUT/predictions.jsonl.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="records in JSON lines (paths relative to its folder)")
    src.add_argument("--from-predictions", type=Path, metavar="FILE",
                     help="re-score an earlier run's predictions.jsonl with this version's metrics, "
                          "without loading a model (masks are not re-read: their Dice is kept)")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded default model)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    p.add_argument("--batch-size", type=int, default=1, help="requests per generate call (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="cap on generated tokens per answer (default: the predictor's setting)")
    from citrus_v.infer.commands import add_model_arguments, tiles_argument

    p.add_argument("--tiles", default=None, type=tiles_argument, metavar="auto|N|RxC",
                   help="answer every record on tiles of its one image and stitch them, as predict --tiles "
                        "(for a test set of whole pathology or fundus images); --batch-size is then tiles per call")
    add_model_arguments(p)  # --device --dtype --min/max-pixels --tighten-boxes/--text-boxes (det_p50_text either way)
    p.add_argument("--protocol", choices=["mecovqa-g", "detection-p1"], default=None,
                   help="score as a published evaluation script does (pixel range, decoding, prompt, metric; "
                        "docs/published_checkpoint.md): mecovqa-g = Dice of the first 256x256 mask, "
                        "detection-p1 = Precision@1 of the first written box")
    p.add_argument("--template", choices=["auto", "ours", "published"], default="auto",
                   help="how <ref-object>/<bbox> in prompts are filled, as training fills them "
                        "(auto: the published text for the published folder and the 8b preset)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_eval)

    b = subparsers.add_parser(
        "benchmark",
        help="the published benchmark table: every benchmark whose released files are under --data-root",
        description="Run each benchmark of the published table whose released file is under --data-root "
        "(layout: docs/evaluation.md), skip the others with the file looked for, and write OUT/table.md, "
        "OUT/table.json and OUT/<benchmark>/predictions.jsonl.",
    )
    b.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded default model)")
    b.add_argument("--data-root", required=True, type=Path, help="folder holding the benchmarks' released files")
    b.add_argument("--out", required=True, type=Path, help="output directory")
    b.add_argument("--only", default=None, metavar="NAME", help="run one benchmark (names: docs/evaluation.md)")
    b.add_argument("--limit", type=int, default=None, help="the first N items of each benchmark (a smoke run)")
    b.add_argument("--batch-size", type=int, default=1, help="requests per generate call (default 1)")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    b.set_defaults(func=run_benchmark)


def run_eval(args: argparse.Namespace, predictor=None) -> int:
    """The handler; ``predictor`` lets tests inject one instead of loading ``--model``."""
    from citrus_v.data.schema import read_jsonl
    from citrus_v.eval.runner import evaluate

    if args.from_predictions is not None:
        return _rescore(args)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.data.is_file():
        raise UserError(f"--data {args.data} is not a file")
    protocol = getattr(args, "protocol", None)
    if protocol is not None:  # the protocol sets these as the published script does
        for flag in ("max_new_tokens", "min_pixels", "max_pixels"):
            if getattr(args, flag, None) is not None:
                raise UserError(f"--{flag.replace('_', '-')}: --protocol {protocol} sets the published value; "
                                "give one of the two")
        if args.tiles is not None:
            raise UserError(f"--tiles: --protocol {protocol} scores the published way, on the image whole")
    records = read_jsonl(args.data)
    predictor = predictor if predictor is not None else _eval_predictor(args)
    meta = _run_meta(args, predictor)
    if protocol is not None:  # the protocol sets the pixel range, decoding and tightening (meta["protocol"])
        meta["tighten_boxes"] = False
        result, meta["protocol"] = _evaluate_protocol(protocol, predictor, records, args)
        meta["pixels"] = getattr(predictor, "pixel_range", None)  # the protocol's range, set by it
        sys.stdout.write(f"{protocol}: {meta['protocol']['metric']} = {meta['protocol']['value']} "
                         f"(n {meta['protocol']['n']})\n")
        return _write(result, args.out, meta)
    filler = _filler(predictor, args)
    try:
        result = evaluate(predictor, records, args.data.parent, limit=args.limit, batch_size=args.batch_size,
                          progress=not args.no_progress, prompt_for=filler, tiles=args.tiles)
    except ValueError as err:  # a record whose placeholders cannot be filled (or, with --tiles, whose image cannot be tiled), named by index
        raise UserError(f"--data {args.data}: {err}") from None
    return _write(result, args.out, meta)


def _rescore(args: argparse.Namespace) -> int:
    """``--from-predictions``: score a predictions.jsonl again, no model; model flags are refused."""
    from citrus_v.eval.runner import read_predictions

    given = [flag for flag, value in (("--model", args.model), ("--limit", args.limit),
                                      ("--max-new-tokens", args.max_new_tokens)) if value is not None]
    given += [f"--{flag.replace('_', '-')}" for flag in ("device", "dtype", "min_pixels", "max_pixels")
              if getattr(args, flag) is not None]
    given += [] if args.tighten_boxes is None else ["--tighten-boxes" if args.tighten_boxes else "--text-boxes"]
    given += ["--protocol"] if getattr(args, "protocol", None) else []
    given += ["--tiles"] if getattr(args, "tiles", None) is not None else []
    if given:
        raise UserError(f"--from-predictions re-scores without a model; {', '.join(given)} would not apply")
    try:
        result = read_predictions(args.from_predictions)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    meta = {"from_predictions": str(args.from_predictions)}
    beside = args.from_predictions.parent / "eval.json"  # the run that made them, when it is still there
    if beside.is_file():
        with contextlib.suppress(ValueError, AttributeError):
            meta["predicted_by"] = json.loads(beside.read_text(encoding="utf-8")).get("meta")
    return _write(result, args.out, meta)


def _eval_predictor(args: argparse.Namespace):  # -> Predictor
    """``--model`` with the model flags; the folder's generation_config.json under ``--max-new-tokens``."""
    # heavy import (torch, transformers) only when a model is really needed
    try:
        from citrus_v.infer.predictor import Predictor
    except ModuleNotFoundError as err:
        if err.name != "citrus_v.infer.predictor":
            raise
        raise UserError("no predictor in this install (citrus_v/infer/predictor.py)") from None
    from citrus_v.infer.commands import model_kwargs_from_args
    from citrus_v.infer.generation import GenerationSettings

    if args.max_new_tokens is not None:
        GenerationSettings(max_new_tokens=args.max_new_tokens)  # validates the value before the model loads
    return Predictor.from_pretrained(args.model, generation={"max_new_tokens": args.max_new_tokens},
                                     **model_kwargs_from_args(args))


def _run_meta(args: argparse.Namespace, predictor) -> dict:  # noqa: ANN001
    """What eval.json says of the run: data, model, limits, boxes, image range, device and dtype."""
    import torch  # loaded already: a model ran or was given

    meta = {"data": str(args.data), "model": str(args.model) if args.model else "embedded default",
            "limit": args.limit, "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens, "tighten_boxes": getattr(predictor, "tighten_boxes", args.tighten_boxes),
            "pixels": getattr(predictor, "pixel_range", None), "tiles": _tiles_meta(getattr(args, "tiles", None))}
    if isinstance(getattr(predictor, "model", None), torch.nn.Module):  # where and in what precision it ran
        param = next(predictor.model.parameters())
        meta["device"], meta["dtype"] = str(param.device), str(param.dtype).removeprefix("torch.")
    return meta


def _tiles_meta(tiles) -> str | list[int] | None:  # noqa: ANN001
    """``--tiles`` as eval.json states it: "auto", [rows, cols] or None (each image whole)."""
    return tiles if tiles is None or tiles == "auto" else list(tiles)


def _filler(predictor, args: argparse.Namespace):  # noqa: ANN001
    from citrus_v.eval.runner import PromptFiller

    return PromptFiller.for_predictor(predictor, getattr(args, "template", "auto"))


def _evaluate_protocol(name: str, predictor, records: list, args: argparse.Namespace):  # noqa: ANN001
    """Predict and score ``records`` under a published protocol: (EvalResult, protocol summary)."""
    from citrus_v.eval import published_protocols as pp
    from citrus_v.eval.runner import aggregate, make_prompts, predict_records, score_record

    protocol = pp.PROTOCOLS[name]
    if hasattr(predictor, "template"):
        pp.configure(predictor, protocol)
    records = records[: args.limit] if args.limit is not None else records
    base = args.data.parent
    try:
        make = pp.detection_prompt if name == "detection-p1" else pp.segmentation_prompt(_filler(predictor, args))
        prompts = make_prompts(records, base, make)
    except ValueError as err:
        raise UserError(f"--data {args.data}: {err}") from None
    preds = predict_records(predictor, records, base, batch_size=args.batch_size, progress=not args.no_progress,
                            prompts=prompts)
    samples = [score_record(i, rec, pred, base) for i, (rec, pred) in enumerate(zip(records, preds))]
    values, summary = pp.score(protocol, records, preds, base)
    for s, prompt, v in zip(samples, prompts, values):
        s.prompt = prompt
        s.scores[protocol.sample_key] = v
    return aggregate(samples), summary


def _load_predictor(model: Path | None, settings=None, tighten_boxes: bool | None = None):
    # heavy import (torch, transformers) only when a model is really needed
    try:
        from citrus_v.infer.predictor import Predictor
    except ModuleNotFoundError as err:
        if err.name != "citrus_v.infer.predictor":
            raise
        raise UserError("no predictor in this install (citrus_v/infer/predictor.py)") from None
    return Predictor.from_pretrained(model, settings=settings, tighten_boxes=tighten_boxes)


def run_benchmark(args: argparse.Namespace, predictor=None) -> int:
    """The handler; ``predictor`` lets tests inject one instead of loading ``--model``."""
    from citrus_v.eval.benchmarks import table
    from citrus_v.eval.benchmarks.registry import BENCHMARKS
    from citrus_v.eval.benchmarks.suite import run_benchmarks

    names = [bm.name for bm in BENCHMARKS]
    if args.only is not None and args.only not in names:
        raise UserError(f"--only {args.only!r} is not a benchmark; known: {', '.join(names)}")
    if not args.data_root.is_dir():
        raise UserError(f"--data-root {args.data_root} is not a folder")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")

    def make():
        return predictor if predictor is not None else _load_predictor(args.model)

    rows = run_benchmarks(args.data_root, args.out, make, only=args.only, limit=args.limit,
                          batch_size=args.batch_size, progress=not args.no_progress,
                          say=lambda line: sys.stdout.write(line + "\n"))  # a malformed file: SourceError, one line
    meta = {"model": str(args.model) if args.model else "embedded default", "data_root": str(args.data_root),
            "only": args.only, "limit": args.limit, "batch_size": args.batch_size}
    pj, pm = table.write(rows, args.out, meta)
    sys.stdout.write(table.to_markdown(rows, meta))
    sys.stdout.write(f"\nwrote {pj}, {pm}\n")
    return 0


def _write(result: EvalResult, out: Path, meta: dict) -> int:
    from citrus_v.eval.runner import to_markdown, write_outputs

    paths = write_outputs(result, out, meta=meta)
    sys.stdout.write(to_markdown(result))
    sys.stdout.write(f"\nwrote {paths['json']}, {paths['md']}, {paths['predictions']}\n")
    return 0
