"""``trtserve.v1.DetectionService`` with model control: the detection RPCs of :mod:`detection_service`, plus
LoadModel / UnloadModel / ReloadModel (:mod:`trtserve.serving.model_control`) and PullCalibrationFrames (a
model's calibration reservoir, :mod:`trtserve.monitoring.reservoir`). ListModels and GetModel also say each
model's version and why its latest load failed."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import grpc

from trtserve.errors import TrtserveError
from trtserve.serving.detection_service import DetectionService
from trtserve.serving.model_control import LOADING, READY, UNAVAILABLE, UNLOADING, ModelControl, ModelStatus
from trtserve.serving.pipeline import Pipeline
from trtserve.serving.protocol import status_code
from trtserve.v1 import detection_pb2 as pb

PULL_MAX_BYTES = 64 * 1024 * 1024  # PNG bytes per PullCalibrationFrames call at most (the client calls again)
_STATES = {READY: pb.MODEL_STATE_READY, LOADING: pb.MODEL_STATE_LOADING, UNLOADING: pb.MODEL_STATE_UNLOADING,
           UNAVAILABLE: pb.MODEL_STATE_UNAVAILABLE}


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # dropped from the reservoir since the snapshot
        return None


class ControlledDetectionService(DetectionService):
    def __init__(self, pipelines: Mapping[str, Pipeline], default_model: str, max_in_flight_per_stream: int,
                 control: ModelControl) -> None:
        super().__init__(pipelines, default_model, max_in_flight_per_stream)
        self.control = control

    def _with_status(self, info: pb.ModelInfo) -> pb.ModelInfo:
        status = self.control.status(info.name)
        info.version, info.last_control_error = status.version, status.reason
        return info

    async def ListModels(self, request: pb.ListModelsRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self._with_status(self._info(p)) for p in self.pipelines.values()])

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:  # noqa: N802
        return self._with_status(await super().GetModel(request, context))

    async def _control(self, operation: Callable[[str], Awaitable[ModelStatus]], request: pb.ModelControlRequest,
                       context: grpc.aio.ServicerContext) -> pb.ModelControlResponse:
        try:
            self.control.check_rpc()
            status = await operation(request.name or self.default_model)
        except TrtserveError as exc:
            await context.abort(status_code(exc), str(exc))
            raise  # abort raises; this line only satisfies type checkers
        return pb.ModelControlResponse(name=status.name, version=status.version, state=_STATES[status.state],
                                       message=status.message)

    async def LoadModel(self, request: pb.ModelControlRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> pb.ModelControlResponse:
        return await self._control(self.control.load, request, context)

    async def UnloadModel(self, request: pb.ModelControlRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> pb.ModelControlResponse:
        return await self._control(self.control.unload, request, context)

    async def ReloadModel(self, request: pb.ModelControlRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> pb.ModelControlResponse:
        return await self._control(self.control.reload, request, context)

    async def PullCalibrationFrames(self, request: pb.PullCalibrationFramesRequest,  # noqa: N802
                                    context: grpc.aio.ServicerContext
                                    ) -> AsyncIterator[pb.PullCalibrationFramesResponse]:
        """Frames with ``after_id < id <= up_to_id`` (0: the newest now), in id order, within the call's bounds."""
        try:
            reservoir = self.control.reservoir(request.model or self.default_model)
        except TrtserveError as exc:
            await context.abort(status_code(exc), str(exc))
            raise
        last = request.up_to_id or reservoir.last_id
        todo = [f for f in reservoir.snapshot() if request.after_id < f.id <= last]
        max_frames = request.max_frames or len(todo)
        max_bytes = min(request.max_bytes or PULL_MAX_BYTES, PULL_MAX_BYTES)
        sent = sent_bytes = 0
        for i, frame in enumerate(todo):
            if sent >= max_frames or (sent and sent_bytes + frame.size_bytes > max_bytes):
                return
            data = await asyncio.to_thread(_read, frame.path)
            if data is None:
                continue
            sent, sent_bytes = sent + 1, sent_bytes + len(data)
            yield pb.PullCalibrationFramesResponse(
                frame=pb.CalibrationFrame(id=frame.id, agreement=frame.agreement, png=data,
                                          sha256=hashlib.sha256(data).hexdigest()),
                snapshot_last_id=last, remaining=len(todo) - i - 1, reservoir_id=reservoir.instance_id)
