"""KServe v2 / Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), on the same pipelines.

Uses the servicer stubs that the ``tritonclient`` wheel ships, so ``tritonclient`` and ``perf_analyzer`` talk to
trtserve unchanged. What a model looks like, how a request is checked and run, and the statistics are
:mod:`trtserve.serving.kserve_dataplane`'s, shared with the HTTP/REST transport; this module maps them onto gRPC.

Every model ``m`` is served twice: as ``m`` (encoded images in, detections out) and as ``m.raw`` (the model's own
tensors in and out; the data plane's docstring says how and why).

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelStatistics,
RepositoryIndex, ModelInfer, ModelStreamInfer, RepositoryModelLoad / Unload (the model control's load / unload,
with ``model_control: true``). Every other method of the service (shared memory, trace and log settings) answers
UNIMPLEMENTED saying so, with one log line per method per minute and no traceback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import aclosing
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from trtserve.errors import TrtserveError, clip
from trtserve.logs import RateLimitedLog
from trtserve.serving.kserve_dataplane import (
    INPUT_NAME,
    MODEL_VERSION,
    OUTPUT_COUNT,
    OUTPUT_DETECTIONS,
    OUTPUTS,
    VERSIONS,
    InferCall,
    KServeDataPlane,
    all_or_none,
    check_version,
    deserialize_bytes,
    max_elements,
    parse_infer_request,
)
from trtserve.serving.model_control import ModelControl, ModelControlOffError
from trtserve.serving.pipeline import Pipeline
from trtserve.serving.protocol import answer_in_order, fail_call, public_reason, status_code

R = TypeVar("R")

# the request-checking helpers live in the data plane; kept importable from here
__all__ = ["INPUT_NAME", "MODEL_VERSION", "OUTPUTS", "OUTPUT_COUNT", "OUTPUT_DETECTIONS", "VERSIONS", "InferCall",
           "KServeService", "all_or_none", "check_version", "deserialize_bytes", "max_elements",
           "parse_infer_request"]

logger = logging.getLogger(__name__)
SERVICE = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# what the methods trtserve does not serve are, for the client's message
_UNSERVED = {
    "SystemSharedMemoryStatus": "shared-memory tensors are not supported; send tensors in the request",
    "SystemSharedMemoryRegister": "shared-memory tensors are not supported; send tensors in the request",
    "SystemSharedMemoryUnregister": "shared-memory tensors are not supported; send tensors in the request",
    "CudaSharedMemoryStatus": "CUDA shared-memory tensors are not supported; send tensors in the request",
    "CudaSharedMemoryRegister": "CUDA shared-memory tensors are not supported; send tensors in the request",
    "CudaSharedMemoryUnregister": "CUDA shared-memory tensors are not supported; send tensors in the request",
    "TraceSetting": "tracing is not supported; per-stage times are on the Prometheus metrics port",
    "LogSettings": "log settings cannot be changed at run time",
}


def _unimplemented(method: str, log: RateLimitedLog) -> Callable[..., Coroutine[Any, Any, Any]]:
    why = _UNSERVED.get(method, "not implemented by trtserve")

    async def refuse(self: KServeService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        log.warning(method, "answered UNIMPLEMENTED to %s/%s from %s", SERVICE.full_name, method,
                context.peer())
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{SERVICE.full_name}/{method}: {why}")

    refuse.__name__ = method
    return refuse


class KServeService(kpb_grpc.GRPCInferenceServiceServicer):
    """The gRPC transport of :class:`KServeDataPlane`; errors map to status codes through ``protocol.status_code``."""

    def __init__(self, pipelines: Mapping[str, Pipeline], max_in_flight_per_stream: int = 4,
                 dataplane: KServeDataPlane | None = None) -> None:
        self.pipelines = pipelines
        self.dataplane = dataplane or KServeDataPlane(pipelines)
        self.max_in_flight = max_in_flight_per_stream

    async def _abort(self, exc: TrtserveError, context: grpc.aio.ServicerContext) -> None:
        await context.abort(status_code(exc), str(exc))

    async def ServerLive(self, request: kpb.ServerLiveRequest, context: grpc.aio.ServicerContext  # noqa: N802
                         ) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: kpb.ServerReadyRequest, context: grpc.aio.ServicerContext  # noqa: N802
                          ) -> kpb.ServerReadyResponse:
        return kpb.ServerReadyResponse(ready=self.dataplane.server_ready())

    async def ModelReady(self, request: kpb.ModelReadyRequest, context: grpc.aio.ServicerContext  # noqa: N802
                         ) -> kpb.ModelReadyResponse:
        return kpb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: kpb.ServerMetadataRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> kpb.ServerMetadataResponse:
        return self.dataplane.server_metadata()

    async def _answer(self, answer: Callable[[], R], context: grpc.aio.ServicerContext) -> R:
        """``answer()``, or the call aborted with its trtserve error's status."""
        try:
            return answer()
        except TrtserveError as exc:
            await self._abort(exc, context)
            raise

    async def ModelMetadata(self, request: kpb.ModelMetadataRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> kpb.ModelMetadataResponse:
        return await self._answer(lambda: self.dataplane.model_metadata(request.name, request.version), context)

    async def ModelConfig(self, request: kpb.ModelConfigRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> kpb.ModelConfigResponse:
        return await self._answer(lambda: kpb.ModelConfigResponse(
            config=self.dataplane.model_config(request.name, request.version)), context)

    async def ModelStatistics(self, request: kpb.ModelStatisticsRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> kpb.ModelStatisticsResponse:
        return await self._answer(lambda: self.dataplane.statistics(request.name, request.version), context)

    control: ModelControl | None = None  # set by the server: RepositoryModelLoad / Unload are its load / unload

    async def _model_control(self, load: bool, name: str, context: grpc.aio.ServicerContext) -> None:
        try:
            if self.control is None:
                raise ModelControlOffError("model control is not available on this server")
            self.control.check_rpc()
            await (self.control.load(name) if load else self.control.unload(name))
        except TrtserveError as exc:
            await self._abort(exc, context)
            raise

    async def RepositoryModelLoad(self, request: kpb.RepositoryModelLoadRequest,  # noqa: N802
                                  context: grpc.aio.ServicerContext) -> kpb.RepositoryModelLoadResponse:
        """trtserve.v1's LoadModel (a loaded model is reloaded beside the serving version); parameters are ignored."""
        await self._model_control(True, request.model_name, context)
        return kpb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: kpb.RepositoryModelUnloadRequest,  # noqa: N802
                                    context: grpc.aio.ServicerContext) -> kpb.RepositoryModelUnloadResponse:
        """trtserve.v1's UnloadModel."""
        await self._model_control(False, request.model_name, context)
        return kpb.RepositoryModelUnloadResponse()

    async def RepositoryIndex(self, request: kpb.RepositoryIndexRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> kpb.RepositoryIndexResponse:
        return self.dataplane.repository_index()

    async def ModelInfer(self, request: kpb.ModelInferRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext) -> kpb.ModelInferResponse:
        try:
            return await self.dataplane.infer(request)
        except Exception as exc:
            return fail_call(context, status_code(exc), public_reason(exc, f"ModelInfer request {clip(request.id)}"),
                             kpb.ModelInferResponse())

    async def _stream_answer(self, request: kpb.ModelInferRequest) -> kpb.ModelStreamInferResponse:
        try:
            return kpb.ModelStreamInferResponse(infer_response=await self.dataplane.infer(request))
        except Exception as exc:  # the stream goes on; this request gets its error (a bug: INTERNAL)
            reason = public_reason(exc, f"ModelStreamInfer request {clip(request.id)}")
            return kpb.ModelStreamInferResponse(error_message=f"{status_code(exc).name}: {reason}")

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[kpb.ModelInferRequest],  # noqa: N802
                               context: grpc.aio.ServicerContext) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently (so they batch), answers leave in request order."""
        async with aclosing(answer_in_order(request_iterator, self._stream_answer, self.max_in_flight)) as answers:
            async for response in answers:
                yield response


_UNIMPLEMENTED_LOG = RateLimitedLog(logger)
for _method in SERVICE.methods_by_name:
    if _method not in KServeService.__dict__:  # the generated base raises NotImplementedError: a traceback per call
        setattr(KServeService, _method, _unimplemented(_method, _UNIMPLEMENTED_LOG))
