"""One model instance, many clients: an asyncio queue drained by one worker into ``predict_batch`` calls.

The worker takes the first waiting request, then waits up to ``batch_wait_ms`` for more (up to
``max_batch``), splits them by sampling settings (one ``predict_batch`` call decodes with one
setting) and runs the model in a thread so the event loop keeps accepting and rejecting requests.
A batch that fails is run again request by request, so one request's error fails that request alone.
The queue is bounded: past ``max_queue`` waiting requests, :class:`QueueFull` (-> 503 + Retry-After).
Point/box prompt requests go through the same queue (one model, one thread at a time) but are run one
by one with ``refine``: each carries its own clicks, so there is nothing to batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from citrus_v.infer.conversation import Conversation
from citrus_v.infer.types import Prediction
from citrus_v.serve.prompts import PromptSpec
from citrus_v.serve.schemas import SamplingParams
from citrus_v.serve.settings import ServeConfig

log = logging.getLogger(__name__)


@runtime_checkable
class BatchPredictor(Protocol):
    """What the server needs of a model: a name and a batched predict (one call, many requests)."""

    model_name: str

    def predict_batch(
        self, items: Sequence[tuple[list[np.ndarray], str]], settings: SamplingParams
    ) -> list[Prediction]: ...


@runtime_checkable
class RefinePredictor(BatchPredictor, Protocol):
    """A model that also takes point/box prompts (``"prompts"`` in a request); see PredictorAdapter."""

    def refine(self, image: np.ndarray, text: str, prompts: PromptSpec, settings: SamplingParams) -> Prediction: ...


@runtime_checkable
class TilePredictor(BatchPredictor, Protocol):
    """A model that answers on tiles of one large image and stitches them (``"tiles"`` in a request)."""

    def predict_tiled(self, image: np.ndarray, text: str, tiles, settings: SamplingParams) -> Prediction: ...


@runtime_checkable
class StreamPredictor(BatchPredictor, Protocol):
    """A model that hands one request's text over while it decodes (``on_text(piece)``, from its thread)."""

    def predict_stream(
        self, images: list[np.ndarray], text, settings: SamplingParams, on_text: Callable[[str], None]
    ) -> Prediction: ...


class QueueFull(Exception):
    """More requests are waiting than ``ServeConfig.max_queue``."""


@dataclass
class _Pending:
    images: list[np.ndarray]
    prompt: str | Conversation  # a Conversation: a system message or earlier turns (never with prompts)
    sampling: SamplingParams
    future: asyncio.Future
    prompts: PromptSpec | None = None
    on_text: Callable[[str], None] | None = None  # a streamed request: its text pieces as they are generated
    tiles: str | tuple[int, int] | None = None  # a tiled request: "auto" or (rows, cols), run alone
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    failures: int = 0


class BatchQueue:
    def __init__(self, predictor: BatchPredictor, config: ServeConfig):
        self.predictor = predictor
        self.config = config
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def pending(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    def is_full(self) -> bool:
        return self.pending() >= self.config.max_queue

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.config.max_queue)
        self._worker = asyncio.create_task(self._run(), name="citrus-v-batch-worker")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._worker = None

    async def submit(
        self, images: list[np.ndarray], prompt: str | Conversation, sampling: SamplingParams,
        prompts: PromptSpec | None = None, on_text: Callable[[str], None] | None = None,
        tiles: str | tuple[int, int] | None = None,
    ) -> Prediction:
        if self._queue is None or not self.running:
            raise RuntimeError("BatchQueue.submit: the worker is not running (call start() first)")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(images, prompt, sampling, future, prompts, on_text, tiles))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.config.max_queue} requests are already waiting") from None
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            deadline = time.perf_counter() + self.config.batch_wait_ms / 1000.0
            while len(batch) < self.config.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [p for p in batch if not p.future.done()]  # clients that gave up are skipped
            for p in [p for p in live if p.prompts is not None]:
                await self._refine(p)
            for p in [p for p in live if self._streams(p)]:
                await self._one(p, self.predictor.predict_stream, p.images, p.prompt, p.sampling, p.on_text)
            for group in _group_by_sampling([p for p in live if p.prompts is None and p.tiles is None
                                             and not self._streams(p)]):
                await self._predict(group)
            # last: a tiled request is one request per tile, seconds to minutes, and runs alone; the short
            # requests that arrived with it are not made to wait for it
            for p in [p for p in live if p.tiles is not None]:
                await self._one(p, self.predictor.predict_tiled, p.images[0], p.prompt, p.tiles, p.sampling)

    def _streams(self, p: _Pending) -> bool:
        """A streamed request runs alone (its tokens go out as they come) when the model can stream."""
        return p.prompts is None and p.on_text is not None and isinstance(self.predictor, StreamPredictor)

    async def _refine(self, p: _Pending) -> None:
        await self._one(p, self.predictor.refine, p.images[0], p.prompt, p.prompts, p.sampling)

    async def _one(self, p: _Pending, call, *args) -> None:
        """One request alone (refine, tiles, stream): its own answer or its own error."""
        try:
            prediction = await asyncio.to_thread(call, *args)
        except Exception as err:  # as in _predict: fail this request, keep the worker
            log.exception("%s failed", getattr(call, "__name__", "predict"))
            self.stats.failures += 1
            if not p.future.done():
                p.future.set_exception(err)
            return
        self.stats.batches += 1
        self.stats.requests += 1
        self.stats.largest_batch = max(self.stats.largest_batch, 1)
        if not p.future.done():
            p.future.set_result(prediction)

    async def _predict(self, group: list[_Pending]) -> None:
        items = [(p.images, p.prompt) for p in group]
        try:
            predictions = await asyncio.to_thread(self.predictor.predict_batch, items, group[0].sampling)
            if len(predictions) != len(group):
                raise RuntimeError(f"predict_batch returned {len(predictions)} predictions for {len(group)} requests")
        except Exception as err:  # the model failing must fail these requests, not the worker
            if len(group) > 1:
                # one request's own error (its prompt, its image) must not fail the others: run each
                # alone, so every request gets its own answer or its own error
                log.warning("predict_batch failed for %d requests (%s: %s): running them one by one",
                            len(group), type(err).__name__, err)
                for p in group:
                    await self._predict([p])
                return
            log.exception("predict_batch failed for 1 request")
            self.stats.failures += len(group)
            for p in group:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        self.stats.batches += 1
        self.stats.requests += len(group)
        self.stats.largest_batch = max(self.stats.largest_batch, len(group))
        for p, prediction in zip(group, predictions):
            if not p.future.done():
                p.future.set_result(prediction)


def _group_by_sampling(batch: list[_Pending]) -> list[list[_Pending]]:
    groups: dict[tuple, list[_Pending]] = {}
    for p in batch:
        groups.setdefault(p.sampling.key(), []).append(p)
    return list(groups.values())

