"""Reading labels: which characters each merged image token shows (``meta["reading"]`` of a record).

The data layer builds these labels (template.py, collate.py) and the model's training-only
token-reading head (``citrus_v.model.token_reading``) scores them; the shared vocabulary lives
here, at the lowest layer that needs it.
"""

from __future__ import annotations

SLOTS = 4  # characters one 28-px token holds at the suite's lab-page type size (docs/training.md)
CHARSET = "".join(chr(c) for c in range(33, 127))  # printable ASCII but the space; class 0 is "no character"
IGNORE = -100  # a slot of a token without reading labels


def character_class(ch: str) -> int:
    """1 + the character's index in ``CHARSET``; 0 for a character the head does not read (space, non-ASCII)."""
    i = CHARSET.find(ch)
    return i + 1 if len(ch) == 1 and i >= 0 else 0
