"""Per-frame work on a thread pool with fewer event-loop hops: frames submitted together share pool jobs, and
results that finish together reach the event loop in one wake-up.

``loop.run_in_executor`` per frame costs a pool job (a ``concurrent.futures.Future``, a queue put, a thread wake-up)
and a ``call_soon_threadsafe`` (a write to the loop's self-pipe and a wake-up of the loop) for every frame: ~40-80 µs
of CPU per frame on this project's 2-core machine, beside a ~0.5 ms decode. :class:`CoalescedExecutor` gathers the
calls made in one event-loop iteration (a stream's messages arrive in bursts) into at most ``workers`` pool jobs,
and a finished call's result is handed to the loop together with any others that finished before the loop ran:
the same work on the same pool, with the bookkeeping paid per burst instead of per frame.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

R = TypeVar("R")

_Call = tuple[Callable[[Any], Any], Any, "asyncio.Future[Any]"]


class CoalescedExecutor:
    """``await run(fn, arg)`` is ``await loop.run_in_executor(executor, fn, arg)``, with the hops shared (module
    docstring). Use it from one event loop. A call whose caller has gone (its future cancelled) before a worker
    reaches it is skipped, as a pool job cancelled before it starts is."""

    def __init__(self, executor: Executor, workers: int | None = None) -> None:
        self._executor = executor
        # ThreadPoolExecutor keeps its size in _max_workers; any other Executor: one job per core at most
        self._workers = max(1, workers or getattr(executor, "_max_workers", 0) or os.cpu_count() or 1)
        self._submitted: list[_Call] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._finished: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._delivery_pending = False

    async def run(self, fn: Callable[[Any], R], arg: Any) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._submitted:  # the first call of this loop iteration: share them out once it has run
            self._loop = loop
            loop.call_soon(self._dispatch)
        self._submitted.append((fn, arg, future))
        return await future

    def _dispatch(self) -> None:
        calls, self._submitted = self._submitted, []
        jobs = min(self._workers, len(calls))
        for k in range(jobs):
            chunk = calls[k::jobs]  # round robin: each worker's share is as even as the frames allow
            try:
                self._executor.submit(self._work, chunk)
            except RuntimeError as exc:  # the pool is shut down (the server is stopping)
                for _, _, future in chunk:
                    if not future.done():
                        future.set_exception(exc)

    def _work(self, chunk: list[_Call]) -> None:
        for fn, arg, future in chunk:
            if future.cancelled():  # a plain read of its state; results are set on the loop only
                continue
            try:
                outcome: tuple[asyncio.Future[Any], bool, Any] = (future, True, fn(arg))
            except BaseException as exc:  # the caller gets it, as from run_in_executor
                outcome = (future, False, exc)
            self._finish(outcome)

    def _finish(self, outcome: tuple[asyncio.Future[Any], bool, Any]) -> None:
        """From a worker: queue the result; wake the loop unless a wake-up is already on its way."""
        with self._lock:
            self._finished.append(outcome)
            if self._delivery_pending:
                return
            self._delivery_pending = True
        loop = self._loop
        try:
            if loop is not None:
                loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _deliver(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._delivery_pending = False
        for future, ok, value in finished:
            if future.done():  # cancelled meanwhile
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
