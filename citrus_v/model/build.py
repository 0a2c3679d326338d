"""Build a CitrusV from a preset name or config, on a real device or on ``meta`` (no memory)."""

from __future__ import annotations

import torch

from citrus_v.config import CitrusVConfig
from citrus_v.model.citrus_v import CitrusV


def resolve_config(config: CitrusVConfig | str) -> CitrusVConfig:
    return CitrusVConfig.preset(config) if isinstance(config, str) else config


def build_model(config: CitrusVConfig | str, device: str | torch.device = "cpu", seed: int | None = None) -> CitrusV:
    """A randomly initialised model; ``seed`` makes the initial weights deterministic.

    ``device="meta"`` allocates nothing: use it for shapes and parameter counts (the 8b).
    """
    config = resolve_config(config)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        return CitrusV(config)


def count_parameters(config: CitrusVConfig | str) -> dict[str, int]:
    """Values per named part (parameters + persistent buffers), built on meta, plus 'total'."""
    counts = build_model(config, device="meta").parameter_counts()
    counts["total"] = sum(counts.values())
    return counts
