"""A server interceptor that counts gRPC calls: by the grpc-ecosystem convention, and per model for inference.

What it exports (families in :class:`~trtserve.monitoring.metrics.Metrics`):

- ``grpc_server_started_total{grpc_type,grpc_service,grpc_method}`` and
  ``grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`` for every call, health checks and
  reflection included, with go-grpc-prometheus' names and label values (``grpc_code`` is Go's code name:
  ``OK``, ``Canceled``, ``DeadlineExceeded``, ...), so gRPC dashboards and alert mixins work as they are. Its
  optional handling-time histogram is not exported: a StreamDetect call lasts as long as its camera, and the
  time of a frame is ``trtserve_stage_duration_seconds``.
- ``trtserve_requests_total{model,method,code}`` and ``trtserve_active_streams{method}`` for the inference APIs
  only (trtserve.v1, KServe v2): Kubernetes' probes and reflection are left out, so a rate of calls is a rate of
  work. ``model`` is read from the request's own field (``model``, KServe's ``model_name``, or ``name``), of the
  first message for a client-streaming call, an empty ``DetectRequest.model`` being the default model (the first
  loaded). Only a loaded model's name is used; a call that names none, or a model that is not loaded, gets
  ``model=""``, so a client cannot grow the label's values.

A call that ends because its deadline passed is counted ``DEADLINE_EXCEEDED``, as the client sees it: grpc
cancels the handler at the deadline without setting a status, which would otherwise read as ``CANCELLED``. The
interceptor also publishes the call's deadline (:data:`~trtserve.monitoring.metrics.CALL_DEADLINE`) so that the
frames such a call abandons are counted the same way in ``trtserve_frames_total``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from trtserve.monitoring.metrics import CALL_DEADLINE, Metrics

# services whose calls are not inference work: counted only in the grpc_server_* families
UNCOUNTED_SERVICE_PREFIXES = ("grpc.health.", "grpc.reflection.")
# request fields naming the model, and whether an empty value means the server's default model
_MODEL_FIELDS = (("model", True), ("model_name", False), ("name", False))


def go_code_name(code: grpc.StatusCode) -> str:
    """Go's name of a status code (``DEADLINE_EXCEEDED`` -> ``DeadlineExceeded``; ``CANCELLED`` -> ``Canceled``)."""
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    if code is grpc.StatusCode.OK:
        return "OK"
    return "".join(word.capitalize() for word in code.name.split("_"))


def _status(context: grpc.aio.ServicerContext, error: BaseException | None, deadline: float | None) -> grpc.StatusCode:
    """The status a call ended with: what the handler set (abort included), else from the exception and deadline."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpcio releases return the raw enum value
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # the client went away, or the deadline passed
        if deadline is not None and time.monotonic() >= deadline:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN  # what grpc answers for an unhandled exception in a handler


def _grpc_type(handler: Any) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by the gRPC convention and inference calls per model (module docstring).

    Method names come from the registered services only (unknown methods never reach a handler), so the labels
    stay bounded. Put it first so that calls refused by later interceptors (authentication) are counted.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def _model(self, request: Any) -> str:
        """The loaded model a request names ("" when none); the default model for an empty ``model`` field."""
        known = self._metrics.models
        for field, empty_is_default in _MODEL_FIELDS:
            name = getattr(request, field, None)
            if isinstance(name, str):
                if not name and empty_is_default:
                    return next(iter(known), "")
                return name if name in known else ""
        return ""

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        service, _, short = method.lstrip("/").partition("/")
        labels = (_grpc_type(handler), service, short)
        started = self._metrics.grpc_started.labels(*labels)
        handled = self._metrics.grpc_handled
        inference = not service.startswith(UNCOUNTED_SERVICE_PREFIXES)
        requests = self._metrics.requests
        streams = self._metrics.active_streams.labels(method) if inference else None
        model_of = self._model

        def begin(request: Any, context: grpc.aio.ServicerContext) -> tuple[Any, float | None, list[str]]:
            """Count the call started; its deadline (also for the tasks its handler starts), and the request (a
            stream's iterator wrapped so that its first message names the model into ``seen``)."""
            started.inc()
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            CALL_DEADLINE.set(deadline)
            seen: list[str] = []
            if handler.request_streaming:
                request = _first_model(request, model_of, seen)
            else:
                seen.append(model_of(request))
            return request, deadline, seen

        def finish(context: grpc.aio.ServicerContext, error: BaseException | None, deadline: float | None,
                   model: str) -> None:
            status = _status(context, error, deadline)
            handled.labels(*labels, go_code_name(status)).inc()
            if inference:
                requests.labels(model, method, status.name).inc()

        if not handler.response_streaming:
            behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                request, deadline, seen = begin(request, context)
                error: BaseException | None = None
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    finish(context, error, deadline, seen[0] if seen else "")

            field = "stream_unary" if handler.request_streaming else "unary_unary"
            return handler._replace(**{field: unary_response})

        stream_behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream

        async def streaming_response(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            request, deadline, seen = begin(request, context)
            error: BaseException | None = None
            if streams is not None:
                streams.inc()
            result = stream_behavior(request, context)
            try:
                if hasattr(result, "__aiter__"):
                    async for response in result:
                        yield response
                else:  # a coroutine that writes with context.write (grpc.health.v1 Watch does)
                    await result
            except BaseException as exc:
                error = exc
                raise
            finally:
                if hasattr(result, "aclose"):  # run the handler's own clean-up now, not at garbage collection
                    await result.aclose()
                if streams is not None:
                    streams.dec()
                finish(context, error, deadline, seen[0] if seen else "")

        field = "stream_stream" if handler.request_streaming else "unary_stream"
        return handler._replace(**{field: streaming_response})


class _first_model:  # noqa: N801 - used as the function it replaced
    """``requests`` passed through; the model the first one names is appended to ``seen``.

    A plain async iterator, not an async generator: after the first message ``__anext__`` hands out the request
    stream's own awaitable, so a stream's messages cost no extra generator step each."""

    def __init__(self, requests: AsyncIterator[Any], model_of: Callable[[Any], str], seen: list[str]) -> None:
        self._source = requests
        self._requests: AsyncIterator[Any] | None = None  # grpc makes its reader on __aiter__: only once read
        self._model_of = model_of
        self._seen = seen

    def __aiter__(self) -> _first_model:
        return self

    def __anext__(self) -> Awaitable[Any]:
        if self._requests is not None and self._seen:
            return self._requests.__anext__()
        return self._first()

    async def _first(self) -> Any:
        if self._requests is None:
            self._requests = self._source.__aiter__()
        request = await self._requests.__anext__()
        if not self._seen:
            self._seen.append(self._model_of(request))
        return request
