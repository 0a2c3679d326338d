"""``citrus-v data phantoms``: write the synthetic medical suite to a folder."""

from __future__ import annotations

import argparse
import sys


def add_phantoms_command(data_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``phantoms`` under the ``data`` command's subparsers."""
    from .suite import ALL_TASKS, DEFAULT_SOURCES

    p = data_subparsers.add_parser("phantoms", help="generate the synthetic medical suite (train/val/test JSONL)")
    p.add_argument("--out", required=True, help="output folder (gets train.jsonl, val.jsonl, test.jsonl, images/, masks/)")
    p.add_argument("--n", type=int, default=1000, help="number of train samples (default 1000)")
    p.add_argument("--n-val", type=int, default=None, help="val samples (default n/5)")
    p.add_argument("--n-test", type=int, default=None, help="test samples (default n/5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--workers", type=int, default=1, help="processes (output is identical for any count)")
    p.add_argument("--modalities", nargs="+", default=None, metavar="SRC",
                   help=f"subset of {list(DEFAULT_SOURCES)} (or 'totalseg' for both volumes)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help=f"subset of {list(ALL_TASKS)}")
    p.add_argument("--totalseg-dir", default=None,
                   help="folder with the TotalSegmentator example volumes (default: those shipped in citrus_v/assets/totalseg_example)")
    p.set_defaults(func=run_phantoms)
    d = data_subparsers.add_parser(
        "doc-pages", help="lab pages of the suite's train split, each asking all of its values (with copy points and reading lines)")
    d.add_argument("--out", required=True, help="output folder (gets doc_pages.jsonl and images/doc_pages/; the suite's own folder is fine)")
    d.add_argument("--n", type=int, required=True, help="number of pages")
    d.add_argument("--seed", type=int, default=0, help="the suite's seed")
    d.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    d.add_argument("--start", type=int, default=100_000,
                   help="train-split index the pages start at (default 100000: past any suite's own train records)")
    d.set_defaults(func=run_doc_pages)
    return p


def run_doc_pages(args: argparse.Namespace) -> int:
    from .suite import document_pages

    if args.n <= 0:
        print(f"error: --n must be > 0, got {args.n}", file=sys.stderr)
        return 2
    print(document_pages(args.out, args.n, seed=args.seed, size=args.size, start=args.start))
    return 0


def run_phantoms(args: argparse.Namespace) -> int:
    from .suite import generate_suite

    paths = generate_suite(args.out, args.n, args.n_val, args.n_test, seed=args.seed, size=args.size,
                           modalities=args.modalities, tasks=args.tasks, workers=args.workers,
                           totalseg_dir=args.totalseg_dir)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0
