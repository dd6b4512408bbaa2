"""A server interceptor that counts finished gRPC calls by method and status code, and open streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from trtserve.monitoring.metrics import Metrics


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status a call ended with: what the handler set (abort included), else from the exception."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpcio releases return the raw enum value
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    if error is None:
        return "OK"
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # the client went away mid-stream
        return "CANCELLED"
    return "UNKNOWN"  # what grpc answers for an unhandled exception in a handler


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts ``trtserve_requests_total{method, code}`` and ``trtserve_active_streams{method}``.

    Method names come from the registered services only (unknown methods never reach a handler), so
    the label stays bounded. Put it first so that calls refused by later interceptors are counted.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        requests = self._metrics.requests
        streams = self._metrics.active_streams.labels(method)

        if not handler.response_streaming:
            behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                error: BaseException | None = None
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    requests.labels(method, _code(context, error)).inc()

            field = "stream_unary" if handler.request_streaming else "unary_unary"
            return handler._replace(**{field: unary_response})

        stream_behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream

        async def streaming_response(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            error: BaseException | None = None
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
                streams.dec()
                requests.labels(method, _code(context, error)).inc()

        field = "stream_stream" if handler.request_streaming else "unary_stream"
        return handler._replace(**{field: streaming_response})
