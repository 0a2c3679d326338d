"""A model folder's ``generation_config.json`` as the predictor's default :class:`GenerationSettings`.

The file is Hugging Face's ``GenerationConfig`` (``transformers`` writes it beside ``config.json``;
Qwen2.5-VL's ships with sampling knobs, a repetition penalty and two end tokens). It is read as
transformers reads it and merged as ms-swift merges it with a request
(``swift/llm/infer/infer_engine/utils.py``, ``prepare_generation_config``):

- a field the file leaves out takes ``GenerationConfig``'s default (``do_sample`` false, ``temperature``
  1, ``top_p`` 1, ``top_k`` 50, ``repetition_penalty`` 1); ``max_length`` is ignored (ms-swift skips it)
  and ``max_new_tokens`` is used when given;
- the file's ``temperature`` 0, or ``do_sample`` false, means greedy;
- ``eos_token_id`` (one id or a list) adds tokens that end the answer besides ``<|im_end|>``;
- settings given on the command line or in a request replace the file's, field by field
  (:func:`merge_settings`): ``temperature`` 0 is greedy, above 0 samples.

Without the file the defaults are ``GenerationSettings()``: greedy, 512 new tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from citrus_v.errors import UserError
from citrus_v.infer.generation import GenerationSettings

FILE_NAME = "generation_config.json"
HF_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}


class GenerationConfigError(UserError, ValueError):
    """A ``generation_config.json`` field we cannot use; the message names the file and the field."""


def read_generation_config(model_dir: str | Path) -> GenerationSettings | None:
    """The folder's defaults, or None when it has no ``generation_config.json``."""
    path = Path(model_dir) / FILE_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GenerationConfigError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise GenerationConfigError(f"{path}: must hold a JSON object")
    return settings_from_dict(data, str(path))


def settings_from_dict(data: dict[str, Any], where: str = FILE_NAME) -> GenerationSettings:
    """A ``GenerationConfig`` dict -> ``GenerationSettings`` (fields we do not use are ignored)."""
    values = {key: data.get(key, default) for key, default in HF_DEFAULTS.items()}
    if not isinstance(values["do_sample"], bool):
        raise GenerationConfigError(f"{where}: do_sample must be true or false, got {values['do_sample']!r}")
    for key in ("temperature", "top_p", "repetition_penalty"):
        values[key] = _number(values[key], key, where)
    top_k = values["top_k"]
    if top_k is None:  # transformers: None = no top-k filter
        top_k = 0
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise GenerationConfigError(f"{where}: top_k must be an int >= 0, got {top_k!r}")
    sample = values["do_sample"] and values["temperature"] != 0
    fields: dict[str, Any] = {
        "do_sample": sample, "temperature": values["temperature"] if sample else 1.0, "top_p": values["top_p"],
        "top_k": top_k, "repetition_penalty": values["repetition_penalty"], "stop_token_ids": _stop_ids(data, where),
    }
    if data.get("max_new_tokens") is not None:
        fields["max_new_tokens"] = data["max_new_tokens"]
    try:
        return GenerationSettings(**fields)
    except ValueError as err:  # GenerationSettings.<field>: ... -> the file's field
        raise GenerationConfigError(f"{where}: {str(err).replace('GenerationSettings.', '')}") from None


def merge_settings(base: GenerationSettings, **overrides: Any) -> GenerationSettings:
    """``base`` with the fields a user or a request set (None = keep ``base``'s), as ms-swift merges a
    request into the model's config: ``temperature`` 0 -> greedy, above 0 -> sampling at it."""
    temperature = overrides.pop("temperature", None)
    settings = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if temperature is not None:
        sample = temperature > 0
        settings = replace(settings, do_sample=sample, temperature=temperature if sample else settings.temperature)
    return settings


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GenerationConfigError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _stop_ids(data: dict[str, Any], where: str) -> tuple[int, ...]:
    eos = data.get("eos_token_id")
    ids = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
        raise GenerationConfigError(f"{where}: eos_token_id must be a token id or a list of them, got {eos!r}")
    return tuple(ids)


def write_generation_config(model_dir: str | Path, settings: GenerationSettings) -> Path:
    """``settings`` as the folder's ``generation_config.json`` (read back by :func:`read_generation_config`;
    ``seed`` and ``fast`` are run-time choices and not written)."""
    data: dict[str, Any] = {
        "do_sample": settings.do_sample, "temperature": settings.temperature, "top_p": settings.top_p,
        "top_k": settings.top_k or None, "repetition_penalty": settings.repetition_penalty,
        "max_new_tokens": settings.max_new_tokens,
    }  # fmt: skip
    if settings.stop_token_ids:
        data["eos_token_id"] = list(settings.stop_token_ids)
    path = Path(model_dir) / FILE_NAME
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
