"""Dynamic batching on asyncio: many small requests in, batches out to one ``run_batch`` callable.

Contract:

* a bounded queue: :meth:`DynamicBatcher.submit` on a full queue fails at once with
  :class:`QueueFullError` (RESOURCE_EXHAUSTED) — never an unbounded backlog;
* a batch is released when it is full (``max_batch_size``, or the largest ``preferred_batch_sizes``
  entry that the queue can fill) or when its oldest item has waited ``max_queue_delay_ms`` — on the
  monotonic clock;
* items whose deadline has passed, or whose caller has gone (cancelled future), are dropped before
  they reach ``run_batch``;
* up to ``instances`` batches run concurrently;
* ``run_batch`` must return one result per item, in order; an exception (or a wrong count) fails
  every item of that batch and nothing else;
* explicit :meth:`start` and :meth:`stop` (draining in-flight and queued work by default).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from trtserve.errors import (
    BackendError,
    ConfigError,
    DeadlineExceededError,
    NotServingError,
    QueueFullError,
    TrtserveError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued_s: float
    deadline_s: float | None


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    expired: int = 0
    cancelled: int = 0
    failed_batches: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class DynamicBatcher(Generic[T, R]):
    def __init__(self, run_batch: Callable[[list[T]], Awaitable[Sequence[R]]], max_batch_size: int,
                 max_queue_delay_ms: float, max_queue_size: int, preferred_batch_sizes: Sequence[int] = (),
                 instances: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or instances < 1 or max_queue_delay_ms < 0:
            raise ConfigError("max_batch_size, max_queue_size and instances must be >= 1, "
                             "max_queue_delay_ms >= 0")
        bad = [p for p in preferred_batch_sizes if not 1 <= p <= max_batch_size]
        if bad:
            raise ConfigError(f"preferred batch sizes {bad} are outside 1..{max_batch_size}")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.preferred = sorted(set(preferred_batch_sizes), reverse=True)
        self._preferred_set = frozenset(self.preferred)
        self._clock = clock
        self._queue: deque[_Pending[T, R]] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(instances)
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._accepting = False
        self.stats = BatcherStats()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        if self._loop_task is None:
            self._accepting = True
            self._loop_task = asyncio.create_task(self._loop(), name="dynamic-batcher")

    async def stop(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        """Stop accepting; with ``drain`` finish queued and running batches (up to ``timeout_s``)."""
        self._accepting = False
        if drain:
            end = self._clock() + timeout_s
            while (self._queue or self._running) and self._clock() < end:
                self._wakeup.set()
                await asyncio.sleep(0.005)
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(NotServingError("the server is shutting down"))
        self._queue.clear()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def submit(self, item: T, deadline_s: float | None = None) -> R:
        """Queue ``item`` and wait for its result. ``deadline_s`` is on this batcher's (monotonic) clock."""
        if not self._accepting:
            raise NotServingError("not accepting work (not started or shutting down)")
        if len(self._queue) >= self.max_queue_size:
            raise QueueFullError(f"queue full ({self.max_queue_size} waiting); retry later or add capacity")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queue = self._queue
        queue.append(_Pending(item, future, self._clock(), deadline_s))
        # wake the loop only when this item changes what it waits for: the first item (it starts the delay) or
        # one that fills a batch; otherwise the delay's timer wakes it (one wake-up per batch, not per frame)
        depth = len(queue)
        if depth == 1 or depth >= self.max_batch_size or depth in self._preferred_set:
            self._wakeup.set()
        return await future

    def _take(self) -> list[_Pending[T, R]]:
        now = self._clock()
        batch: list[_Pending[T, R]] = []
        size = self._batch_size(len(self._queue))
        while self._queue and len(batch) < size:
            pending = self._queue.popleft()
            if pending.future.done():  # the caller went away
                self.stats.cancelled += 1
                continue
            if pending.deadline_s is not None and now >= pending.deadline_s:
                self.stats.expired += 1
                pending.future.set_exception(DeadlineExceededError("deadline passed while queued"))
                continue
            batch.append(pending)
        return batch

    def _batch_size(self, available: int) -> int:
        if available >= self.max_batch_size:
            return self.max_batch_size
        fitting = [p for p in self.preferred if p <= available]
        return fitting[0] if fitting else available

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            full = len(self._queue) >= self.max_batch_size or (self.preferred and len(self._queue) in self.preferred)
            waited = self._clock() - self._queue[0].enqueued_s
            if not full and waited < self.max_queue_delay_s and self._accepting:
                self._wakeup.clear()
                # a timer handle, not asyncio.wait_for (a task per wait): this runs once per batch
                timer = asyncio.get_running_loop().call_later(self.max_queue_delay_s - waited, self._wakeup.set)
                try:
                    await self._wakeup.wait()
                finally:
                    timer.cancel()
                continue
            await self._slots.acquire()
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Pending[T, R]]) -> None:
        try:
            try:
                results = await self._run_batch([p.item for p in batch])
                if len(results) != len(batch):
                    raise BackendError(f"batch of {len(batch)} items returned {len(results)} results")
            except Exception as exc:
                self.stats.failed_batches += 1
                if isinstance(exc, TrtserveError):
                    error = exc
                    logger.warning("batch of %d failed: %s", len(batch), error)
                else:  # a bug or a runtime failure: its details stay in the log, under an id the client is told
                    incident = uuid.uuid4().hex[:12]
                    logger.exception("batch of %d failed [incident %s]", len(batch), incident)
                    error = BackendError(f"the model failed on a batch of {len(batch)} frames (incident "
                                         f"{incident}; the server log has the details)")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(error)
                return
            self.stats.batches += 1
            self.stats.items += len(batch)
            for p, r in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(r)
        finally:
            self._slots.release()
