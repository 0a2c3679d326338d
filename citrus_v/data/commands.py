"""`citrus-v data ...`: validate, convert and show JSON-lines data (phantoms lives in data/phantoms)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections import Counter
from pathlib import Path

from citrus_v.data.windowing import window_argument
from citrus_v.errors import UserError


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="validate, convert and show training data")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = sub.add_parser(
        "validate", help="check a JSONL file and open what its records point to; print the count per task",
        description="Check every record, and open its images and masks (headers where the format allows): images "
        "decode within --max-pixels, masks match their image's size, boxes lie inside the image, paths stay under the "
        "file's folder. Training applies the same checks to each record it reads.",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--skip-invalid", action="store_true", help="report bad lines (count and line numbers) instead of stopping")
    p.add_argument("--records-only", action="store_true", help="check the records' form only; do not open their files")
    p.add_argument("--check-files", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.add_argument("--allow-outside", action="store_true",
                   help="allow image/mask paths outside the JSONL file's folder (absolute paths elsewhere, ../)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest image, width x height (x frames), default 40000000")
    p.set_defaults(func=run_validate)

    p = sub.add_parser("convert", help="convert a public dataset file to DIR/data.jsonl + images")
    p.add_argument("--format", required=True, dest="fmt", help="vqa-rad, slake, pathvqa, pmc-vqa, mecovqa-g(-plus), medsegbench, medxray-cot, meddocbench; "
                   "folders: cvc-clinicdb, covid-chestxray, monuseg, drive, bccd, totalseg, dcmqi")
    p.add_argument("src", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--images-root", type=Path, default=None, help="folder the set's image paths are relative to")
    p.set_defaults(func=run_convert)

    p = sub.add_parser(
        "real-suite", help="convert every real source (issue 21) found under a folder into train/val/test JSONL",
        description="SOURCES holds one subfolder per source: vqa-rad, covid-chestxray, cvc-clinicdb, monuseg, drive, "
        "bccd, totalseg, dcmqi (docs/default_model.md, 'Real data (issue 21)', says what to fetch for each). Writes OUT/<source>/"
        "{train,val,test}.jsonl, the merged OUT/{train,val,test}.jsonl and OUT/counts.json; the splits are fixed in "
        "citrus_v/data/sources/splits.py. A missing source is skipped with a note; with --only, the other "
        "sources already converted in OUT are kept and merged again.",
    )
    p.add_argument("--sources", required=True, type=Path, help="folder with one subfolder per source")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--only", default=None, help="comma-separated source names (default: all)")
    p.set_defaults(func=run_real_suite)

    p = sub.add_parser("show", help="draw one record's image with its boxes and masks as PNG")
    p.add_argument("file", type=Path)
    p.add_argument("--index", type=int, default=0, help="0-based record index (blank lines not counted)")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: FILE.<index>.png)")
    p.add_argument("--window", default=None, type=window_argument, metavar="PRESET|C,W",
                   help="window for DICOM/NIfTI images: a preset (e.g. ct_lung), percentile, or center,width (e.g. 40,400)")
    p.set_defaults(func=run_show)

    _add_phantoms(sub)


def _add_phantoms(sub: argparse._SubParsersAction) -> None:
    name = "citrus_v.data.phantoms.cli"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:  # a real missing dependency inside the module: surface it
            raise
        return
    module.add_phantoms_command(sub)


def run_validate(args: argparse.Namespace) -> int:
    from citrus_v.data.checks import FileRules, record_problems
    from citrus_v.data.schema import SkipReport, iter_jsonl_lines

    if not args.file.is_file():
        raise UserError(f"{args.file}: no such file")
    if args.records_only and args.check_files:
        raise UserError("--records-only and --check-files contradict each other")
    try:
        rules = FileRules(allow_outside=args.allow_outside, **({} if args.max_pixels is None else {"max_pixels": args.max_pixels}))
    except ValueError as err:
        raise UserError(f"--max-pixels {args.max_pixels}: must be a positive integer") from err
    report = SkipReport()
    counts: Counter[str] = Counter()
    problems: list[str] = []
    lines = iter_jsonl_lines(args.file, skip_invalid=args.skip_invalid, report=report)  # RecordError: one line, exit 2
    for lineno, rec in lines:
        counts[rec.task or "unlabelled"] += 1
        if not args.records_only:
            problems += [str(p) for p in record_problems(rec, args.file, lineno, args.file.parent, rules)]
    total = sum(counts.values())
    print(f"{args.file}: {total} valid records")
    for task, c in sorted(counts.items()):
        print(f"  {task}: {c}")
    if report.count:
        print(f"skipped {report.count} invalid line(s): {', '.join(str(ln) for ln, _ in report.skipped)}")
        for _, msg in report.skipped:
            print(f"  {msg}")
    if problems:
        print(f"error: {len(problems)} problem(s) with the files and boxes the records point to:", file=sys.stderr)
        for m in problems[:50]:
            print(f"  {m}", file=sys.stderr)
        if len(problems) > 50:
            print(f"  ... and {len(problems) - 50} more", file=sys.stderr)
        return 1
    return 0


def run_convert(args: argparse.Namespace) -> int:
    import inspect

    from citrus_v.data.sources import FORMATS, convert

    if args.fmt not in FORMATS:
        raise UserError(f"--format: unknown format {args.fmt!r}; known: {', '.join(sorted(FORMATS))}")
    kwargs = {}
    if args.images_root is not None:
        if "images_root" not in inspect.signature(FORMATS[args.fmt][0]).parameters:
            raise UserError(f"--images-root does not apply to {args.fmt} (images are embedded)")
        kwargs["images_root"] = args.images_root
    skipped: Counter[str] = Counter()
    if "skipped" in inspect.signature(FORMATS[args.fmt][0]).parameters:
        kwargs["skipped"] = skipped
    jsonl, records = convert(args.fmt, args.src, args.out, **kwargs)  # SourceError names the file and row
    counts = Counter(r.task for r in records)
    print(f"wrote {len(records)} records to {jsonl} ({', '.join(f'{t}: {c}' for t, c in sorted(counts.items()))})")
    for why, n in sorted(skipped.items()):
        print(f"  left out {n}: {why}")
    return 0


def run_real_suite(args: argparse.Namespace) -> int:
    from citrus_v.data.sources.real_suite import NAMES, build_suite, format_counts

    if not args.sources.is_dir():
        raise UserError(f"--sources {args.sources}: no such folder")
    only = NAMES if args.only is None else tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        raise UserError(f"--only: unknown source(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    summary = build_suite(args.sources, args.out, only)
    if not set(summary["sources"]) - set(summary["kept"]):
        raise UserError(f"--sources {args.sources}: none of the sources {', '.join(only)} is there (see the notes above)")
    print("\n".join(format_counts(summary)))
    print(f"wrote {args.out}/{{train,val,test}}.jsonl and {args.out}/counts.json")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from citrus_v.data.medical_io import load_image
    from citrus_v.data.schema import iter_jsonl, resolve
    from citrus_v.data.visualize import load_mask, overlay, save_png

    rec = next((r for n, r in enumerate(iter_jsonl(args.file)) if n == args.index), None)
    if rec is None:
        raise UserError(f"{args.file}: --index {args.index}: no record at index {args.index}")
    if not rec.images:
        raise UserError(f"{args.file}: record {args.index} has no image (task {rec.task})")
    try:
        image = load_image(resolve(rec.images[0], args.file.parent), window=args.window)
        masks = [load_mask(resolve(m, args.file.parent), image.shape[:2]) for m in rec.masks]
    except ValueError as err:  # MedicalIOError, or a mask whose size does not match its image
        raise UserError(f"{args.file}: record {args.index}: {err}") from err
    boxes = rec.objects.pixels(image.shape[:2]) if rec.objects else []
    labels = rec.objects.labels() if rec.objects and rec.objects.ref else []
    out = args.out or args.file.with_name(f"{args.file.stem}.{args.index}.png")
    save_png(overlay(image, boxes=boxes, labels=labels, masks=masks), out)
    print(f"wrote {out} ({len(boxes)} boxes, {len(masks)} masks)")
    return 0
