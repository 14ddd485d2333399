"""Dynamic batching: requests from concurrent callers run through the model together.

Callers decode their images in their own threads (in parallel), then enqueue the pixels; one
worker thread per hosted model takes up to ``max_batch_size`` items, stacks them (the only
copy) and runs the model. While the model runs, new requests pile up, so under load batches
form without any waiting. When the worker is idle it dispatches the first item at once,
unless other requests are still *arriving* (announced, still being decoded): only then does
it wait, for at most ``max_delay_s`` after the first item, for them to join. A lone client
therefore never pays the delay, and nothing sleeps or polls: the worker waits on a condition
variable that every enqueue notifies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The batcher's queue is at its bound: the server is overloaded."""


class BatcherStoppedError(RuntimeError):
    """The batcher no longer takes work (shutting down)."""


class DeadlineExpiredError(TimeoutError):
    """The request's deadline passed while it waited in the queue; it was not run."""


class RunnableModel(Protocol):
    """What the batcher runs: anything with ``predict(uint8[N, H, W, 3]) -> float32[N, C]``."""

    def predict(self, pixels: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batch."""

    model: RunnableModel  # the model that ran it (the one the pixels were prepared for)
    probabilities: np.ndarray  # float32[C], a row view of the batch output
    batch_size: int


class _Item:
    __slots__ = ("model", "pixels", "deadline", "future", "enqueued")

    def __init__(self, model: RunnableModel, pixels: np.ndarray, deadline: float | None):
        self.model, self.pixels, self.deadline = model, pixels, deadline
        self.future: Future[BatchResult] = Future()
        self.enqueued = time.monotonic()


class Arrival:
    """A request announced to the batcher while it is being decoded; submit it, or leave the block."""

    def __init__(self, batcher: DynamicBatcher):
        self._batcher = batcher
        self._open = True

    def submit(self, model: RunnableModel, pixels: np.ndarray, deadline: float | None = None) -> Future[BatchResult]:
        """Enqueue the prepared pixels for ``model``; ``deadline`` is a ``time.monotonic()`` value."""
        self._open = False
        return self._batcher._enqueue(_Item(model, pixels, deadline))

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._open:  # decoding failed: withdraw the announcement
            self._open = False
            self._batcher._withdraw()


class DynamicBatcher:
    """A bounded queue and one worker thread that runs items in batches."""

    def __init__(
        self,
        *,
        max_batch_size: int = 32,
        max_delay_s: float = 0.002,
        max_queue: int = 256,
        name: str = "model",
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_delay_s >= 0")
        self.max_batch_size, self.max_delay_s, self.max_queue = max_batch_size, max_delay_s, max_queue
        self._queue: deque[_Item] = deque()
        self._arriving = 0  # announced requests still being decoded
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._on_batch = on_batch
        self._thread = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting to run."""
        return len(self._queue)

    def arrival(self) -> Arrival:
        """Announce a request before decoding it (``with batcher.arrival() as a: ... a.submit(...)``)."""
        with self._cond:
            if self._stopping:
                raise BatcherStoppedError("the server is shutting down")
            self._arriving += 1
        return Arrival(self)

    def submit(self, model: RunnableModel, pixels: np.ndarray, deadline: float | None = None) -> Future[BatchResult]:
        """Enqueue already-prepared pixels (no announcement)."""
        with self.arrival() as arrival:
            return arrival.submit(model, pixels, deadline)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work, run what is queued, and wait for the worker to finish."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _enqueue(self, item: _Item) -> Future[BatchResult]:
        with self._cond:
            self._arriving -= 1
            if self._stopping:
                self._cond.notify()
                raise BatcherStoppedError("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                self._cond.notify()
                raise QueueFullError(f"request queue full ({self.max_queue} waiting); retry later")
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def _withdraw(self) -> None:
        with self._cond:
            self._arriving -= 1
            self._cond.notify()

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue:
                if self._stopping and not self._arriving:
                    return None
                self._cond.wait()
            if self.max_delay_s > 0:
                until = self._queue[0].enqueued + self.max_delay_s
                while len(self._queue) < self.max_batch_size and self._arriving > 0:
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            n = min(len(self._queue), self.max_batch_size)
            return [self._queue.popleft() for _ in range(n)]

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run(batch)
            except Exception as exc:  # never let the worker die; fail the batch instead
                logger.exception("batch of %d failed unexpectedly", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    def _run(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live = []
        for item in batch:
            if item.deadline is not None and now >= item.deadline:
                item.future.set_exception(DeadlineExpiredError("deadline passed while queued"))
            else:
                live.append(item)
        # Items prepared for different model versions (during a hot reload) run separately.
        groups: dict[int, list[_Item]] = {}
        for item in live:
            groups.setdefault(id(item.model), []).append(item)
        for items in groups.values():
            self._run_group(items)

    def _run_group(self, items: list[_Item]) -> None:
        model = items[0].model
        pixels = items[0].pixels[None] if len(items) == 1 else np.stack([item.pixels for item in items])
        try:
            probabilities = model.predict(pixels)
        except Exception as exc:
            logger.error("inference failed on a batch of %d: %s", len(items), exc)
            for item in items:
                item.future.set_exception(exc)
            return
        n = len(items)
        if self._on_batch is not None:
            self._on_batch(n)
        for i, item in enumerate(items):
            item.future.set_result(BatchResult(model, probabilities[i], n))
