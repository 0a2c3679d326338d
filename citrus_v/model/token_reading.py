"""The token-reading target: a training-only head asks each merged image token which characters it shows.

The copy-attention target (citrus_v.model.copy_attention) tells an LLM head where a lab value's digits
are; it cannot make the image token there hold the digit. Trained on answers alone, the vision tower of
the tiny model never learned to keep a 4-pixel glyph apart from its neighbours (docs/default_model.md,
"Documents"). This head is a linear layer on the merger's output (the tokens the LLM sees): for each
token it predicts up to ``SLOTS`` characters in reading order (``Example.reading``, from a record's
``meta["reading"]``), one class per printable ASCII character plus "empty". Its cross-entropy trains the
ViT and merger to keep what is written in the token. The head is not part of the model: checkpoints
of a stage carry it (so a resumed run continues it), model folders never do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from citrus_v.data.reading import CHARSET, IGNORE, SLOTS, character_class  # noqa: F401 (the head's label vocabulary)
from citrus_v.model.capture import HookCapture

PREFIX = "token_reading."  # the head's tensor names inside CitrusV (its part, "reading_head")


def drop_head(state: dict) -> dict:
    """``state`` without the head's tensors: what a model folder holds of a model trained with it."""
    return {k: v for k, v in state.items() if not k.startswith(PREFIX)}


class TokenReading(HookCapture, nn.Module):
    """Linear head on the merged vision tokens -> (tokens, SLOTS, 1 + len(CHARSET)) logits. ``capture()``
    around a forward pass records the tokens the vision tower gave (a forward hook on it); ``read_out``
    gives the head's logits on them."""

    def __init__(self, visual: nn.Module, dim: int, weight: float) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"token_reading weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.dim = dim
        self.proj = nn.Linear(dim, SLOTS * (len(CHARSET) + 1))
        # the hook handle only: keeping ``visual`` as an attribute would make it a submodule of the head
        self._hook = visual.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: tuple, output) -> None:
        if self._on:  # _seen: (N, dim) merged tokens of the last captured forward
            self._seen = getattr(output, "pooler_output", output)  # (N, dim): every image's merged tokens

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(F.rms_norm(tokens, (self.dim,))).reshape(len(tokens), SLOTS, len(CHARSET) + 1)

    def read_out(self) -> torch.Tensor | None:
        """(N, SLOTS, classes) logits on the tokens of the last captured forward (None if nothing was
        captured: no image); objectives.score turns them into the loss."""
        seen, self._seen = self._seen, None
        return None if seen is None else self.logits(seen)
