"""The ``trtserve.v1.DetectionService`` gRPC servicer (asyncio), a thin adapter over :class:`Pipeline`.

Errors become gRPC status codes in :mod:`trtserve.serving.protocol` (shared with KServe). In ``StreamDetect`` a
failing frame does not end the stream: it is answered with ``STATUS_ERROR`` and its code and reason.

A ``head: raw`` model answers with its own output tensors in ``DetectResponse.tensors`` (each its frame's slice, the
batch dim removed, row-major little-endian bytes, KServe datatype names); ``DetectRequest.outputs`` asks for some of
them (empty: all; a name the model does not have, or ``outputs`` on a detector, is INVALID_ARGUMENT before the frame
runs). Raw pixels may be BGR8, RGB8 or GRAY8 (one byte per pixel, converted to BGR as grayscale encoded frames are).
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import asdict

import grpc
import numpy as np

from trtserve.errors import InvalidFrameError, TrtserveError, clip
from trtserve.heads.base import Thresholds
from trtserve.serving.kserve_dataplane import kserve_datatype
from trtserve.serving.pipeline import FrameOutcome, Pipeline, find_pipeline
from trtserve.serving.protocol import answer_freshest, answer_in_order, fail_call, public_reason, status_code
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

_CHANNELS = {pb.PIXEL_FORMAT_BGR8: 3, pb.PIXEL_FORMAT_RGB8: 3, pb.PIXEL_FORMAT_GRAY8: 1}


def _frame(request: pb.DetectRequest) -> bytes | np.ndarray:
    kind = request.image.WhichOneof("data")
    if kind == "encoded":
        return request.image.encoded
    if kind == "raw":
        raw = request.image.raw
        channels = _CHANNELS.get(raw.format)
        if channels is None:
            raise InvalidFrameError("raw image has no pixel format; set PIXEL_FORMAT_BGR8, PIXEL_FORMAT_RGB8 or "
                                    "PIXEL_FORMAT_GRAY8")
        expected = raw.height * raw.width * channels
        if len(raw.pixels) != expected:
            what = "GRAY8, one byte per pixel" if channels == 1 else f"{pb.PixelFormat.Name(raw.format)[13:]} x3"
            raise InvalidFrameError(f"raw image of {raw.width}x{raw.height} ({what}) needs {expected} bytes, "
                                    f"got {len(raw.pixels)}")
        if channels == 1:  # grayscale (IR and night cameras): converted to BGR by the pipeline's frame check
            return np.frombuffer(raw.pixels, np.uint8).reshape(raw.height, raw.width)
        array = np.frombuffer(raw.pixels, np.uint8).reshape(raw.height, raw.width, 3)
        return np.ascontiguousarray(array[..., ::-1]) if raw.format == pb.PIXEL_FORMAT_RGB8 else array
    raise InvalidFrameError("request has no image; set image.encoded or image.raw")


def requested_outputs(pipeline: Pipeline, request: pb.DetectRequest) -> tuple[str, ...]:
    """The output tensors a frame is answered with: none for a detector, the requested ones (all when none are) for
    a ``head: raw`` model; InvalidFrameError for an unknown or repeated name, or ``outputs`` on a detector."""
    names = list(request.outputs)
    if pipeline.detector.head.type != "raw":
        if names:
            raise InvalidFrameError(f"model {pipeline.detector.config.name!r} decodes detections; 'outputs' applies to "
                                    "head: raw models only (for its raw tensors use the KServe model "
                                    f"'{pipeline.detector.config.name}.raw')")
        return ()
    known = [t.name for t in pipeline.detector.backend.outputs]  # the same names as raw_outputs(), per frame cheaper
    for i, name in enumerate(names):
        if name not in known:
            raise InvalidFrameError(f"unknown output {clip(name)} requested; model "
                                    f"{pipeline.detector.config.name!r} has outputs {known}")
        if name in names[:i]:
            raise InvalidFrameError(f"output {name!r} is requested more than once")
    return tuple(names) or tuple(known)


OVERLOAD_POLICY_KEY = "x-trtserve-overload-policy"
OVERLOAD_POLICIES = ("block", "drop_oldest")


class DetectionService(pb_grpc.DetectionServiceServicer):
    def __init__(self, pipelines: Mapping[str, Pipeline], default_model: str, max_in_flight_per_stream: int = 16
                 ) -> None:
        self.pipelines = pipelines
        self.default_model = default_model
        self.max_in_flight = max_in_flight_per_stream
        self.frames_started = 0  # frames that reached a handler (for drain checks and metrics)

    def _pipeline(self, name: str) -> Pipeline:
        return find_pipeline(self.pipelines, name or self.default_model)

    def _thresholds(self, pipeline: Pipeline, request: pb.DetectRequest) -> Thresholds | None:
        t = request.thresholds
        if not (t.HasField("score") or t.HasField("iou") or t.HasField("max_detections")):
            return None
        return pipeline.detector.with_thresholds(
            t.score if t.HasField("score") else None, t.iou if t.HasField("iou") else None,
            t.max_detections if t.HasField("max_detections") and t.max_detections > 0 else None)

    async def _answer(self, request: pb.DetectRequest, deadline_s: float | None) -> pb.DetectResponse:
        """Run one frame; never raises for a frame's failure (it becomes STATUS_ERROR; a bug, INTERNAL)."""
        response = pb.DetectResponse(stream_id=request.stream_id, sequence=request.sequence)
        self.frames_started += 1
        try:
            pipeline = self._pipeline(request.model)
            outputs = requested_outputs(pipeline, request)
            outcome = await pipeline.detect(_frame(request), self._thresholds(pipeline, request), deadline_s)
        except Exception as exc:
            response.status = pb.STATUS_ERROR
            response.error_code = status_code(exc).name
            response.reason = public_reason(exc, f"frame {request.stream_id}/{request.sequence}")
            return response
        self._fill(response, pipeline, outcome, outputs)
        return response

    @staticmethod
    def _fill(response: pb.DetectResponse, pipeline: Pipeline, outcome: FrameOutcome,
              outputs: tuple[str, ...] = ()) -> None:
        names = pipeline.detector.config.class_names
        det = outcome.detections
        response.status = pb.STATUS_OK
        response.model = pipeline.detector.config.name
        response.precision = pipeline.detector.precision
        response.frame_width, response.frame_height = outcome.frame_width_px, outcome.frame_height_px
        response.timing.queue_seconds = outcome.queue_s
        response.timing.inference_seconds = outcome.inference_s
        response.timing.preprocess_seconds = outcome.preprocess_s
        response.timing.postprocess_seconds = outcome.postprocess_s
        response.timing.total_seconds = outcome.total_s
        for box, score, cls in zip(det.boxes_xyxy.tolist(), det.scores.tolist(), det.class_ids.tolist()):
            response.detections.add(box=pb.Box(x_min=box[0], y_min=box[1], x_max=box[2], y_max=box[3]),
                                    score=score, class_id=cls, label=names[cls] if cls < len(names) else str(cls))
        for name in outputs:
            array = np.ascontiguousarray(det.raw[name])
            response.tensors.add(name=name, datatype=kserve_datatype(array.dtype), shape=list(array.shape),
                                 data=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:  # noqa: N802
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining  # the batcher's clock
        response = await self._answer(request, deadline)
        if response.status == pb.STATUS_ERROR:
            return fail_call(context, getattr(grpc.StatusCode, response.error_code), response.reason,
                             pb.DetectResponse())
        return response

    async def StreamDetect(self, request_iterator: AsyncIterator[pb.DetectRequest],  # noqa: N802
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DetectResponse]:
        """Answers leave in arrival order, so in order per stream; every frame gets exactly one.

        Overload policy (call metadata ``x-trtserve-overload-policy``, default ``block``):
        ``block`` — at most ``max_in_flight`` frames of the call are in the pipeline; past that the
        server stops reading, which is flow control back to the client. ``drop_oldest`` — per stream,
        at most ``max_in_flight`` frames run and one waits; a newer frame replaces the waiting one,
        which is answered ``STATUS_DROPPED``: live video keeps the freshest frame. Per call (whatever stream
        ids it sends), at most 8 x ``max_in_flight`` run and as many wait; past that its oldest waiting frame
        is dropped.
        """
        metadata = dict(context.invocation_metadata() or ())
        policy = metadata.get(OVERLOAD_POLICY_KEY, "block")
        if policy not in OVERLOAD_POLICIES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{OVERLOAD_POLICY_KEY} {clip(policy)}; expected one of {list(OVERLOAD_POLICIES)}")
        answer = functools.partial(self._answer, deadline_s=None)
        answers = (answer_in_order(request_iterator, answer, self.max_in_flight) if policy == "block" else
                   answer_freshest(request_iterator, answer, lambda r: r.stream_id, self._dropped, self.max_in_flight))
        async with aclosing(answers) as ordered:
            async for response in ordered:
                yield response

    def _dropped(self, request: pb.DetectRequest) -> pb.DetectResponse:
        """The answer of a frame replaced by a newer one of its stream (``drop_oldest``), counted."""
        pipeline = self.pipelines.get(request.model or self.default_model)
        if pipeline is not None:  # an unknown model's frame is answered (and counted) when it runs
            pipeline.metrics.dropped.inc()
        return pb.DetectResponse(stream_id=request.stream_id, sequence=request.sequence, status=pb.STATUS_DROPPED,
                                 reason="replaced by a newer frame of this stream")

    async def ListModels(self, request: pb.ListModelsRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self._info(p) for p in self.pipelines.values()])

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:  # noqa: N802
        try:
            return self._info(self._pipeline(request.name))
        except TrtserveError as exc:
            await context.abort(status_code(exc), str(exc))
            raise  # abort raises; this line only satisfies type checkers

    @staticmethod
    def _info(p: Pipeline) -> pb.ModelInfo:
        c, s, stats = p.detector.config, p.settings, p.batcher.stats
        return pb.ModelInfo(
            name=c.name, head=p.detector.head.type, classes=list(c.class_names), input_height=c.input.height_px,
            input_width=c.input.width_px, precisions=c.available_precisions(), serving_precision=p.detector.precision,
            backend=p.detector.backend.name, ready=True,
            batcher=pb.BatcherSettings(max_batch_size=s.max_batch_size, max_queue_delay_ms=s.max_queue_delay_ms,
                                       max_queue_size=s.max_queue_size,
                                       preferred_batch_sizes=list(s.preferred_batch_sizes), instances=s.instances),
            stats=pb.BatcherStats(batches=stats.batches, frames=stats.items, mean_batch_size=stats.mean_batch_size,
                                  engine_cpu_seconds=p.engine_cpu_s,
                                  queue_depth=p.batcher.queue_depth),
            drift=_drift(p))


def _drift(p: Pipeline) -> pb.DriftSummary | None:
    if p.drift is None:
        return None
    return pb.DriftSummary(**asdict(p.drift.summary()))  # the same fields
