"""KServe v2 / Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), on the same pipelines.

Uses the servicer stubs that the ``tritonclient`` wheel ships, so ``tritonclient`` and
``perf_analyzer`` talk to trtserve unchanged. Each model is exposed, as version ``"1"``, as:

* input ``IMAGE``: ``BYTES``, shape ``[N]`` (or ``[N, 1]``) — one encoded JPEG/PNG per element, in
  ``contents.bytes_contents`` or in one ``raw_input_contents`` buffer (not both);
* output ``DETECTIONS``: ``FP32`` ``[N, max_detections, 6]`` — x1, y1, x2, y2 (frame pixels), score,
  class id; rows past a frame's count are zero;
* output ``NUM_DETECTIONS``: ``INT32`` ``[N]``.

A request that names outputs is answered with those only, in its order; one that names none gets both.

A request is checked whole before any element is decoded, as Triton checks it (:func:`parse_infer_request`):
an unknown version is NOT_FOUND; more than the model's max batch of elements (``max_batch_size``, or
``max_queue_size`` when smaller — such a request could never be admitted), an unknown, repeated or
classification output, or a tensor that is ambiguous or malformed is INVALID_ARGUMENT. Every element then
goes through the model's batcher like a ``trtserve.v1`` frame, so both protocols share batching (elements of
concurrent requests are batched together). A request's elements succeed or fail together: the first element
to fail cancels its siblings (their frames never reach the engine) and answers the request with its status,
and a cancelled call cancels them all.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from trtserve import __version__
from trtserve.errors import InvalidFrameError, ModelNotFoundError, TrtserveError, clip
from trtserve.serving.pipeline import FrameOutcome, Pipeline, find_pipeline
from trtserve.serving.protocol import answer_in_order, public_reason, status_code

INPUT_NAME = "IMAGE"
OUTPUT_DETECTIONS = "DETECTIONS"
OUTPUT_COUNT = "NUM_DETECTIONS"
OUTPUTS = (OUTPUT_DETECTIONS, OUTPUT_COUNT)
MODEL_VERSION = "1"
VERSIONS = ("", MODEL_VERSION)  # "" asks for the latest, as in Triton
_NON_BYTES_CONTENTS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                       "fp32_contents", "fp64_contents")
T = TypeVar("T")


def deserialize_bytes(raw: bytes, max_items: int | None = None) -> list[bytes]:
    """Triton's BYTES wire format: each element is a 4-byte little-endian length, then the bytes.

    With ``max_items``, reading stops with InvalidFrameError as soon as a ``max_items + 1``-th element starts, so a
    buffer of many tiny elements never becomes a long list. Returns copies (the caller owns them).
    """
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if max_items is not None and len(items) >= max_items:
            raise InvalidFrameError(f"raw BYTES tensor carries more than the {max_items} elements it declares")
        if offset + 4 > len(raw):
            raise InvalidFrameError("raw BYTES tensor is truncated (a length prefix is cut off)")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidFrameError(f"raw BYTES tensor is truncated: element of {length} bytes runs past the end")
        items.append(raw[offset : offset + length])
        offset += length
    return items


@dataclass(frozen=True)
class InferCall:
    """A ModelInfer request that passed :func:`parse_infer_request`: its images, and the outputs to answer with."""

    images: list[bytes]
    outputs: tuple[str, ...]


def max_elements(pipeline: Pipeline) -> int:
    """Elements one request may carry: the model's max batch, or its queue bound when smaller."""
    return min(pipeline.settings.max_batch_size, pipeline.settings.max_queue_size)


def check_version(model: str, version: str) -> None:
    """ModelNotFoundError (NOT_FOUND) naming the available versions, unless ``version`` is ``""`` or ``"1"``."""
    if version not in VERSIONS:
        raise ModelNotFoundError(f"model {clip(model)} has no version {clip(version)}; "
                                 f"available versions: [{MODEL_VERSION!r}]")


def _names(names: Sequence[str], total: int) -> str:
    """At most the first few of ``total`` client-chosen names, each clipped, for an error message."""
    more = f", … ({total - len(names)} more)" if total > len(names) else ""
    return f"[{', '.join(clip(n) for n in names)}{more}]"


def _requested_outputs(request: kpb.ModelInferRequest) -> tuple[str, ...]:
    names: list[str] = []
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise InvalidFrameError(f"unknown output {clip(output.name)} requested; model "
                                    f"{clip(request.model_name)} has outputs {list(OUTPUTS)}")
        if output.name in names:
            raise InvalidFrameError(f"output {output.name!r} is requested more than once")
        if "classification" in output.parameters:
            raise InvalidFrameError(f"output {output.name!r}: the classification extension is not supported "
                                    "(a detector's outputs are boxes, not class scores); request it without "
                                    "class_count")
        names.append(output.name)  # other parameters (binary_data) change nothing over gRPC: ignored, as Triton does
    return tuple(names) or OUTPUTS


def _elements(tensor: kpb.ModelInferRequest.InferInputTensor, raw: Sequence[bytes], max_batch: int) -> list[bytes]:
    if tensor.datatype != "BYTES":
        raise InvalidFrameError(f"input {INPUT_NAME!r} has datatype {clip(tensor.datatype)}; expected BYTES "
                                "(encoded JPEG/PNG images)")
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise InvalidFrameError(f"input {INPUT_NAME!r} has shape {clip(shape)}; expected [N] or [N, 1]")
    declared = shape[0]
    if declared > max_batch:
        raise InvalidFrameError(f"input {INPUT_NAME!r} has {declared} elements; at most {max_batch} per request "
                                "(the model's max batch size): split the request")
    contents = tensor.contents
    carried = [f for f in _NON_BYTES_CONTENTS if len(getattr(contents, f))]
    if carried:
        raise InvalidFrameError(f"input {INPUT_NAME!r} carries {carried[0]}; a BYTES input takes bytes_contents "
                                "or raw_input_contents")
    if len(raw) > 1:
        raise InvalidFrameError(f"the request carries {len(raw)} raw_input_contents buffers for its one input "
                                f"{INPUT_NAME!r}; expected one")
    if raw:
        if len(contents.bytes_contents):
            raise InvalidFrameError(f"input {INPUT_NAME!r} carries both contents and raw_input_contents; "
                                    "send one of them")
        images = deserialize_bytes(raw[0], max_items=declared)
    else:
        if len(contents.bytes_contents) > declared:
            raise InvalidFrameError(f"input {INPUT_NAME!r} declares {declared} elements but carries "
                                    f"{len(contents.bytes_contents)}")
        images = list(contents.bytes_contents)
    if len(images) != declared:
        raise InvalidFrameError(f"input {INPUT_NAME!r} declares {declared} elements but carries {len(images)}")
    return images


def parse_infer_request(request: kpb.ModelInferRequest, max_batch: int) -> InferCall:
    """Check a ModelInfer request whole, before any element is decoded, and return its images and outputs.

    Pure: no server needed. ``max_batch`` is the most elements one request may carry (:func:`max_elements`).
    Raises ModelNotFoundError (NOT_FOUND) for an unknown version and InvalidFrameError (INVALID_ARGUMENT) for
    everything else, never another exception; echoed client values are clipped. The element count is checked
    on the declared shape first, and the raw buffer is read no further than that count.
    """
    check_version(request.model_name, request.model_version)
    outputs = _requested_outputs(request)
    inputs = request.inputs
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise InvalidFrameError(f"expected exactly one input named {INPUT_NAME!r}, got "
                                f"{_names([i.name for i in inputs[:5]], len(inputs))}")
    return InferCall(_elements(request.inputs[0], request.raw_input_contents, max_batch), outputs)


async def all_or_none(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` concurrently and return their results in order; the first to fail fails them all.

    Like Python 3.11's ``TaskGroup`` (this runs on 3.10): when one raises, the others are cancelled, awaited, and
    the first failure (in time; the earliest in order among those failing together) is raised. When the caller
    is cancelled, every one is cancelled too. Nothing is left running and no exception goes unretrieved.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failures = [e for t in tasks if t in done and not t.cancelled() and (e := t.exception()) is not None]
        if failures:
            raise failures[0]
        return [t.result() for t in tasks]  # all done (one cancelled by someone else raises CancelledError)
    finally:
        running = [t for t in tasks if not t.done()]
        for t in running:
            t.cancel()
        if running:
            await asyncio.wait(running)
        for t in tasks:  # retrieve the siblings' own failures, so asyncio does not log them as never retrieved
            if t.done() and not t.cancelled():
                t.exception()


class KServeService(kpb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, pipelines: Mapping[str, Pipeline], max_in_flight_per_stream: int = 4) -> None:
        self.pipelines = pipelines
        self.max_in_flight = max_in_flight_per_stream

    async def _pipeline_or_abort(self, name: str, version: str, context: grpc.aio.ServicerContext) -> Pipeline:
        try:
            pipeline = find_pipeline(self.pipelines, name)
            check_version(name, version)
            return pipeline
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
        return kpb.ModelReadyResponse(ready=request.name in self.pipelines and request.version in VERSIONS)

    async def ServerMetadata(self, request: kpb.ServerMetadataRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(name="trtserve", version=__version__, extensions=[])

    async def ModelMetadata(self, request: kpb.ModelMetadataRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> kpb.ModelMetadataResponse:
        p = await self._pipeline_or_abort(request.name, request.version, context)
        k = p.detector.thresholds.max_detections
        tensor = kpb.ModelMetadataResponse.TensorMetadata
        return kpb.ModelMetadataResponse(
            name=request.name, versions=[MODEL_VERSION], platform=f"trtserve_{p.detector.backend.name}",
            inputs=[tensor(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
            outputs=[tensor(name=OUTPUT_DETECTIONS, datatype="FP32", shape=[-1, k, 6]),
                     tensor(name=OUTPUT_COUNT, datatype="INT32", shape=[-1])])

    async def ModelConfig(self, request: kpb.ModelConfigRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> kpb.ModelConfigResponse:
        p = await self._pipeline_or_abort(request.name, request.version, context)
        k = p.detector.thresholds.max_detections
        config = mc.ModelConfig(
            name=request.name, platform=f"trtserve_{p.detector.backend.name}",
            max_batch_size=max_elements(p),  # what one request may carry, so perf_analyzer stays inside it
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
            kpb.RepositoryIndexResponse.ModelIndex(name=n, version=MODEL_VERSION, state="READY")
            for n in self.pipelines])

    async def _infer(self, request: kpb.ModelInferRequest) -> kpb.ModelInferResponse:
        pipeline = find_pipeline(self.pipelines, request.model_name)
        call = parse_infer_request(request, max_elements(pipeline))
        outcomes: list[FrameOutcome] = await all_or_none([pipeline.detect(img) for img in call.images])
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
        tensors = {OUTPUT_DETECTIONS: (out(name=OUTPUT_DETECTIONS, datatype="FP32", shape=list(detections.shape)),
                                       detections),
                   OUTPUT_COUNT: (out(name=OUTPUT_COUNT, datatype="INT32", shape=list(counts.shape)), counts)}
        return kpb.ModelInferResponse(
            model_name=request.model_name, model_version=MODEL_VERSION, id=request.id,
            outputs=[tensors[name][0] for name in call.outputs],
            raw_output_contents=[tensors[name][1].tobytes() for name in call.outputs])

    async def ModelInfer(self, request: kpb.ModelInferRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext) -> kpb.ModelInferResponse:
        try:
            return await self._infer(request)
        except Exception as exc:
            await context.abort(status_code(exc), public_reason(exc, f"ModelInfer request {clip(request.id)}"))
            raise

    async def _stream_answer(self, request: kpb.ModelInferRequest) -> kpb.ModelStreamInferResponse:
        try:
            return kpb.ModelStreamInferResponse(infer_response=await self._infer(request))
        except Exception as exc:  # the stream goes on; this request gets its error (a bug: INTERNAL)
            reason = public_reason(exc, f"ModelStreamInfer request {clip(request.id)}")
            return kpb.ModelStreamInferResponse(error_message=f"{status_code(exc).name}: {reason}")

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[kpb.ModelInferRequest],  # noqa: N802
                               context: grpc.aio.ServicerContext) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently (so they batch), answers leave in request order."""
        async with aclosing(answer_in_order(request_iterator, self._stream_answer, self.max_in_flight)) as answers:
            async for response in answers:
                yield response
