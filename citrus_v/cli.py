"""The ``citrus-v`` command: a thin map from subcommands to the package's functions.

Each area of the package owns a ``commands.py`` with ``add_commands(subparsers)``;
heavy imports (torch, transformers) happen inside the handlers, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# area modules that register subcommands, in the order they appear in --help
COMMAND_MODULES = (
    "citrus_v.model.commands",  # describe
    "citrus_v.data.commands",  # data phantoms|validate|convert|show
    "citrus_v.train.commands",  # train
    "citrus_v.volume.commands",  # predict (images via infer/commands.py, volumes via volume/cli.py)
    "citrus_v.eval.commands",  # eval
    "citrus_v.serve.commands",  # serve
    "citrus_v.bench.commands",  # bench
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="citrus-v", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency inside the module: surface it
                raise
            continue  # area not built yet
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
