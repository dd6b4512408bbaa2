"""Per-model serving pipeline: decode -> letterbox (worker pool) -> batcher -> backend + head (worker pool).

The event loop never decodes, resizes or runs the model: those run in a thread pool (OpenCV, NumPy
and ONNX Runtime release the GIL), so preprocessing of the next frames overlaps inference of the
current batch. Adapters (gRPC services, CLI, benchmark) call :meth:`Pipeline.detect`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from trtserve.detector import BatchRun, Detector, Frame
from trtserve.errors import ConfigError, ModelNotFoundError, code_name
from trtserve.heads.base import Thresholds
from trtserve.monitoring.drift import DriftMonitor
from trtserve.monitoring.metrics import Metrics, ModelMetrics
from trtserve.serving.batcher import DynamicBatcher
from trtserve.serving.settings import BatcherConfig
from trtserve.vision.detections import Detections
from trtserve.vision.letterbox import Letterbox


@dataclass(frozen=True)
class _Job:
    image: NDArray[np.uint8]
    geometry: Letterbox
    thresholds: Thresholds
    enqueued_s: float
    preprocess_s: float  # decode, check and letterbox of this frame


@dataclass(frozen=True)
class _Done:
    detections: Detections
    dequeued_s: float
    preprocess_s: float  # the batch's normalize
    inference_s: float
    postprocess_s: float


@dataclass(frozen=True)
class FrameOutcome:
    """One frame's answer and where its time went (seconds; inference and postprocess are its batch's)."""

    detections: Detections
    frame_width_px: int
    frame_height_px: int
    queue_s: float
    preprocess_s: float
    inference_s: float
    postprocess_s: float
    total_s: float


class Pipeline:
    """Decode, batch, infer and decode detections for one model; metrics and drift sampling hooked in."""

    def __init__(self, detector: Detector, executor: Executor, batcher: BatcherConfig | None = None,
                 metrics: Metrics | None = None, drift: DriftMonitor | None = None) -> None:
        cfg = batcher or BatcherConfig(max_batch_size=detector.config.max_batch_size)
        if cfg.max_batch_size > detector.config.max_batch_size:
            raise ConfigError(f"batcher max_batch_size {cfg.max_batch_size} exceeds the model's max_batch_size "
                             f"{detector.config.max_batch_size}")
        self.detector = detector
        self.settings = cfg
        self._executor = executor
        self.batcher: DynamicBatcher[_Job, _Done] = DynamicBatcher(
            self._run_batch, cfg.max_batch_size, cfg.max_queue_delay_ms, cfg.max_queue_size,
            cfg.preferred_batch_sizes, cfg.instances)
        self.metrics = ModelMetrics(metrics or Metrics(process=False), detector.config.name, detector.precision)
        self.metrics.track(lambda: self.batcher.queue_depth, lambda: self.batcher.in_flight, cfg.max_queue_size)
        self.drift = drift

    async def start(self) -> None:
        await self.batcher.start()
        self.metrics.set_ready(True)

    async def stop(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        self.metrics.set_ready(False)
        await self.batcher.stop(drain, timeout_s)
        if self.drift is not None:  # waits for a running shadow batch: off the event loop
            await asyncio.to_thread(self.drift.close)

    def _prepare(self, frame: Frame) -> tuple[NDArray[np.uint8], Letterbox, float]:
        t0 = time.perf_counter()
        image, geometry = self.detector.prepare_letterboxed(frame)
        return image, geometry, time.perf_counter() - t0

    async def detect(self, frame: Frame, thresholds: Thresholds | None = None,
                     deadline_s: float | None = None) -> FrameOutcome:
        """Detect on one frame. Raises the frame's own error (InvalidFrameError, QueueFullError, ...)."""
        t0 = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
            image, geometry, prep_s = await loop.run_in_executor(self._executor, self._prepare, frame)
            job = _Job(image, geometry, thresholds or self.detector.thresholds, time.monotonic(), prep_s)
            done = await self.batcher.submit(job, deadline_s)
        except BaseException as exc:  # counted with its code (CANCELLED when the caller went away), re-raised
            self.metrics.frame_error(code_name(exc))
            raise
        outcome = FrameOutcome(done.detections, geometry.original_width_px, geometry.original_height_px,
                               done.dequeued_s - job.enqueued_s, job.preprocess_s + done.preprocess_s,
                               done.inference_s, done.postprocess_s, time.monotonic() - t0)
        self.metrics.frame_ok(outcome.queue_s, outcome.preprocess_s, outcome.inference_s, outcome.postprocess_s,
                              outcome.total_s)
        return outcome

    async def _run_batch(self, jobs: list[_Job]) -> list[_Done]:
        dequeued = time.monotonic()
        loop = asyncio.get_running_loop()
        geometries = [j.geometry for j in jobs]
        thresholds = [j.thresholds for j in jobs]

        def infer() -> BatchRun:
            run = self.detector.run_batch([j.image for j in jobs], geometries, thresholds)
            if self.drift is not None:
                self.drift.offer(run, geometries, thresholds)  # returns at once; the shadow runs elsewhere
            return run

        run = await loop.run_in_executor(self._executor, infer)
        self.metrics.batch_size.observe(len(jobs))
        return [_Done(d, dequeued, run.preprocess_s, run.inference_s, run.postprocess_s) for d in run.detections]


def find_pipeline(pipelines: Mapping[str, Pipeline], name: str) -> Pipeline:
    """The pipeline serving model ``name``; ModelNotFoundError (NOT_FOUND) naming the loaded ones."""
    if name not in pipelines:
        raise ModelNotFoundError(f"model {name!r} is not loaded; loaded: {sorted(pipelines)}")
    return pipelines[name]
