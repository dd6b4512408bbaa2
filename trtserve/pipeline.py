"""Per-model serving pipeline: decode -> letterbox (worker pool) -> batcher -> backend + head (worker pool).

The event loop never decodes, resizes or runs the model: those run in a thread pool (OpenCV, NumPy
and ONNX Runtime release the GIL), so preprocessing of the next frames overlaps inference of the
current batch. Adapters (gRPC services, CLI, benchmark) call :meth:`Pipeline.detect`.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from trtserve.batcher import DynamicBatcher
from trtserve.detector import Detector, Frame
from trtserve.heads import Detections, Thresholds
from trtserve.vision.letterbox import Letterbox


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = 1


@dataclass(frozen=True)
class _Job:
    image: NDArray[np.uint8]
    geometry: Letterbox
    thresholds: Thresholds
    enqueued_s: float


@dataclass(frozen=True)
class _Done:
    detections: Detections
    dequeued_s: float
    inference_s: float


@dataclass(frozen=True)
class FrameOutcome:
    """One frame's answer and where its time went (seconds)."""

    detections: Detections
    frame_width_px: int
    frame_height_px: int
    queue_s: float
    inference_s: float
    total_s: float


class Pipeline:
    def __init__(self, detector: Detector, executor: Executor, batcher: BatcherConfig | None = None) -> None:
        cfg = batcher or BatcherConfig(max_batch_size=detector.config.max_batch_size)
        if cfg.max_batch_size > detector.config.max_batch_size:
            raise ValueError(f"batcher max_batch_size {cfg.max_batch_size} exceeds the model's max_batch_size "
                             f"{detector.config.max_batch_size}")
        self.detector = detector
        self.settings = cfg
        self._executor = executor
        self.batcher: DynamicBatcher[_Job, _Done] = DynamicBatcher(
            self._run_batch, cfg.max_batch_size, cfg.max_queue_delay_ms, cfg.max_queue_size,
            cfg.preferred_batch_sizes, cfg.instances)

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        await self.batcher.stop(drain, timeout_s)

    def _prepare(self, frame: Frame) -> tuple[NDArray[np.uint8], Letterbox]:
        return self.detector.letterbox(self.detector.prepare(frame))

    async def detect(self, frame: Frame, thresholds: Thresholds | None = None,
                     deadline_s: float | None = None) -> FrameOutcome:
        """Detect on one frame. Raises the frame's own error (InvalidFrameError, QueueFullError, ...)."""
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        image, geometry = await loop.run_in_executor(self._executor, self._prepare, frame)
        job = _Job(image, geometry, thresholds or self.detector.thresholds, time.monotonic())
        done = await self.batcher.submit(job, deadline_s)
        end = time.monotonic()
        return FrameOutcome(done.detections, geometry.original_width_px, geometry.original_height_px,
                            done.dequeued_s - job.enqueued_s, done.inference_s, end - t0)

    async def _run_batch(self, jobs: list[_Job]) -> list[_Done]:
        dequeued = time.monotonic()
        loop = asyncio.get_running_loop()

        def infer() -> list[Detections]:
            return self.detector.infer_letterboxed([j.image for j in jobs], [j.geometry for j in jobs],
                                                   [j.thresholds for j in jobs])

        detections = await loop.run_in_executor(self._executor, infer)
        inference_s = time.monotonic() - dequeued
        return [_Done(d, dequeued, inference_s) for d in detections]
