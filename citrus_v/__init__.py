"""citrus-v: an open implementation of the Citrus-V medical multimodal model.

Qwen2.5-VL answers, reasons and writes reports; each ``[SEG]`` token it emits is
projected into a prompt for a SAM2 mask decoder that has its own image encoder.

The public API is one import; names load on first use, so ``import citrus_v`` stays light:

>>> from citrus_v import Predictor, CitrusV  # doctest: +SKIP
>>> predictor = Predictor.from_pretrained()  # the shipped default model  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Predictor": "citrus_v.infer.predictor",
    "Prediction": "citrus_v.infer.types",
    "GenerationSettings": "citrus_v.infer.generation",
    "CitrusV": "citrus_v.model.citrus_v",
    "CitrusVConfig": "citrus_v.config",
    "UserError": "citrus_v.errors",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on demand
    from citrus_v.config import CitrusVConfig
    from citrus_v.errors import UserError
    from citrus_v.infer.generation import GenerationSettings
    from citrus_v.infer.predictor import Predictor
    from citrus_v.infer.types import Prediction
    from citrus_v.model.citrus_v import CitrusV


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'citrus_v' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


# AutoConfig / AutoModel learn "citrus_v" when transformers loads them (citrus_v/_auto_hook.py)
from citrus_v import _auto_hook  # noqa: E402

_auto_hook.install()
