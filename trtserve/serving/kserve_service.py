"""KServe v2 / Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), on the same pipelines.

Uses the servicer stubs that the ``tritonclient`` wheel ships, so ``tritonclient`` and
``perf_analyzer`` talk to trtserve unchanged. Each model is exposed as:

* input ``IMAGE``: ``BYTES``, shape ``[N]`` (or ``[N, 1]``) — one encoded JPEG/PNG per element;
* output ``DETECTIONS``: ``FP32`` ``[N, max_detections, 6]`` — x1, y1, x2, y2 (frame pixels), score,
  class id; rows past a frame's count are zero;
* output ``NUM_DETECTIONS``: ``INT32`` ``[N]``.

Every element goes through the model's batcher like a ``trtserve.v1`` frame, so both protocols share
batching (elements of concurrent requests are batched together).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from trtserve import __version__
from trtserve.errors import InvalidFrameError, TrtserveError
from trtserve.serving.pipeline import FrameOutcome, Pipeline, find_pipeline
from trtserve.serving.protocol import answer_in_order, public_reason, status_code

INPUT_NAME = "IMAGE"
OUTPUT_DETECTIONS = "DETECTIONS"
OUTPUT_COUNT = "NUM_DETECTIONS"


def deserialize_bytes(raw: bytes) -> list[bytes]:
    """Triton's BYTES wire format: each element is a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidFrameError("raw BYTES tensor is truncated (a length prefix is cut off)")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidFrameError(f"raw BYTES tensor is truncated: element of {length} bytes runs past the end")
        items.append(raw[offset : offset + length])
        offset += length
    return items


class KServeService(kpb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, pipelines: Mapping[str, Pipeline], max_in_flight_per_stream: int = 4) -> None:
        self.pipelines = pipelines
        self.max_in_flight = max_in_flight_per_stream

    async def _pipeline_or_abort(self, name: str, context: grpc.aio.ServicerContext) -> Pipeline:
        try:
            return find_pipeline(self.pipelines, name)
        except TrtserveError as exc:
            await context.abort(status_code(exc), str(exc))
            raise  # abort raises; this only satisfies type checkers

    async def ServerLive(self, request: kpb.ServerLiveRequest, context: grpc.aio.ServicerContext  # noqa: N802
                         ) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: kpb.ServerReadyRequest, context: grpc.aio.ServicerContext  # noqa: N802
                          ) -> kpb.ServerReadyResponse:
        return kpb.ServerReadyResponse(ready=bool(self.pipelines))

    async def ModelReady(self, request: kpb.ModelReadyRequest, context: grpc.aio.ServicerContext  # noqa: N802
                         ) -> kpb.ModelReadyResponse:
        return kpb.ModelReadyResponse(ready=request.name in self.pipelines)

    async def ServerMetadata(self, request: kpb.ServerMetadataRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(name="trtserve", version=__version__, extensions=[])

    async def ModelMetadata(self, request: kpb.ModelMetadataRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> kpb.ModelMetadataResponse:
        p = await self._pipeline_or_abort(request.name, context)
        k = p.detector.thresholds.max_detections
        tensor = kpb.ModelMetadataResponse.TensorMetadata
        return kpb.ModelMetadataResponse(
            name=request.name, versions=["1"], platform=f"trtserve_{p.detector.backend.name}",
            inputs=[tensor(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
            outputs=[tensor(name=OUTPUT_DETECTIONS, datatype="FP32", shape=[-1, k, 6]),
                     tensor(name=OUTPUT_COUNT, datatype="INT32", shape=[-1])])

    async def ModelConfig(self, request: kpb.ModelConfigRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> kpb.ModelConfigResponse:
        p = await self._pipeline_or_abort(request.name, context)
        k = p.detector.thresholds.max_detections
        config = mc.ModelConfig(
            name=request.name, platform=f"trtserve_{p.detector.backend.name}",
            max_batch_size=p.settings.max_batch_size,
            input=[mc.ModelInput(name=INPUT_NAME, data_type=mc.TYPE_STRING, dims=[1])],
            output=[mc.ModelOutput(name=OUTPUT_DETECTIONS, data_type=mc.TYPE_FP32, dims=[k, 6]),
                    mc.ModelOutput(name=OUTPUT_COUNT, data_type=mc.TYPE_INT32, dims=[1])],
            dynamic_batching=mc.ModelDynamicBatching(
                preferred_batch_size=list(p.settings.preferred_batch_sizes),
                max_queue_delay_microseconds=int(p.settings.max_queue_delay_ms * 1000)))
        return kpb.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request: kpb.RepositoryIndexRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> kpb.RepositoryIndexResponse:
        return kpb.RepositoryIndexResponse(models=[
            kpb.RepositoryIndexResponse.ModelIndex(name=n, version="1", state="READY") for n in self.pipelines])

    def _images(self, request: kpb.ModelInferRequest) -> list[bytes]:
        if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
            raise InvalidFrameError(f"expected exactly one input named {INPUT_NAME!r}, got "
                                    f"{[i.name for i in request.inputs]}")
        tensor = request.inputs[0]
        if tensor.datatype != "BYTES":
            raise InvalidFrameError(f"input {INPUT_NAME!r} has datatype {tensor.datatype}; expected BYTES "
                                    "(encoded JPEG/PNG images)")
        shape = list(tensor.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
            raise InvalidFrameError(f"input {INPUT_NAME!r} has shape {shape}; expected [N] or [N, 1]")
        if request.raw_input_contents:
            images = deserialize_bytes(request.raw_input_contents[0])
        else:
            images = list(tensor.contents.bytes_contents)
        if len(images) != shape[0]:
            raise InvalidFrameError(f"input {INPUT_NAME!r} declares {shape[0]} elements but carries {len(images)}")
        return images

    async def _infer(self, request: kpb.ModelInferRequest) -> kpb.ModelInferResponse:
        pipeline = find_pipeline(self.pipelines, request.model_name)
        images = self._images(request)
        outcomes: list[FrameOutcome] = await asyncio.gather(*(pipeline.detect(img) for img in images))
        k = pipeline.detector.thresholds.max_detections
        detections = np.zeros((len(outcomes), k, 6), np.float32)
        counts = np.zeros(len(outcomes), np.int32)
        for i, outcome in enumerate(outcomes):
            d = outcome.detections
            n = min(len(d), k)
            counts[i] = n
            detections[i, :n, :4] = d.boxes_xyxy[:n]
            detections[i, :n, 4] = d.scores[:n]
            detections[i, :n, 5] = d.class_ids[:n]
        out = kpb.ModelInferResponse.InferOutputTensor
        return kpb.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id,
            outputs=[out(name=OUTPUT_DETECTIONS, datatype="FP32", shape=list(detections.shape)),
                     out(name=OUTPUT_COUNT, datatype="INT32", shape=list(counts.shape))],
            raw_output_contents=[detections.tobytes(), counts.tobytes()])

    async def ModelInfer(self, request: kpb.ModelInferRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext) -> kpb.ModelInferResponse:
        try:
            return await self._infer(request)
        except Exception as exc:
            await context.abort(status_code(exc), public_reason(exc, f"ModelInfer request {request.id!r}"))
            raise

    async def _stream_answer(self, request: kpb.ModelInferRequest) -> kpb.ModelStreamInferResponse:
        try:
            return kpb.ModelStreamInferResponse(infer_response=await self._infer(request))
        except Exception as exc:  # the stream goes on; this request gets its error (a bug: INTERNAL)
            reason = public_reason(exc, f"ModelStreamInfer request {request.id!r}")
            return kpb.ModelStreamInferResponse(error_message=f"{status_code(exc).name}: {reason}")

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[kpb.ModelInferRequest],  # noqa: N802
                               context: grpc.aio.ServicerContext) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently (so they batch), answers leave in request order."""
        async with aclosing(answer_in_order(request_iterator, self._stream_answer, self.max_in_flight)) as answers:
            async for response in answers:
                yield response
