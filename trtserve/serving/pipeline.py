"""Per-model serving pipeline: admit -> decode + letterbox (decode pool) -> batcher -> backend + head (engine pool).

Admission comes first: at most ``max_queue_size`` frames of a model are in its pipeline at once (being decoded,
waiting in the batcher's queue, or in a running batch); a frame past that is refused at once with
RESOURCE_EXHAUSTED, before any byte of it is decoded. Decoding and letterboxing run on a thread pool shared by
the server's models; the engine runs on the pipeline's own threads (one per batcher instance), so inference never
waits behind the decode of a frame. OpenCV, NumPy and ONNX Runtime release the GIL, so decoding of the next frames
overlaps inference of the current batch. Adapters (gRPC services, CLI, benchmark) call :meth:`Pipeline.detect`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from trtserve.detector import BatchRun, Detector, Frame
from trtserve.errors import (
    ConfigError,
    DeadlineExceededError,
    ModelNotFoundError,
    NotServingError,
    QueueFullError,
    clip,
    code_name,
)
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

    def __init__(self, detector: Detector, decode_executor: Executor, batcher: BatcherConfig | None = None,
                 metrics: Metrics | None = None, drift: DriftMonitor | None = None) -> None:
        cfg = batcher or BatcherConfig(max_batch_size=detector.config.max_batch_size)
        if cfg.max_batch_size > detector.config.max_batch_size:
            raise ConfigError(f"batcher max_batch_size {cfg.max_batch_size} exceeds the model's max_batch_size "
                             f"{detector.config.max_batch_size}")
        self.detector = detector
        self.settings = cfg
        self._decode_executor = decode_executor
        # the engine's own threads: a batch never waits for a decode (shut down in stop)
        self._engine_executor = ThreadPoolExecutor(cfg.instances, thread_name_prefix=f"trtserve-{detector.config.name}")
        self.max_admitted = cfg.max_queue_size
        self.admitted = 0  # frames in this pipeline now: decoding, queued or in a batch
        self._decoding = 0
        self._accepting = False
        self.batcher: DynamicBatcher[_Job, _Done] = DynamicBatcher(
            self._run_batch, cfg.max_batch_size, cfg.max_queue_delay_ms, cfg.max_queue_size,
            cfg.preferred_batch_sizes, cfg.instances)
        self.metrics = ModelMetrics(metrics or Metrics(process=False), detector.config.name, detector.precision)
        self.metrics.track(lambda: self.batcher.queue_depth, lambda: self.batcher.in_flight, cfg.max_queue_size)
        self.drift = drift

    async def start(self) -> None:
        await self.batcher.start()
        self._accepting = True
        self.metrics.set_ready(True)

    async def stop(self, drain: bool = True, timeout_s: float = 30.0, mark_not_ready: bool = True) -> None:
        """Refuse new frames; with ``drain`` finish the admitted ones (decoding too) within ``timeout_s``.
        ``mark_not_ready=False``: leave ``trtserve_model_ready`` as it is (another version of the model, which
        shares the series, serves on)."""
        self._accepting = False
        if mark_not_ready:
            self.metrics.set_ready(False)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while drain and self._decoding and loop.time() < end:
            await asyncio.sleep(0.005)  # frames still decoding reach the batcher, which drains them below
        await self.batcher.stop(drain, max(0.0, end - loop.time()))
        if self.drift is not None:  # waits for a running shadow batch: off the event loop
            await asyncio.to_thread(self.drift.close)
        self._engine_executor.shutdown(wait=True)

    def _prepare(self, frame: Frame) -> tuple[NDArray[np.uint8], Letterbox, float]:
        t0 = time.perf_counter()
        image, geometry = self.detector.prepare_letterboxed(frame)
        return image, geometry, time.perf_counter() - t0

    async def detect(self, frame: Frame, thresholds: Thresholds | None = None,
                     deadline_s: float | None = None) -> FrameOutcome:
        """Detect on one frame. Raises the frame's own error (InvalidFrameError, QueueFullError, ...)."""
        t0 = time.monotonic()
        try:
            self._admit(deadline_s)
        except (QueueFullError, NotServingError, DeadlineExceededError) as exc:
            self.metrics.frame_error(code_name(exc))
            raise
        self.admitted += 1
        try:
            loop = asyncio.get_running_loop()
            self._decoding += 1
            try:
                image, geometry, prep_s = await loop.run_in_executor(self._decode_executor, self._prepare, frame)
            finally:
                self._decoding -= 1
            job = _Job(image, geometry, thresholds or self.detector.thresholds, time.monotonic(), prep_s)
            done = await self.batcher.submit(job, deadline_s)
        except BaseException as exc:  # counted with its code (CANCELLED when the caller went away), re-raised
            self.metrics.frame_error(code_name(exc))
            raise
        finally:
            self.admitted -= 1
        outcome = FrameOutcome(done.detections, geometry.original_width_px, geometry.original_height_px,
                               done.dequeued_s - job.enqueued_s, job.preprocess_s + done.preprocess_s,
                               done.inference_s, done.postprocess_s, time.monotonic() - t0)
        self.metrics.frame_ok(outcome.queue_s, outcome.preprocess_s, outcome.inference_s, outcome.postprocess_s,
                              outcome.total_s)
        return outcome

    def _admit(self, deadline_s: float | None) -> None:
        """Refuse a frame before any work is spent on it: the server is stopping, the pipeline is full, or the
        caller's deadline has already passed."""
        if not self._accepting:
            raise NotServingError(f"model {self.detector.config.name!r} is not accepting frames (starting or "
                                  "shutting down); retry on another replica")
        if self.admitted >= self.max_admitted:
            raise QueueFullError(f"model {self.detector.config.name!r} is full ({self.max_admitted} frames "
                                 "decoding, queued or in a batch: batcher.max_queue_size); retry later or add capacity")
        if deadline_s is not None and time.monotonic() >= deadline_s:
            raise DeadlineExceededError("the call's deadline passed before its frame could be decoded")

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

        run = await loop.run_in_executor(self._engine_executor, infer)
        self.metrics.batch_size.observe(len(jobs))
        return [_Done(d, dequeued, run.preprocess_s, run.inference_s, run.postprocess_s) for d in run.detections]


def find_pipeline(pipelines: Mapping[str, Pipeline], name: str) -> Pipeline:
    """The pipeline serving model ``name``; ModelNotFoundError (NOT_FOUND) naming the loaded ones."""
    if name not in pipelines:
        raise ModelNotFoundError(f"model {clip(name)} is not loaded; loaded: {sorted(pipelines)}")
    return pipelines[name]
