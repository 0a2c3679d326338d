"""``citrus-v describe``: parameter counts per part of a config preset (built on meta: instant)."""

from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("describe", help="parameter counts per model part")
    from citrus_v.config import PRESETS

    p.add_argument("--config", default="tiny", choices=sorted(PRESETS), help="preset name (default tiny)")
    p.set_defaults(func=describe)


def describe(args: argparse.Namespace) -> int:
    from citrus_v.model.build import count_parameters

    counts = count_parameters(args.config)
    width = max(len(k) for k in counts)
    print(f"config {args.config}")
    for part, n in counts.items():
        if part != "total":
            print(f"  {part:<{width}}  {n:>13,}")
    # the total as a plain integer, so scripts can parse it
    print(f"total {counts['total']}")
    return 0
