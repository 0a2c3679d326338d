"""Registers citrus_v with transformers' Auto classes when transformers loads them.

``import citrus_v`` must not import torch or transformers (it is a light import), yet after it
``AutoConfig.from_pretrained(<citrus_v folder>)`` should work. So this module (standard library
only) waits for transformers' own auto modules: once ``configuration_auto`` has run, the config is
registered; once ``modeling_auto`` has run, the model classes (``citrus_v.model.hf_auto``). A
failure to register is a warning, never an import error of transformers.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

# transformers module -> the citrus_v.model.hf_auto function to call once it has been imported
TARGETS = {
    "transformers.models.auto.configuration_auto": "register_config",
    "transformers.models.auto.modeling_auto": "register_models",
}


def _register(function_name: str) -> None:
    try:
        from citrus_v.model import hf_auto

        getattr(hf_auto, function_name)()
    except Exception as err:  # noqa: BLE001 - registering must never break the user's import
        warnings.warn(f"citrus_v: could not register with transformers' Auto classes ({err})", stacklevel=2)


class _Loader(importlib.abc.Loader):
    """The real loader of a transformers auto module, then our registration."""

    def __init__(self, inner: importlib.abc.Loader, function_name: str) -> None:
        self.inner, self.function_name = inner, function_name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _register(self.function_name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, TARGETS[fullname])
                return spec
        return None


def install() -> None:
    """Register now for the auto modules already imported; watch for the others (once)."""
    for name, function_name in TARGETS.items():
        if name in sys.modules:
            _register(function_name)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
