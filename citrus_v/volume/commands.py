"""``citrus-v predict``: images go to ``infer/commands.py``, volumes and clicks to ``volume/cli.py``.

The subcommand is registered here, one layer above ``infer``, so that inference never imports
``volume`` (layers point one way).
"""

from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from citrus_v.infer.commands import add_predict_parser
    from citrus_v.volume.cli import add_volume_arguments

    p = add_predict_parser(subparsers)
    add_volume_arguments(p)  # --volume, --point/--box/--slice
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from citrus_v.infer.commands import run_predict as run_image_predict
    from citrus_v.volume.cli import run_volume, wants_volume_path

    if wants_volume_path(args):  # volumes and click/box refinement
        if args.tiles is not None:
            raise SystemExit("citrus-v predict: --tiles goes with --image alone, not with --volume, --point or --box")
        return run_volume(args)
    return run_image_predict(args)
