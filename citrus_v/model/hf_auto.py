"""transformers' Auto classes for our folders: ``AutoConfig`` and ``AutoModel`` know ``citrus_v``.

``import citrus_v`` stays light (no torch, no transformers): :func:`citrus_v._auto_hook` calls
:func:`register_config` / :func:`register_models` as soon as transformers' auto modules are imported
(or at once when they already are), so ``AutoConfig.from_pretrained(folder)`` then works for both of our layouts:

* ours: config.json with ``format_version`` and the nested ``llm`` / ``vision`` / ``segmenter`` /
  ``tokens`` sections;
* published: the flat Qwen2.5-VL fields with ``"model_type": "citrus_v"``.

``AutoModel.from_pretrained(folder)`` returns a :class:`~citrus_v.model.citrus_v.CitrusV` loaded the way ``Predictor.from_pretrained`` loads it.
Registering only adds a new model type: no transformers class is replaced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

MODEL_TYPE = "citrus_v"


class CitrusVHFConfig(PretrainedConfig):
    """config.json of a citrus_v folder as a transformers config; :meth:`to_citrus_config` gives the
    validated :class:`~citrus_v.config.CitrusVConfig` the model is built from."""

    model_type = MODEL_TYPE

    def __init__(self, **kwargs: Any) -> None:
        # the published M-RoPE sections (rope_scaling) are kept as written, under the name transformers
        # now gives them (rope_parameters), without its standardisation, which has no 'mrope' type to check
        # and warned on every load; to_citrus_config reads them from either name
        rope = kwargs.pop("rope_scaling", None) or kwargs.pop("rope_parameters", None)
        super().__init__(**kwargs)
        if rope is not None:
            self.rope_parameters = rope

    @property
    def layout(self) -> str:
        """``"citrus_v"`` (ours) or ``"published"``."""
        return "citrus_v" if getattr(self, "format_version", None) is not None else "published"

    def to_citrus_config(self):
        """-> CitrusVConfig (the one ``citrus_v.model.loading`` reads from the same file)."""
        from citrus_v.config import CitrusVConfig
        from citrus_v.model.loading import published_config

        data = self.to_dict()
        if self.layout == "published":
            return published_config(data, where=f"{self.name_or_path or 'config'}/config.json")
        ours = {f.name for f in dataclasses.fields(CitrusVConfig)}  # the rest is PretrainedConfig's own
        return CitrusVConfig.from_dict({k: v for k, v in data.items() if k in ours})


def _torch_dtype(value: Any):
    import torch

    if value is None or value == "auto":
        return None
    if isinstance(value, str):
        value = getattr(torch, value, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype or its name, got {value!r}")
    return value


class CitrusVForConditionalGeneration:
    """What ``AutoModel.from_pretrained`` / ``from_config`` give for a citrus_v folder: a
    :class:`~citrus_v.model.citrus_v.CitrusV` (either layout). A light stand-in, so registering it
    imports neither torch nor the model code."""

    config_class = CitrusVHFConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("use CitrusVForConditionalGeneration.from_pretrained(folder) or citrus_v.CitrusV(config)")

    @classmethod
    def from_pretrained(cls, directory: str | Path, *args: Any, config: Any = None, device: Any = "cpu",
                        dtype: Any = None, torch_dtype: Any = None, citrus_config: Any = None, **hub_kwargs: Any):
        """``AutoModel`` passes the hub arguments it read (revision, trust_remote_code, ...): a folder
        on disk needs none of them. The weights load into ``dtype`` (None / "auto": float32) on ``device``.
        ``citrus_config`` (a CitrusVConfig) must agree with the folder's; for a published folder it
        supplies the SAM2 shapes, as ``Predictor.from_pretrained(config=...)`` does."""
        from citrus_v.model.citrus_v import CitrusV
        from citrus_v.model.loading import folder_config, resolve_model_path

        folder = resolve_model_path(directory)
        loaded, _ = folder_config(folder, citrus_config)
        return CitrusV.from_pretrained(folder, device=device, config=loaded, dtype=_torch_dtype(dtype or torch_dtype))

    @classmethod
    def _from_config(cls, config: CitrusVHFConfig, **kwargs: Any):
        """A randomly initialised CitrusV of ``config`` (``AutoModel.from_config``)."""
        from citrus_v.model.citrus_v import CitrusV

        return CitrusV(config.to_citrus_config())

    from_config = _from_config


def register_config() -> None:
    """Add ``citrus_v`` to AutoConfig (idempotent)."""
    from transformers import AutoConfig

    AutoConfig.register(MODEL_TYPE, CitrusVHFConfig, exist_ok=True)


def register_models() -> None:
    """Add ``citrus_v`` to AutoModel and AutoModelForImageTextToText (idempotent)."""
    from transformers.models.auto.modeling_auto import AutoModel, AutoModelForImageTextToText

    for auto in (AutoModel, AutoModelForImageTextToText):
        auto.register(CitrusVHFConfig, CitrusVForConditionalGeneration, exist_ok=True)


def register() -> None:
    register_config()
    register_models()
