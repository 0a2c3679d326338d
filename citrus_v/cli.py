"""The ``citrus-v`` command: a thin map from subcommands to the package's functions.

Each area of the package owns a ``commands.py`` with ``add_commands(subparsers)``;
heavy imports (torch, transformers) happen inside the handlers, so ``--help`` is fast.

User errors are reported here, in one place: a handler raises :class:`citrus_v.errors.UserError`
(or one of the package's error types derived from it), an ``OSError`` about a file, or
``SystemExit("message")``, and :func:`main` prints ONE line on stderr and returns 2. ``--debug``
(anywhere on the command line) shows the traceback instead.
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


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away) and ``--debug`` on every
    subcommand, so it may come before or after the subcommand."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="on an error, show the Python traceback instead of one line")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="citrus-v", description=__doc__.splitlines()[0])
    parser.set_defaults(debug=False)
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
    from citrus_v.errors import UserError

    args = build_parser().parse_args(argv)
    command = " ".join(["citrus-v", args.command, *([args.data_command] if args.command == "data" else [])])
    try:
        return int(args.func(args) or 0)
    except (UserError, OSError, SystemExit) as err:
        if isinstance(err, SystemExit) and not isinstance(err.code, str):
            raise  # an exit status (argparse, --help), not a message
        if args.debug:
            raise
        message = err.code if isinstance(err, SystemExit) else str(err) or type(err).__name__
        message = " ".join(message.split())  # one line, always
        print(message if message.startswith(command) else f"{command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
