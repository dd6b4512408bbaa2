"""What both gRPC protocols (``trtserve.v1`` and KServe v2) share: status codes, the reason a client is told,
and answering a stream's requests concurrently while sending the answers in request order.

Errors map to gRPC status codes in exactly one place, :func:`status_code`. The two stream policies,
:func:`answer_in_order` (``block``) and :func:`answer_freshest` (``drop_oldest``), differ only in how they
admit requests; sending in order, and abandoning unanswered work when the client goes away, is
:func:`_send_in_order` for both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from trtserve.errors import TrtserveError, code_name

logger = logging.getLogger(__name__)
Q = TypeVar("Q")
R = TypeVar("R")


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for an exception: its ``grpc_code`` for trtserve errors, INTERNAL for bugs."""
    return getattr(grpc.StatusCode, code_name(error), grpc.StatusCode.INTERNAL)


def public_reason(error: Exception, what: str) -> str:
    """What the client is told: a trtserve error's own message; for anything else (a bug) that it was internal,
    after logging the traceback as ``what`` having failed. Call it inside the ``except`` block."""
    if isinstance(error, TrtserveError):
        return str(error)
    logger.exception("%s failed unexpectedly", what)
    return f"internal error: {error!r}"


async def _send_in_order(read: Callable[[asyncio.Queue[Awaitable[R] | None]], Coroutine[Any, Any, None]],
                         abandon: Callable[[], None], sent: Callable[[], None] | None = None
                         ) -> AsyncGenerator[R, None]:
    """Run ``read`` (which puts one awaitable answer per request, in request order) and yield the answers in that
    order, calling ``sent`` after each. On exit (the requests ended, or the client went away) ``read`` is cancelled,
    and ``abandon`` cancels whatever work is still unanswered."""
    order: asyncio.Queue[Awaitable[R] | None] = asyncio.Queue()

    async def reader() -> None:
        try:
            await read(order)
        finally:
            await order.put(None)

    task = asyncio.create_task(reader())
    try:
        while (answer := await order.get()) is not None:
            yield await answer
            if sent is not None:
                sent()
        await task
    finally:
        task.cancel()
        while not order.empty():  # tasks queued but never awaited
            item = order.get_nowait()
            if isinstance(item, asyncio.Future):
                item.cancel()
        abandon()


def answer_in_order(requests: AsyncIterator[Q], answer: Callable[[Q], Coroutine[Any, Any, R]],
                    max_in_flight: int) -> AsyncGenerator[R, None]:
    """Answer each request as it arrives, at most ``max_in_flight`` at once (so they batch), yielding the
    answers in request order. Past ``max_in_flight`` unanswered, reading stops: flow control back to the
    client. On exit (the client went away) unanswered work is cancelled."""
    slots = asyncio.Semaphore(max_in_flight)

    async def read(order: asyncio.Queue[Awaitable[R] | None]) -> None:
        async for request in requests:
            await slots.acquire()  # released once the answer has been sent
            await order.put(asyncio.create_task(answer(request)))

    return _send_in_order(read, abandon=lambda: None, sent=slots.release)


@dataclass
class _Lane(Generic[Q, R]):
    """One stream of a ``drop_oldest`` call: frames running, and the one waiting for a free slot."""

    running: int = 0
    waiting: tuple[Q, asyncio.Future[R]] | None = None


@dataclass
class _Freshest(Generic[Q, R]):
    answer: Callable[[Q], Coroutine[Any, Any, R]]
    dropped: Callable[[Q], R]
    max_in_flight: int
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False  # the client went away: start nothing more

    def launch(self, request: Q, result: asyncio.Future[R], lane: _Lane[Q, R]) -> None:
        async def run() -> None:
            try:
                response = await self.answer(request)
                if not result.done():
                    result.set_result(response)
            finally:
                lane.running -= 1
                if lane.waiting is not None:
                    waiting, lane.waiting = lane.waiting, None
                    if self.closed:
                        waiting[1].cancel()
                    else:
                        lane.running += 1
                        self.launch(*waiting, lane)

        task = asyncio.create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def admit(self, request: Q, result: asyncio.Future[R], lane: _Lane[Q, R]) -> None:
        if lane.running < self.max_in_flight:
            lane.running += 1
            self.launch(request, result, lane)
            return
        if lane.waiting is not None:  # a newer frame replaces the waiting one, which is answered at once
            old_request, old_result = lane.waiting
            old_result.set_result(self.dropped(old_request))
        lane.waiting = (request, result)

    def abandon(self) -> None:
        """The client went away: cancel what runs, and the waiting frames never start (see ``launch``)."""
        self.closed = True
        for task in list(self.tasks):
            task.cancel()


def answer_freshest(requests: AsyncIterator[Q], answer: Callable[[Q], Coroutine[Any, Any, R]],
                    lane_of: Callable[[Q], Hashable], dropped: Callable[[Q], R], max_in_flight: int
                    ) -> AsyncGenerator[R, None]:
    """The ``drop_oldest`` policy: per lane (a stream id), at most ``max_in_flight`` requests run and one waits;
    a newer request replaces the waiting one, which is answered ``dropped(request)``. Reading never stops, and
    the answers (``dropped`` ones included) leave in request order: live video keeps the freshest frame."""
    state: _Freshest[Q, R] = _Freshest(answer, dropped, max_in_flight)
    lanes: dict[Hashable, _Lane[Q, R]] = {}

    async def read(order: asyncio.Queue[Awaitable[R] | None]) -> None:
        async for request in requests:
            result: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            await order.put(result)
            state.admit(request, result, lanes.setdefault(lane_of(request), _Lane()))

    return _send_in_order(read, abandon=state.abandon)
