"""``citrus-v predict``: answer a prompt about an image; write an overlay and one PNG per mask.

The subcommand is registered by ``citrus_v/volume/commands.py``, which adds ``--volume`` and the
click/box options and sends those calls to ``volume/cli.py``; plain image calls come here.
Heavy imports happen inside the handler so ``citrus-v --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_predict_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``predict`` parser for images. ``citrus_v.volume.commands`` registers it, adds the
    volume/click options and dispatches, so this layer never imports ``volume``."""
    p = subparsers.add_parser(
        "predict",
        help="answer a prompt about an image (boxes, masks, reports)",
        description="Answer a prompt about PNG/JPEG/DICOM/NIfTI images; write an overlay and masks under --out.",
    )
    add_input_arguments(p)
    p.add_argument("--prompt", required=True, help='the question or instruction, e.g. "Please segment the liver."')
    p.add_argument("--model", default=None, help="model folder (ours or the published checkpoint); default: embedded")
    p.add_argument("--out", default=None, help="folder for overlay.png and mask_<i>.png")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the answer text")
    p.add_argument(
        "--text-boxes",
        action="store_true",
        help="return boxes exactly as the model wrote them (default: the segmenter tightens each one; "
        "the written box is kept as text_bbox)",
    )
    add_generation_arguments(p)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run_predict)
    return p


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    from citrus_v.data.windowing import WINDOW_PRESETS, window_argument

    group = p.add_argument_group("input")
    group.add_argument(
        "--image", action="append", default=[], metavar="FILE", help="PNG/JPEG/DICOM/NIfTI (axial slice); repeatable"
    )
    group.add_argument(
        "--frame", action="append", type=parse_frame, default=[], metavar="N|T,N",
        help="which picture of a multi-frame DICOM/TIFF or NIfTI (axial slice N; T,N for time point T of a 4D NIfTI); "
        "once for every --image, or once per --image in order (required for such files)",
    )
    group.add_argument(
        "--window",
        default=None,
        type=window_argument,
        metavar="PRESET|C,W",
        help=f"display window for DICOM/NIfTI: {', '.join(sorted(WINDOW_PRESETS))}, percentile, or center,width "
        "(e.g. 40,400) (default: the file's own, else CT soft tissue / percentile)",
    )



def parse_frame(text: str) -> int | tuple[int, int]:
    """ "N" -> N; "T,N" -> (T, N) (time point, axial slice of a 4D NIfTI)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) in (1, 2) and all(p.isdigit() for p in parts):
        return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    raise argparse.ArgumentTypeError(f"--frame {text!r}: expected N or T,N (non-negative integers)")


def frames_for(args: argparse.Namespace) -> list:
    """One frame choice (or None) per ``--image``: ``--frame`` given once applies to all."""
    from citrus_v.errors import UserError

    if not args.frame:
        return [None] * len(args.image)
    if len(args.frame) == 1:
        return list(args.frame) * len(args.image)
    if len(args.frame) != len(args.image):
        raise UserError(f"--frame given {len(args.frame)} times for {len(args.image)} --image files (give it once, or once per --image)")
    return list(args.frame)


def load_images_for(args: argparse.Namespace) -> list:
    """The ``--image`` files as (H, W, 3) uint8, each at its ``--frame``; MedicalIOError names a bad file."""
    from citrus_v.data.medical_io import load_image

    return [load_image(path, window=args.window, frame=f) for path, f in zip(args.image, frames_for(args))]


def frame_report(args: argparse.Namespace) -> dict[str, int | list[int]]:
    """{image path: frame used} for the images read at an explicit ``--frame`` (the output names it)."""
    return {path: list(f) if isinstance(f, tuple) else f for path, f in zip(args.image, frames_for(args)) if f is not None}


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=512)
    group.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--top-k", type=int, default=0, help="0 = off")
    group.add_argument("--seed", type=int, default=None)


def settings_from_args(args: argparse.Namespace):  # -> GenerationSettings
    from citrus_v.infer.generation import GenerationSettings

    sampling = args.temperature is not None
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        do_sample=sampling,
        temperature=args.temperature if sampling else 1.0,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )


def prediction_to_dict(pred, mask_paths: list[str], overlay_path: str | None) -> dict[str, Any]:
    """The ``--json`` object: boxes in original pixels, masks as the PNG paths written."""
    return {
        "answer": pred.answer,
        "reasoning": pred.reasoning,
        "raw_text": pred.raw_text,
        "boxes": [b.to_dict() for b in pred.boxes],
        "masks": mask_paths,
        "mask_scores": [round(m.score, 4) for m in pred.masks],
        "report": pred.report.to_dict() if pred.report is not None else None,
        "mean_token_prob": None if pred.mean_token_prob is None else round(pred.mean_token_prob, 4),
        "num_generated_tokens": pred.num_generated_tokens,
        "overlay": overlay_path,
    }


def write_outputs(pred, image, out_dir: Path) -> tuple[list[str], str]:
    """overlay.png (first image) and mask_<i>.png (0/255) under ``out_dir``; returns their paths."""
    from PIL import Image

    from citrus_v.infer.overlay import draw_overlay, save_mask_png

    out_dir.mkdir(parents=True, exist_ok=True)
    mask_paths = [str(save_mask_png(m.mask, out_dir / f"mask_{i}.png")) for i, m in enumerate(pred.masks)]
    overlay_path = out_dir / "overlay.png"
    Image.fromarray(draw_overlay(image, pred.masks, pred.boxes)).save(overlay_path)
    return mask_paths, str(overlay_path)


def run_predict(args: argparse.Namespace) -> int:
    import torch

    from citrus_v.data.schema import SEG_TOKEN
    from citrus_v.errors import UserError
    from citrus_v.infer.predictor import Predictor

    if not args.image:
        raise UserError("give at least one --image FILE")
    for path in args.image:
        if not Path(path).exists():
            raise UserError(f"--image {path}: no such file")
    if not args.prompt.strip():
        raise UserError("--prompt is empty (an empty prompt goes with --point/--box only)")
    if SEG_TOKEN in args.prompt:  # the predictor refuses it too; here it is the user's flag
        raise UserError(f"--prompt contains the reserved token {SEG_TOKEN} (each one the model writes becomes a mask)")
    # the files are read before the model loads: a bad one fails fast, naming itself (MedicalIOError)
    images = load_images_for(args)
    settings = settings_from_args(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = Predictor.from_pretrained(
        args.model, device=device, settings=settings, window=args.window, tighten_boxes=not args.text_boxes
    )
    try:  # every special token of the tokenizer, as the server refuses them (issue 22)
        predictor.check_prompt(args.prompt, "--prompt")
    except ValueError as err:
        raise UserError(str(err)) from None
    pred = predictor.predict(images, args.prompt)

    mask_paths: list[str] = []
    overlay_path = None
    if args.out is not None:
        mask_paths, overlay_path = write_outputs(pred, images[0], Path(args.out))
    frames = frame_report(args)
    if args.json:
        json.dump(prediction_to_dict(pred, mask_paths, overlay_path) | {"frames": frames}, sys.stdout)
        sys.stdout.write("\n")
    else:
        for path, f in frames.items():
            print(f"[frame] {path}: {f}")
        if pred.reasoning:
            print(f"[reasoning] {pred.reasoning}")
        print(pred.answer)
        for b in pred.boxes:
            written = "" if b.text_bbox is None else (
                f" (written {[round(v, 1) for v in b.text_bbox]}; tightened by the segmenter, predicted IoU {b.score:.3f})"
            )
            print(f"[box] {b.label or '-'}: {[round(v, 1) for v in b.bbox]}{written}")
        for i, m in enumerate(pred.masks):
            where = f" -> {mask_paths[i]}" if mask_paths else ""
            print(f"[mask {i}] {int(m.mask.sum())} px, predicted IoU {m.score:.3f}{where}")
        if pred.mean_token_prob is not None:
            print(f"[confidence] mean token probability {pred.mean_token_prob:.3f}")
        if overlay_path:
            print(f"[overlay] {overlay_path}")
    return 0
