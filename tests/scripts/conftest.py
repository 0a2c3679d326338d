"""Load a script of scripts/ as a module, as it runs: with scripts/ on sys.path (scripts import each
other) and registered in sys.modules under its name (dataclasses look their module up there)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str) -> Iterator[ModuleType]:
    """Yield scripts/<name>.py as a module; sys.path and sys.modules are restored afterwards."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPTS))
        sys.modules.pop(name, None)
