"""Every ``--flag`` the package's messages name exists on the ``citrus-v`` parser (issue 22, point 7).

The package's source is parsed (not imported piecemeal) and every string literal that is not a
docstring, f-string parts included, is searched for ``--name``: error and log messages, and also
the text that builds them away from the ``raise`` (an exception's ``__init__`` that adds a hint) and
the help of other options. Each name must be an option of ``citrus_v.cli.build_parser()`` or of one
of its subcommands (at any depth), or a flag of another program the message tells the user to run.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import citrus_v
from citrus_v.cli import build_parser

PACKAGE = Path(citrus_v.__file__).resolve().parent
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?![\w])")
# flags of other programs that messages tell the user to run, with the program: not ours to define
OTHER_PROGRAMS = {"no-deps": "pip install"}


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)
    }


def flags_in_messages() -> dict[str, list[str]]:
    """{flag name: ["path:line", ...]} over the package's non-docstring string literals."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                for flag in FLAG.findall(node.value):
                    found.setdefault(flag, []).append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


def parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    names: set[str] = set()
    for action in parser._actions:
        names.update(o[2:] for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= parser_flags(sub)
    return names


def test_the_scan_sees_messages():
    found = flags_in_messages()
    # known messages of each kind: a UserError (data convert), a SystemExit (train), a parser type error (predict),
    # and a hint built in an exception's __init__ (the checkpoint error's --resume)
    assert "images-root" in found and "time-budget-min" in found and "point" in found, sorted(found)
    assert any("checkpointing.py" in where for where in found["resume"]), found["resume"]


def test_every_flag_an_error_message_names_exists():
    known = parser_flags(build_parser())
    assert {"frame", "allow-outside", "resume", "max-pixels"} <= known
    missing = {flag: where for flag, where in flags_in_messages().items() if flag not in known and flag not in OTHER_PROGRAMS}
    assert not missing, f"messages name flags that citrus-v does not have: {missing}"


def test_other_programs_flags_are_still_named_where_listed():
    """The exemptions must not outlive the messages that need them."""
    found = flags_in_messages()
    for flag, program in OTHER_PROGRAMS.items():
        assert flag in found, f"--{flag} ({program}) is no longer in any message: drop it from OTHER_PROGRAMS"
        assert flag not in parser_flags(build_parser())
