"""A budget of decoded pixels: what bounds the server's memory whatever the clients send.

Every image is counted from its header (width x height) BEFORE its pixels are decoded, against two
limits: the request's own (``max_request_pixels``, else 413) and the server's, shared by every request
being decoded, queued or predicted (``max_pixels_in_flight``, else 429 + Retry-After). A request gives
its pixels back when its answer is sent. A 35 KB PNG of 6000x6000 zeros thus costs its 36 M pixels of
the budget from the moment its header is read, and a flood of them is refused, not queued.

What a budgeted pixel costs in memory, at most ``BYTES_PER_PIXEL`` = 8 bytes (measured 7.1 and 7.8 B
over the model when flooded, ``benchmarks/serve_bomb_flood_*.json``): the (H, W, 3) uint8 array it is
kept as (3 B); while it is decoded, PIL's own copy beside it (4 B for RGB, RGBA, I and F, fewer for
L, P and I;16: ``images._to_rgb8`` writes the array band by band, no other full-size copy); in the
model worker, one image at a time, PIL's copy for the ViT and segmenter resizes (4 B). An answer's
masks are kept as the segmenter's 256 x 256 logits (``infer.types.LogitsMask``) and made full-size
one at a time while the answer is encoded: the float map and the bool mask (5 B), then the RLE's
column-major copy (1 B). A DICOM pixel costs about twice as much while it is windowed and is charged
as two (``dicom.DICOM_PIXEL_CHARGE``). Not in the 8 B: request bodies while they are read.
"""

from __future__ import annotations

import threading

from citrus_v.serve.errors import RequestError


BYTES_PER_PIXEL = 8  # the most memory one budgeted pixel costs (see above)


class PixelBudget:
    """The server-wide count; thread-safe (requests are parsed in worker threads)."""

    def __init__(self, limit: int, per_request: int):
        self.limit = limit
        self.per_request = per_request
        self.held = 0
        self.peak = 0
        self._lock = threading.Lock()

    @property
    def limit_mb(self) -> float:
        """What the server-wide limit stands for in memory: at most this many MB of decoded images."""
        return round(self.limit * BYTES_PER_PIXEL / 2**20, 1)

    def lease(self) -> PixelLease:
        return PixelLease(self)

    def _take(self, pixels: int, param: str) -> None:
        with self._lock:
            if self.held + pixels > self.limit:
                raise RequestError(
                    429, f"the server holds {self.held} decoded pixels and this image needs {pixels} more, above "
                         f"max_pixels_in_flight={self.limit}; retry later", param, code="pixel_budget_full",
                )
            self.held += pixels
            self.peak = max(self.peak, self.held)

    def _give_back(self, pixels: int) -> None:
        with self._lock:
            self.held -= pixels


class PixelLease:
    """One request's share: ``take`` each image's pixels as its header is read, ``release`` once answered."""

    def __init__(self, budget: PixelBudget):
        self.budget = budget
        self.total = 0

    def take(self, pixels: int, param: str) -> None:
        if self.total + pixels > self.budget.per_request:
            raise RequestError(
                413, f"the request's images total {self.total + pixels} pixels, above max_request_pixels="
                     f"{self.budget.per_request}", param, code="request_too_large",
            )
        self.budget._take(pixels, param)
        self.total += pixels

    def release(self) -> None:
        self.budget._give_back(self.total)
        self.total = 0
