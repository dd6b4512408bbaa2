"""The ``trtserve.v1.DetectionService`` gRPC servicer (asyncio), a thin adapter over :class:`Pipeline`.

Errors map to gRPC status codes in exactly one place, :func:`status_code`. In ``StreamDetect`` a
failing frame does not end the stream: it is answered with ``STATUS_ERROR`` and its code and reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping

import grpc
import numpy as np

from trtserve.errors import InvalidFrameError, ModelNotFoundError, TrtserveError
from trtserve.heads import Thresholds
from trtserve.pipeline import FrameOutcome, Pipeline
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for an exception: its ``grpc_code`` for trtserve errors, INTERNAL for bugs."""
    if isinstance(error, TrtserveError):
        return getattr(grpc.StatusCode, error.grpc_code, grpc.StatusCode.INTERNAL)
    return grpc.StatusCode.INTERNAL


def _frame(request: pb.DetectRequest) -> bytes | np.ndarray:
    kind = request.image.WhichOneof("data")
    if kind == "encoded":
        return request.image.encoded
    if kind == "raw":
        raw = request.image.raw
        expected = raw.height * raw.width * 3
        if raw.format not in (pb.PIXEL_FORMAT_BGR8, pb.PIXEL_FORMAT_RGB8):
            raise InvalidFrameError("raw image has no pixel format; set PIXEL_FORMAT_BGR8 or PIXEL_FORMAT_RGB8")
        if len(raw.pixels) != expected:
            raise InvalidFrameError(f"raw image of {raw.width}x{raw.height}x3 needs {expected} bytes, "
                                    f"got {len(raw.pixels)}")
        array = np.frombuffer(raw.pixels, np.uint8).reshape(raw.height, raw.width, 3)
        return np.ascontiguousarray(array[..., ::-1]) if raw.format == pb.PIXEL_FORMAT_RGB8 else array
    raise InvalidFrameError("request has no image; set image.encoded or image.raw")


class DetectionService(pb_grpc.DetectionServiceServicer):
    def __init__(self, pipelines: Mapping[str, Pipeline], default_model: str, max_in_flight_per_stream: int = 16
                 ) -> None:
        self.pipelines = pipelines
        self.default_model = default_model
        self.max_in_flight = max_in_flight_per_stream

    def _pipeline(self, name: str) -> Pipeline:
        key = name or self.default_model
        if key not in self.pipelines:
            raise ModelNotFoundError(f"model {key!r} is not loaded; loaded: {sorted(self.pipelines)}")
        return self.pipelines[key]

    def _thresholds(self, pipeline: Pipeline, request: pb.DetectRequest) -> Thresholds | None:
        t = request.thresholds
        if not (t.HasField("score") or t.HasField("iou") or t.HasField("max_detections")):
            return None
        for name in ("score", "iou"):
            if t.HasField(name) and not 0.0 <= getattr(t, name) <= 1.0:
                raise InvalidFrameError(f"thresholds.{name} is {getattr(t, name)}; expected 0..1")
        return pipeline.detector.with_thresholds(
            t.score if t.HasField("score") else None, t.iou if t.HasField("iou") else None,
            t.max_detections if t.HasField("max_detections") and t.max_detections > 0 else None)

    async def _answer(self, request: pb.DetectRequest, deadline_s: float | None) -> pb.DetectResponse:
        """Run one frame; never raises for a frame's own failure (it becomes STATUS_ERROR)."""
        response = pb.DetectResponse(stream_id=request.stream_id, sequence=request.sequence)
        try:
            pipeline = self._pipeline(request.model)
            outcome = await pipeline.detect(_frame(request), self._thresholds(pipeline, request), deadline_s)
        except TrtserveError as exc:
            response.status = pb.STATUS_ERROR
            response.error_code = status_code(exc).name
            response.reason = str(exc)
            return response
        self._fill(response, pipeline, outcome)
        return response

    @staticmethod
    def _fill(response: pb.DetectResponse, pipeline: Pipeline, outcome: FrameOutcome) -> None:
        names = pipeline.detector.config.class_names
        det = outcome.detections
        response.status = pb.STATUS_OK
        response.model = pipeline.detector.config.name
        response.precision = pipeline.detector.precision
        response.frame_width, response.frame_height = outcome.frame_width_px, outcome.frame_height_px
        response.timing.queue_seconds = outcome.queue_s
        response.timing.inference_seconds = outcome.inference_s
        response.timing.total_seconds = outcome.total_s
        for box, score, cls in zip(det.boxes_xyxy.tolist(), det.scores.tolist(), det.class_ids.tolist()):
            response.detections.add(box=pb.Box(x_min=box[0], y_min=box[1], x_max=box[2], y_max=box[3]),
                                    score=score, class_id=cls, label=names[cls] if cls < len(names) else str(cls))

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:  # noqa: N802
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining  # the batcher's clock
        response = await self._answer(request, deadline)
        if response.status == pb.STATUS_ERROR:
            await context.abort(getattr(grpc.StatusCode, response.error_code), response.reason)
        return response

    async def StreamDetect(self, request_iterator: AsyncIterator[pb.DetectRequest],  # noqa: N802
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DetectResponse]:
        # Answers leave in arrival order (so in order per stream); at most max_in_flight frames are in
        # the pipeline per call: past that, reading waits (flow control back to the client).
        pending: deque[asyncio.Task[pb.DetectResponse]] = deque()
        try:
            async for request in request_iterator:
                pending.append(asyncio.create_task(self._answer(request, None)))
                while pending and (pending[0].done() or len(pending) >= self.max_in_flight):
                    yield await pending.popleft()
            while pending:
                yield await pending.popleft()
        finally:
            for task in pending:  # the client went away: its queued frames are abandoned
                task.cancel()

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
                                  queue_depth=p.batcher.queue_depth))
