"""What the training targets that read a forward pass from a hook share (copy attention, token reading)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class HookCapture:
    """A forward hook (``_hook``) that records into ``_seen`` only inside ``capture()``."""

    _on: bool = False
    _seen: Any = None
    _hook: Any

    @contextlib.contextmanager
    def capture(self) -> Iterator[Any]:
        """Record what the hooked module sees during the forward passes inside this block."""
        self._on, self._seen = True, None
        try:
            yield self
        finally:
            self._on = False

    def remove(self) -> None:
        self._hook.remove()
