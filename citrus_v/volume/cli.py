"""``citrus-v predict --volume`` and the click/box options of ``citrus-v predict``.

``add_volume_arguments(parser)`` adds the options to the predict parser (volume/commands.py calls
it); ``wants_volume_path(args)`` says whether this module handles the call; ``run_volume(args)``
does it:

- ``--volume PATH`` (DICOM series folder, multi-frame DICOM, .nii/.nii.gz, .nrrd): slice-by-slice along ``--axis``,
  label NIfTI + montage + JSON numbers (+ a DICOM SEG for a series) under ``--out``; with ``--point``/``--box`` the slice
  ``--slice N`` is then refined by the clicks (text-prompted mask corrected, or produced by
  the clicks alone when ``--prompt ""``).
- ``--image FILE`` with ``--point``/``--box``: one refined mask for that image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_point(text: str) -> tuple[float, float, int]:
    """ "X,Y" or "X,Y,LABEL" (label 1 = positive, the default; 0 = negative)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1]), 1
        if len(parts) == 3:
            label = int(parts[2])
            if label not in (0, 1):
                raise ValueError
            return float(parts[0]), float(parts[1]), label
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"--point {text!r}: expected X,Y or X,Y,LABEL with LABEL 1 (positive) or 0 (negative)")


def parse_box(text: str) -> list[float]:
    parts = text.split(",")
    try:
        box = [float(p) for p in parts]
    except ValueError:
        box = []
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected X1,Y1,X2,Y2 (four numbers, original pixels)")
    return box


def add_volume_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("volumes and interactive prompts")
    g.add_argument("--volume", default=None, metavar="PATH",
                   help="DICOM series folder, enhanced multi-frame DICOM, NIfTI or NRRD: segment slice by slice "
                        "(DICOM also gets a DICOM SEG under --out)")
    g.add_argument("--modality", default=None, help="e.g. CT or MR when the file does not say (NIfTI): CT gets HU and the CT window")
    g.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="voxel axis to slice along (default 2)")
    g.add_argument("--batch-size", type=int, default=8, help="slices per predict_batch call (volumes)")
    g.add_argument("--max-tiles", type=int, default=20, help="most slices shown in montage.png")
    g.add_argument("--components", choices=("largest", "all"), default="largest",
                   help="volumes: keep each structure's largest connected component, stray islands removed and "
                        "reported (default), or all voxels predicted")
    g.add_argument(
        "--point", action="append", type=parse_point, default=[], metavar="X,Y[,LABEL]",
        help="a click in original pixels (of --image, or of the --slice picture); LABEL 1 add / 0 remove; repeatable",
    )  # fmt: skip
    g.add_argument("--box", type=parse_box, default=None, metavar="X1,Y1,X2,Y2", help="a box prompt in original pixels")
    g.add_argument("--slice", type=int, default=None, metavar="N", help="slice index (along --axis) the clicks are on")
    g.add_argument("--structure", type=int, default=0, help="which structure (0-based) the clicks refine")


def wants_volume_path(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "volume", None) or getattr(args, "point", None) or getattr(args, "box", None))


def run_volume(args: argparse.Namespace) -> int:
    from citrus_v.infer.commands import load_predictor_for, model_kwargs_from_args

    clicks = bool(args.point) or args.box is not None
    if args.volume is None and not args.image:
        raise SystemExit("citrus-v predict: --point/--box need --image FILE or --volume PATH")
    if args.volume is not None and args.image:
        raise SystemExit("citrus-v predict: give --image or --volume, not both")
    if args.volume is not None and clicks and args.slice is None:
        raise SystemExit("citrus-v predict: --point/--box on a volume need --slice N (the slice they are on)")
    volume = None if args.volume is None else _read_volume(args)  # a bad file fails before the model loads
    # the folder's generation defaults under the flags given
    predictor = load_predictor_for(args, **model_kwargs_from_args(args))
    if volume is None:
        return _run_image_refine(args, predictor)
    return _run_volume(args, predictor, volume, clicks)


def _read_volume(args: argparse.Namespace):  # -> Volume
    from citrus_v.data.medical_io import MedicalIOError, read_volume

    try:
        return read_volume(args.volume, modality=args.modality)
    except MedicalIOError as err:
        raise SystemExit(f"citrus-v predict: --volume {err}") from None


def _run_image_refine(args: argparse.Namespace, predictor) -> int:
    from PIL import Image

    from citrus_v.infer.overlay import draw_overlay, save_mask_png

    from citrus_v.infer.commands import frame_report, load_images_for

    image = load_images_for(args)[0]  # a multi-frame file needs --frame; MedicalIOError names the file
    try:
        pred = predictor.refine(image, points=args.point, box=args.box, prompt=args.prompt or None)
    except ValueError as err:
        raise SystemExit(f"citrus-v predict: {err}") from None
    result = {"answer": pred.answer, "masks": [], "mask_scores": [round(m.score, 4) for m in pred.masks],
              "points": [list(p) for p in args.point], "box": args.box, "overlay": None,
              "frames": frame_report(args)}  # fmt: skip
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        result["masks"] = [str(save_mask_png(m.mask, out / f"mask_{i}.png")) for i, m in enumerate(pred.masks)]
        Image.fromarray(draw_overlay(image, pred.masks, [])).save(out / "overlay.png")
        result["overlay"] = str(out / "overlay.png")
    _emit(args, result, lambda: [f"[frame] {p}: {f}" for p, f in result["frames"].items()]
          + [f"[mask {i}] {int(m.mask.sum())} px, predicted IoU {m.score:.3f}" for i, m in enumerate(pred.masks)])
    return 0


def _run_volume(args: argparse.Namespace, predictor, volume, clicks: bool) -> int:
    from citrus_v.volume.inference import empty_segmentation, segment_volume
    from citrus_v.volume.interactive import refine_volume_slice
    from citrus_v.volume.report import summary, write_outputs
    from citrus_v.volume.structures import names_from_prompt

    prompt = (args.prompt or "").strip()
    try:
        if prompt:
            seg = segment_volume(predictor, volume, prompt, axis=args.axis, batch_size=args.batch_size, window=args.window,
                                 components=args.components)
        else:
            if not clicks:
                raise ValueError("an empty --prompt needs --point/--box on a --slice")
            seg = empty_segmentation(volume, args.axis, names_from_prompt(prompt) or ["structure_1"])
        if clicks:
            refine_volume_slice(predictor, seg, args.slice, points=args.point, box=args.box, prompt=prompt or None,
                                structure=args.structure, window=args.window)  # fmt: skip
    except (ValueError, IndexError) as err:
        raise SystemExit(f"citrus-v predict: {err}") from None
    result = summary(seg) if args.out is None else write_outputs(seg, args.out, window=args.window, max_tiles=args.max_tiles)

    def lines() -> list[str]:
        out = [result["report"]]
        for name, s in result["structures"].items():
            kept = s["components"]
            note = f", largest of {kept['found']} components" if kept and kept["removed_voxels"] else ""
            out.append(f"[{name}] {s['volume_ml']:.2f} mL, max diameter {s['max_diameter_mm']:.1f} mm, slices {s['slice_range']}{note}")
        out += [f"[nifti] {result['nifti']}", f"[montage] {result['montage']}"] if result["nifti"] else []
        out += [f"[dicom seg] {result['dicom_seg']}"] if result.get("dicom_seg") else []
        out += [f"[dicom seg] note: {n}" for n in result.get("dicom_seg_notes", [])]
        return out

    _emit(args, result, lines)
    return 0


def _emit(args: argparse.Namespace, result: dict, lines) -> None:  # noqa: ANN001
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        for line in lines():
            print(line)
