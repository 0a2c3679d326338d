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
    p.add_argument("--model", default=None,
                   help="model folder (ours or the published checkpoint), or a hub id already in the local Hugging Face "
                        "cache (e.g. jdh-algo/Citrus-V-8B; never downloaded); default: embedded")
    p.add_argument("--out", default=None, help="folder for overlay.png and mask_<i>.png")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the answer text")
    p.add_argument("--tiles", default=None, type=tiles_argument, metavar="auto|N|RxC",
                   help="cut the image into tiles, answer on each and stitch the masks: for whole pathology or fundus "
                        "images (nuclei, vessels), which the default learned on ~300 px tiles; auto = tiles of about "
                        "300 px (default: the image whole)")
    add_generation_arguments(p)
    add_model_arguments(p)
    p.set_defaults(func=run_predict)
    return p


def tiles_argument(text: str) -> str | tuple[int, int]:
    """``--tiles``: auto, N or RxC; argparse turns the ValueError into a one-line usage error."""
    from citrus_v.infer.tiling import parse_tiles

    try:
        return parse_tiles(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    """The ``--image`` files as (H, W, 3) uint8, each at its ``--frame``; MedicalIOError names a bad file.
    A legacy DICOM (no preamble, read with pydicom's force=True) is named on stderr."""
    from citrus_v.data.dicom_io import LEGACY_NOTE, is_legacy_dicom
    from citrus_v.data.medical_io import file_kind, load_image

    images = [load_image(path, window=args.window, frame=f) for path, f in zip(args.image, frames_for(args))]
    for path in args.image:
        if file_kind(path) == "dicom" and is_legacy_dicom(path):
            print(f"[dicom] {path}: {LEGACY_NOTE}", file=sys.stderr)
    return images


def frame_report(args: argparse.Namespace) -> dict[str, int | list[int]]:
    """{image path: frame used} for the images read at an explicit ``--frame`` (the output names it)."""
    return {path: list(f) if isinstance(f, tuple) else f for path, f in zip(args.image, frames_for(args)) if f is not None}


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "generation", "defaults: the model folder's generation_config.json, else greedy with 512 new tokens; "
        "each flag given replaces that one setting")
    group.add_argument("--max-new-tokens", type=int, default=None)
    group.add_argument("--temperature", type=float, default=None, help="0 = greedy; above 0 samples at it")
    group.add_argument("--top-p", type=float, default=None)
    group.add_argument("--top-k", type=int, default=None, help="0 = off")
    group.add_argument("--repetition-penalty", type=float, default=None, help="1 = off")
    group.add_argument("--seed", type=int, default=None)


DTYPES = ("float32", "bfloat16", "float16")


def add_model_arguments(p: argparse.ArgumentParser, boxes: bool = True) -> None:
    """How the model loads and runs (predict, eval, serve): device, dtype, image range, boxes."""
    group = p.add_argument_group("model")
    group.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    group.add_argument("--dtype", default=None, choices=DTYPES,
                       help="weights load straight into this dtype (default float32; bfloat16 for the 8B on a GPU)")
    group.add_argument("--min-pixels", type=int, default=None, metavar="N",
                       help="smallest image the ViT sees, in pixels (default: the model folder's range; "
                            "published folders: 3136)")
    group.add_argument("--max-pixels", type=int, default=None, metavar="N",
                       help="largest image the ViT sees, in pixels (default: the model folder's range; "
                            "published folders: 65535, the published deploy setting)")
    if boxes:
        tighten = group.add_mutually_exclusive_group()
        tighten.add_argument("--tighten-boxes", dest="tighten_boxes", action="store_const", const=True, default=None,
                             help="the segmenter tightens each written box (the written one is kept as text_bbox)")
        tighten.add_argument("--text-boxes", dest="tighten_boxes", action="store_const", const=False,
                             help="boxes exactly as the model wrote them")
        p.epilog = (p.epilog or "") + " Boxes: tightened or as written as the model folder declares (config tighten_boxes: " \
            "ours tightened, the published layout as written) unless --tighten-boxes/--text-boxes say."


def model_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``Predictor.from_pretrained`` keywords from the model flags; UserError naming a bad flag."""
    import torch

    from citrus_v.errors import UserError

    for flag in ("min_pixels", "max_pixels"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if None not in (args.min_pixels, args.max_pixels) and args.min_pixels > args.max_pixels:
        raise UserError(f"--min-pixels {args.min_pixels} is above --max-pixels {args.max_pixels}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise UserError(f"--device {device!r}: {err}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    kwargs = {"device": device, "dtype": getattr(torch, args.dtype) if args.dtype else None,
              "min_pixels": args.min_pixels, "max_pixels": args.max_pixels}
    if hasattr(args, "tighten_boxes"):
        kwargs["tighten_boxes"] = args.tighten_boxes
    return kwargs


def generation_overrides(args: argparse.Namespace) -> dict:
    """The generation flags the user gave (None = not given): ``Predictor.from_pretrained(generation=...)``."""
    from citrus_v.errors import UserError

    if args.temperature is not None and args.temperature < 0:
        raise UserError(f"--temperature {args.temperature}: must be >= 0 (0 = greedy)")
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "top_k": args.top_k, "repetition_penalty": args.repetition_penalty, "seed": args.seed}


def settings_from_args(args: argparse.Namespace):  # -> GenerationSettings
    """The flags over the built-in defaults (no model folder read): a ``UserError`` names a bad value."""
    from citrus_v.errors import UserError
    from citrus_v.infer.generation import GenerationSettings
    from citrus_v.infer.generation_config import merge_settings

    try:
        return merge_settings(GenerationSettings(), **generation_overrides(args))
    except ValueError as err:
        raise UserError(_flag_message(err)) from None


def load_predictor_for(args: argparse.Namespace, **kwargs):
    """``Predictor.from_pretrained`` with the folder's generation defaults under the flags given."""
    from citrus_v.errors import UserError
    from citrus_v.infer.predictor import Predictor

    overrides = generation_overrides(args)
    settings_from_args(args)  # a bad flag is named before the model loads
    try:
        return Predictor.from_pretrained(args.model, generation=overrides, window=args.window, **kwargs)
    except ValueError as err:
        if "GenerationSettings." in str(err):  # a flag against the folder's defaults (e.g. top_p 0 there)
            raise UserError(_flag_message(err)) from None
        raise


def _flag_message(err: ValueError) -> str:
    text = str(err)
    for name in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed"):
        text = text.replace(f"GenerationSettings.{name}", "--" + name.replace("_", "-"))
    return text


def generation_report(settings, model_dir: str | None) -> dict:
    """The settings a prediction used and where the defaults came from (``predict --json``)."""
    from dataclasses import asdict

    from citrus_v.infer.generation_config import FILE_NAME
    from citrus_v.infer.predictor import default_model_dir

    folder = Path(model_dir) if model_dir is not None else default_model_dir()
    report = asdict(settings)
    report["stop_token_ids"] = list(settings.stop_token_ids)
    report.pop("fast", None)
    report["defaults_from"] = str(folder / FILE_NAME) if (folder / FILE_NAME).is_file() else "built-in"
    return report


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


def run_settings(predictor) -> dict[str, Any]:
    """What ``--json`` says about how the model ran: its image range (and where it came from),
    whether boxes were tightened, device and dtype."""
    param = next(predictor.model.parameters())
    return {"pixels": predictor.pixel_range, "tighten_boxes": predictor.tighten_boxes,
            "device": str(param.device), "dtype": str(param.dtype).removeprefix("torch.")}


def write_outputs(pred, image, out_dir: Path) -> tuple[list[str], str]:
    """overlay.png (first image) and mask_<i>.png (0/255) under ``out_dir``; returns their paths."""
    from PIL import Image

    from citrus_v.infer.overlay import draw_overlay, save_mask_png

    out_dir.mkdir(parents=True, exist_ok=True)
    mask_paths = [str(save_mask_png(m.mask, out_dir / f"mask_{i}.png")) for i, m in enumerate(pred.masks)]
    overlay_path = out_dir / "overlay.png"
    Image.fromarray(draw_overlay(image, pred.masks, pred.boxes)).save(overlay_path)
    return mask_paths, str(overlay_path)


def tile_grid_for(images: list, tiles: str | tuple[int, int]) -> tuple[int, int]:
    """``--tiles`` on the one image given -> (rows, cols), checked before the model loads."""
    from citrus_v.errors import UserError
    from citrus_v.infer.tiling import grid_for, tile_grid

    if len(images) != 1:
        raise UserError(f"--tiles takes one --image, got {len(images)}")
    h, w = images[0].shape[:2]
    try:
        return grid_for(tiles, h, w)
    except ValueError as err:
        rows, cols = tile_grid(h, w) if tiles == "auto" else tiles
        raise UserError(f"--tiles {rows}x{cols}: {err}") from None


def _predict_tiled(predictor, image, prompt: str, grid: tuple[int, int]):  # noqa: ANN001
    """``--tiles`` (``grid`` from ``tile_grid_for``): the stitched Prediction, and what --json and the text
    output say of the tiles."""
    from collections import Counter

    from tqdm.auto import tqdm

    with tqdm(total=grid[0] * grid[1], desc="tiles", unit="tile", disable=grid[0] * grid[1] <= 4, file=sys.stderr) as bar:
        pred = predictor.predict_tiled(image, prompt, grid, progress=lambda n: bar.update(n - bar.n))
    answers = Counter(tile.answer for tile in pred.tiles)
    return pred, {"grid": list(grid), "answers": dict(answers), "tiles": [tile.to_dict() for tile in pred.tiles]}


def run_predict(args: argparse.Namespace) -> int:
    from citrus_v.data.schema import SEG_TOKEN
    from citrus_v.errors import UserError

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
    grid = None if args.tiles is None else tile_grid_for(images, args.tiles)  # before the model loads
    predictor = load_predictor_for(args, **model_kwargs_from_args(args))
    pixels = predictor.pixel_range
    print(f"[pixels] {pixels['min_pixels']}..{pixels['max_pixels']} ({pixels['source']})", file=sys.stderr)
    try:  # every special token of the tokenizer, as the server refuses them (issue 22)
        predictor.check_prompt(args.prompt, "--prompt")
    except ValueError as err:
        raise UserError(str(err)) from None
    tiling = None
    if grid is None:
        pred = predictor.predict(images, args.prompt)
    else:
        pred, tiling = _predict_tiled(predictor, images[0], args.prompt, grid)

    mask_paths: list[str] = []
    overlay_path = None
    if args.out is not None:
        mask_paths, overlay_path = write_outputs(pred, images[0], Path(args.out))
    frames = frame_report(args)
    if args.json:
        report = {"frames": frames, "run": run_settings(predictor), "generation": generation_report(predictor.settings, args.model)}
        if tiling is not None:
            report["tiles"] = tiling
        json.dump(prediction_to_dict(pred, mask_paths, overlay_path) | report, sys.stdout)
        sys.stdout.write("\n")
    else:
        for path, f in frames.items():
            print(f"[frame] {path}: {f}")
        if tiling is not None:
            rows, cols = tiling["grid"]
            print(f"[tiles] {rows}x{cols}; answers: " + "; ".join(f"{n}x {a!r}" for a, n in tiling["answers"].items()))
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
