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
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from trtserve.errors import TrtserveError, code_name
from trtserve.logs import RateLimitedLog

logger = logging.getLogger(__name__)
Q = TypeVar("Q")
R = TypeVar("R")


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for an exception: its ``grpc_code`` for trtserve errors, INTERNAL for bugs."""
    return getattr(grpc.StatusCode, code_name(error), grpc.StatusCode.INTERNAL)


def fail_call(context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str, empty: R) -> R:
    """End a unary call with ``code`` and ``reason``: set on the context, ``empty`` returned (gRPC sends the status
    alone). The same answer as ``await context.abort(...)`` for about a third less server CPU per call, which under
    overload is spent on every refused frame."""
    context.set_code(code)
    context.set_details(reason)
    return empty


def public_reason(error: Exception, what: str) -> str:
    """What the client is told: a trtserve error's own message; for anything else (a bug) "internal error" and a
    correlation id, after logging the traceback under that id as ``what`` having failed — never the exception's
    class, text or a library's path, which are the server's business. Call it inside the ``except`` block."""
    if isinstance(error, TrtserveError):
        return str(error)
    return internal_reason(what)


def internal_reason(what: str) -> str:
    """Log the exception being handled under a new correlation id; return the client's side of it."""
    incident = uuid.uuid4().hex[:12]
    logger.exception("%s failed unexpectedly [incident %s]", what, incident)
    return f"internal error (incident {incident}; the server log has the details)"


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
class _Freshest(Generic[Q, R]):
    """The state of one ``drop_oldest`` call: frames running per lane (stream id) and in all, and the newest
    frame waiting per lane, in arrival order. Both are bounded by ``max_in_flight_per_call`` whatever the number of
    stream ids a call invents, so one call cannot hold more than twice that many frames."""

    answer: Callable[[Q], Coroutine[Any, Any, R]]
    dropped: Callable[[Q], R]
    max_in_flight: int  # per lane
    max_in_flight_per_call: int
    running: dict[Hashable, int] = field(default_factory=dict)  # lanes with frames running only
    total: int = 0
    waiting: OrderedDict[Hashable, tuple[Q, asyncio.Future[R]]] = field(default_factory=OrderedDict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False  # the client went away: start nothing more

    def _can_start(self, lane: Hashable) -> bool:
        return self.total < self.max_in_flight_per_call and self.running.get(lane, 0) < self.max_in_flight

    def launch(self, request: Q, result: asyncio.Future[R], lane: Hashable) -> None:
        self.running[lane] = self.running.get(lane, 0) + 1
        self.total += 1

        async def run() -> None:
            try:
                response = await self.answer(request)
                if not result.done():
                    result.set_result(response)
            finally:
                self.total -= 1
                if (left := self.running[lane] - 1) > 0:
                    self.running[lane] = left
                else:
                    del self.running[lane]
                self._start_next()

        task = asyncio.create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _start_next(self) -> None:
        if self.closed:
            for _, result in self.waiting.values():
                result.cancel()
            self.waiting.clear()
            return
        for lane in self.waiting:  # the oldest waiting frame whose lane has room (at most the call's bound)
            if self._can_start(lane):
                self.launch(*self.waiting.pop(lane), lane)
                return

    def admit(self, request: Q, result: asyncio.Future[R], lane: Hashable) -> None:
        if lane not in self.waiting and self._can_start(lane):
            self.launch(request, result, lane)
            return
        if lane in self.waiting:  # a newer frame replaces this lane's waiting one, which is answered at once
            old_request, old_result = self.waiting.pop(lane)
        elif len(self.waiting) >= self.max_in_flight_per_call:  # the call's bound: drop its oldest waiting frame
            _, (old_request, old_result) = self.waiting.popitem(last=False)
        else:
            self.waiting[lane] = (request, result)
            return
        old_result.set_result(self.dropped(old_request))
        self.waiting[lane] = (request, result)

    def abandon(self) -> None:
        """The client went away: cancel what runs, and the waiting frames never start (see ``_start_next``)."""
        self.closed = True
        for task in list(self.tasks):
            task.cancel()
        if not self.tasks:
            self._start_next()


def answer_freshest(requests: AsyncIterator[Q], answer: Callable[[Q], Coroutine[Any, Any, R]],
                    lane_of: Callable[[Q], Hashable], dropped: Callable[[Q], R], max_in_flight: int,
                    max_in_flight_per_call: int | None = None) -> AsyncGenerator[R, None]:
    """The ``drop_oldest`` policy: per lane (a stream id), at most ``max_in_flight`` requests run and one waits;
    a newer request replaces the waiting one, which is answered ``dropped(request)``. Per call, at most
    ``max_in_flight_per_call`` (default: ``8 * max_in_flight``) run and as many wait, however many lanes the
    requests name; past that the call's oldest waiting request is dropped. Reading never stops, and the answers
    (``dropped`` ones included) leave in request order: live video keeps the freshest frame."""
    per_call = max_in_flight_per_call or 8 * max_in_flight
    state: _Freshest[Q, R] = _Freshest(answer, dropped, max_in_flight, max(per_call, max_in_flight))

    async def read(order: asyncio.Queue[Awaitable[R] | None]) -> None:
        async for request in requests:
            result: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            await order.put(result)
            state.admit(request, result, lane_of(request))

    return _send_in_order(read, abandon=state.abandon)


@dataclass(frozen=True)
class BadMessage:
    """What the tolerant deserializer makes of a message it cannot take: the status its call ends with."""

    code: grpc.StatusCode
    reason: str


class Drain:
    """Shutdown of the open streams: once :meth:`start` is called, no stream reads another request; every request
    already read is answered, then the call ends UNAVAILABLE (see :class:`IntakeInterceptor`)."""

    def __init__(self) -> None:
        self.draining = False
        self._readers: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self.draining = True
        for task in list(self._readers):  # each is waiting for a client's next request: stop waiting
            task.cancel()


@dataclass
class _Intake:
    """One request stream as its handler sees it: messages until a bad one or the drain, counted."""

    drain: Drain
    read: int = 0
    bad: BadMessage | None = None
    drained: bool = False

    async def requests(self, source: AsyncIterator[Any]) -> AsyncIterator[Any]:
        iterator = source.__aiter__()
        while not self.drain.draining:
            task = asyncio.current_task()
            assert task is not None
            # the read is shielded: a drain that cancels this wait just after a message arrived (before this task
            # resumed) must not lose that message — it is read, answered, and the stream stops after it
            pending = asyncio.ensure_future(iterator.__anext__())
            self.drain._readers.add(task)
            try:
                request = await asyncio.shield(pending)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not self.drain.draining:
                    pending.cancel()
                    raise
                for _ in range(3):  # a message already received completes the read within a few loop steps
                    if pending.done():
                        break
                    await asyncio.sleep(0)
                if pending.done() and not pending.cancelled() and isinstance(pending.exception(), StopAsyncIteration):
                    return  # the client had ended its stream: nothing was cut
                if not pending.done() or pending.cancelled() or pending.exception() is not None:
                    pending.cancel()
                    break  # cancelled by the drain while waiting: stop reading, the handler answers what it has
                request = pending.result()  # it had arrived: answered like the ones before it
            finally:
                self.drain._readers.discard(task)
            if isinstance(request, BadMessage):
                self.bad = request
                return
            self.read += 1
            yield request
        self.drained = True

    def ending(self) -> tuple[grpc.StatusCode, str] | None:
        if self.bad is not None:
            return self.bad.code, (f"message {self.read + 1} of this call: {self.bad.reason} (the {self.read} "
                                   "before it were answered)")
        if self.drained:
            return (grpc.StatusCode.UNAVAILABLE,
                    f"the server is shutting down: the {self.read} messages read were answered and no more are "
                    "read; reconnect (to another replica) and send the rest")
        return None


def tolerant_deserializer(parse: Callable[[bytes], Any], max_message_bytes: int, log: RateLimitedLog
                          ) -> Callable[[bytes], Any]:
    """``parse`` that never raises: an oversize or unparsable message becomes a :class:`BadMessage`, so the call
    can answer what it read before it and end with a clear status (gRPC would end it with none answered and a
    traceback in the log). Each kind is logged on ``log``: one line per interval."""

    def deserialize(data: bytes) -> Any:
        if len(data) > max_message_bytes:
            log.warning("oversize", "refused a message of %d bytes (max_message_bytes %d)", len(data),
                                max_message_bytes)
            return BadMessage(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"the message is {len(data)} bytes, over the server's max_message_bytes of "
                              f"{max_message_bytes}; send smaller frames (encode as JPEG) or raise max_message_bytes")
        try:
            return parse(data)
        except Exception:  # protobuf's DecodeError, or anything a hostile message provokes
            log.warning("unparsable", "refused a message of %d bytes that does not parse", len(data))
            return BadMessage(grpc.StatusCode.INVALID_ARGUMENT,
                              "the message does not parse as this method's request; check that the client was "
                              "generated from the server's protos")

    return deserialize


class IntakeInterceptor(grpc.aio.ServerInterceptor):
    """Guards the requests of ``services``' methods: a message over ``max_message_bytes`` or one that does not parse
    fails its call with RESOURCE_EXHAUSTED / INVALID_ARGUMENT — in a stream, after every request before it has been
    answered; and once ``drain`` starts, streams stop reading and end UNAVAILABLE after answering what they read.

    Deadlines, flow control and the handlers' own errors are untouched. gRPC itself still cuts a call whose message
    is over its own receive limit (the server sets that to twice ``max_message_bytes``), answering none of it.
    """

    def __init__(self, services: tuple[str, ...], max_message_bytes: int, drain: Drain) -> None:
        self._services = frozenset(services)
        self._max_message_bytes = max_message_bytes
        self._drain = drain
        self._log = RateLimitedLog(logger)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.strip("/").split("/")[0]
        if handler is None or service not in self._services or handler.request_deserializer is None:
            return handler
        handler = handler._replace(request_deserializer=tolerant_deserializer(handler.request_deserializer,
                                                                              self._max_message_bytes, self._log))
        drain = self._drain
        if not handler.request_streaming:
            if handler.response_streaming:
                unary_stream = handler.unary_stream

                async def checked_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    if isinstance(request, BadMessage):
                        await context.abort(request.code, request.reason)
                    async for response in unary_stream(request, context):
                        yield response

                return handler._replace(unary_stream=checked_stream)
            unary_unary = handler.unary_unary

            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, BadMessage):
                    await context.abort(request.code, request.reason)
                return await unary_unary(request, context)

            return handler._replace(unary_unary=checked)
        if handler.response_streaming:
            stream_stream = handler.stream_stream

            async def guarded_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                                     ) -> AsyncIterator[Any]:
                intake = _Intake(drain)
                async for response in stream_stream(intake.requests(requests), context):
                    yield response
                if (ending := intake.ending()) is not None:
                    await context.abort(*ending)

            return handler._replace(stream_stream=guarded_stream)
        stream_unary = handler.stream_unary

        async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            intake = _Intake(drain)
            response = await stream_unary(intake.requests(requests), context)
            if (ending := intake.ending()) is not None:
                await context.abort(*ending)
            return response

        return handler._replace(stream_unary=guarded)
