"""Per-model serving pipeline: admit -> decode + letterbox (decode pool) -> batcher -> backend + head (engine pool).

Admission comes first: at most ``max_queue_size`` frames of a model are in its pipeline at once (being decoded,
waiting in the batcher's queue, or in a running batch); a frame past that is refused at once with
RESOURCE_EXHAUSTED, before any byte of it is decoded. Decoding and letterboxing run on a thread pool shared by
the server's models; the engine runs on the pipeline's own threads (one per batcher instance), so inference never
waits behind the decode of a frame. OpenCV, NumPy and ONNX Runtime release the GIL, so decoding of the next frames
overlaps inference of the current batch. Adapters (gRPC services, CLI, benchmark) call :meth:`Pipeline.detect`.

The model's raw tensor interface (KServe's ``<name>.raw``: the client preprocesses itself, as DeepStream's
nvinferserver does) is :meth:`Pipeline.infer_tensor`: one frame of the model's own input tensor in, its slice of
every output tensor back. Such a frame goes through the same admission and the same batcher as the detector's frames,
so frames of both interfaces share batches and the engine (a batch holding both stacks the letterboxed frames,
normalized, with the tensors as they came). It is counted under the model name ``<name>.raw`` in the frame and stage
metrics; the batch sizes (``trtserve_batch_size``) stay the engine's, under ``<name>``. A model that normalizes
inside (``normalize_in_model``) takes letterboxed uint8 frames, not its own input tensor: it has no raw interface
(:attr:`Pipeline.raw_input` is None, :attr:`Pipeline.raw_unavailable` says why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from trtserve.backends.input_prefix import FoldsInput
from trtserve.detector import BatchRun, Detector, Frame
from trtserve.errors import (
    ConfigError,
    DeadlineExceededError,
    InvalidFrameError,
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
from trtserve.serving.coalesced_executor import CoalescedExecutor
from trtserve.serving.settings import BatcherConfig
from trtserve.threads import ENGINE, role_pool
from trtserve.vision.detections import Detections
from trtserve.vision.letterbox import Letterbox

RAW_SUFFIX = ".raw"  # the raw tensor interface of model ``m`` is served as model ``m.raw``


@dataclass(frozen=True)
class RawInput:
    """The model's own input tensor, as a client of the raw interface sends it: one frame of it (no batch dim)."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]


@dataclass(frozen=True)
class _Job:
    image: NDArray[np.uint8] | None  # the letterboxed frame; None for a raw tensor frame
    geometry: Letterbox | None
    thresholds: Thresholds
    enqueued_s: float
    preprocess_s: float  # decode, check and letterbox of this frame
    tensor: NDArray[np.generic] | None = None  # a raw tensor frame: the model's input for this frame, as sent


@dataclass(frozen=True)
class _Done:
    detections: Detections | None  # None for a raw tensor frame
    dequeued_s: float
    preprocess_s: float  # the batch's normalize
    inference_s: float
    postprocess_s: float
    outputs: dict[str, NDArray[np.generic]] | None = None  # a raw tensor frame: its slice of every output


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


@dataclass(frozen=True)
class TensorOutcome:
    """One raw tensor frame's answer: its slice of every output tensor (batch dim removed), and its times (s)."""

    outputs: dict[str, NDArray[np.generic]]
    queue_s: float
    preprocess_s: float  # assembling its batch (the detector frames' normalize, when it shares one with them)
    inference_s: float
    total_s: float


def raw_input_of(detector: Detector) -> tuple[RawInput | None, str]:
    """The model's raw tensor interface, or None and why it has none."""
    backend = detector.backend
    if isinstance(backend, FoldsInput) and backend.input_folded:
        return None, (f"model {detector.config.name!r} normalizes inside the model (normalize_in_model: true), so "
                      "its engine takes letterboxed uint8 frames, not its own input tensor; serve it with "
                      "normalize_in_model off to send preprocessed tensors")
    info = next(t for t in backend.inputs if t.name == detector.input_name)
    spec = detector.config.input
    known = (3, spec.height_px, spec.width_px) if spec.layout == "nchw" else (spec.height_px, spec.width_px, 3)
    dims = tuple(int(d) if d is not None else k for d, k in zip(info.shape[1:], known))
    return RawInput(info.name, np.dtype(info.dtype), dims), ""


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
        self._decoder = CoalescedExecutor(decode_executor)  # frames decoded together share pool jobs and loop hops
        # the engine's own threads: a batch never waits for a decode (shut down in stop)
        self._engine_executor = role_pool(cfg.instances, ENGINE, detector.config.name)
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
        self.raw_input, self.raw_unavailable = raw_input_of(detector)
        self._raw_metrics: ModelMetrics | None = None
        self.engine_cpu_s = 0.0  # CPU time of this pipeline's engine calls (BatchRun.inference_cpu_s), summed

    @property
    def raw_metrics(self) -> ModelMetrics:
        """The series of the raw interface (model ``<name>.raw``), made on first use: none exist before."""
        if self._raw_metrics is None:
            self._raw_metrics = ModelMetrics(self.metrics.metrics, self.detector.config.name + RAW_SUFFIX,
                                             self.detector.precision)
        return self._raw_metrics

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
            self._decoding += 1
            try:
                image, geometry, prep_s = await self._decoder.run(self._prepare, frame)
            finally:
                self._decoding -= 1
            job = _Job(image, geometry, thresholds or self.detector.thresholds, time.monotonic(), prep_s)
            done = await self.batcher.submit(job, deadline_s)
        except BaseException as exc:  # counted with its code (CANCELLED when the caller went away), re-raised
            self.metrics.frame_error(code_name(exc))
            raise
        finally:
            self.admitted -= 1
        assert done.detections is not None  # a letterboxed frame's answer
        outcome = FrameOutcome(done.detections, geometry.original_width_px, geometry.original_height_px,
                               done.dequeued_s - job.enqueued_s, job.preprocess_s + done.preprocess_s,
                               done.inference_s, done.postprocess_s, time.monotonic() - t0)
        self.metrics.frame_ok(outcome.queue_s, outcome.preprocess_s, outcome.inference_s, outcome.postprocess_s,
                              outcome.total_s)
        return outcome

    def check_tensor(self, tensor: NDArray[np.generic]) -> None:
        """InvalidFrameError unless ``tensor`` is one frame of the model's input (dtype and dims exactly)."""
        raw = self.raw_input
        if raw is None:
            raise InvalidFrameError(self.raw_unavailable)
        if tensor.dtype != raw.dtype or tuple(tensor.shape) != raw.dims:
            raise InvalidFrameError(f"a frame of input {raw.name!r} is {tensor.dtype} {list(tensor.shape)}; the model "
                                    f"takes {raw.dtype} {list(raw.dims)} per frame")

    async def infer_tensor(self, tensor: NDArray[np.generic], deadline_s: float | None = None) -> TensorOutcome:
        """Run one frame of the model's own input tensor (:attr:`raw_input`) through the batcher, beside the
        detector's frames; returns its slice of every output. Raises InvalidFrameError for a tensor of the wrong
        dtype or dims, and the pipeline's errors (QueueFullError, ...) as :meth:`detect` does."""
        metrics = self.raw_metrics
        t0 = time.monotonic()
        try:
            self.check_tensor(tensor)
            self._admit(deadline_s)
        except (InvalidFrameError, QueueFullError, NotServingError, DeadlineExceededError) as exc:
            metrics.frame_error(code_name(exc))
            raise
        self.admitted += 1
        try:
            job = _Job(None, None, self.detector.thresholds, time.monotonic(), 0.0, tensor)
            done = await self.batcher.submit(job, deadline_s)
        except BaseException as exc:
            metrics.frame_error(code_name(exc))
            raise
        finally:
            self.admitted -= 1
        assert done.outputs is not None
        outcome = TensorOutcome(done.outputs, done.dequeued_s - job.enqueued_s, done.preprocess_s, done.inference_s,
                                time.monotonic() - t0)
        metrics.frame_ok(outcome.queue_s, outcome.preprocess_s, outcome.inference_s, 0.0, outcome.total_s)
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

    def _count_batch(self, run: BatchRun, frames: int) -> None:
        self.metrics.batch_size.observe(frames)
        self.metrics.engine_cpu.inc(run.inference_cpu_s)
        self.engine_cpu_s += run.inference_cpu_s

    async def _run_batch(self, jobs: list[_Job]) -> list[_Done]:
        if any(j.tensor is not None for j in jobs):
            return await self._run_mixed_batch(jobs)
        dequeued = time.monotonic()
        loop = asyncio.get_running_loop()
        geometries = [j.geometry for j in jobs if j.geometry is not None]  # all of them: letterboxed frames only
        thresholds = [j.thresholds for j in jobs]

        def infer() -> BatchRun:
            # the input is assembled in this engine thread's own array: the batch is done with it when infer returns
            run = self.detector.run_batch([j.image for j in jobs if j.image is not None], geometries, thresholds,
                                          reuse_input=True)
            if self.drift is not None:
                self.drift.offer(run, geometries, thresholds)  # returns at once; the shadow runs elsewhere
            return run

        run = await loop.run_in_executor(self._engine_executor, infer)
        self._count_batch(run, len(jobs))
        return [_Done(d, dequeued, run.preprocess_s, run.inference_s, run.postprocess_s) for d in run.detections]

    async def _run_mixed_batch(self, jobs: list[_Job]) -> list[_Done]:
        """A batch holding raw tensor frames (maybe beside letterboxed ones): one engine run for all of them."""
        dequeued = time.monotonic()
        loop = asyncio.get_running_loop()
        raw = self.raw_input
        assert raw is not None
        framed = [i for i, j in enumerate(jobs) if j.tensor is None]
        geometries = [j.geometry for j in jobs]
        thresholds = [j.thresholds for j in jobs]
        detector = self.detector

        def infer() -> tuple[BatchRun, dict[str, NDArray[np.generic]]]:
            t0 = time.perf_counter()
            tensor = np.empty((len(jobs), *raw.dims), raw.dtype)
            if framed:
                images = [jobs[i].image for i in framed]
                tensor[framed] = detector.preprocessor.to_input(images)  # type: ignore[arg-type]
            for i, job in enumerate(jobs):
                if job.tensor is not None:
                    tensor[i] = job.tensor
            t1, cpu1 = time.perf_counter(), time.thread_time()
            outputs = detector.infer_tensor(tensor)
            t2, cpu2 = time.perf_counter(), time.thread_time()
            detections: list[Detections] = []
            if framed:
                detections = detector.decode({k: v[framed] for k, v in outputs.items()},
                                             [geometries[i] for i in framed],  # type: ignore[misc]
                                             [thresholds[i] for i in framed])
            t3 = time.perf_counter()
            run = BatchRun(tensor, outputs, detections, t1 - t0, t2 - t1, t3 - t2, cpu2 - cpu1)
            if self.drift is not None:
                self.drift.offer(run, geometries, thresholds, [j.tensor is not None for j in jobs])
            return run, outputs

        run, outputs = await loop.run_in_executor(self._engine_executor, infer)
        self._count_batch(run, len(jobs))  # the engine's batch, whatever its frames' interface
        raw_frames = len(jobs) - len(framed)
        executions = self.raw_metrics.totals.executions  # the raw interface's ModelStatistics: its frames per batch
        executions[raw_frames] = executions.get(raw_frames, 0) + 1
        found = iter(run.detections)
        return [_Done(next(found), dequeued, run.preprocess_s, run.inference_s, run.postprocess_s)
                if job.tensor is None else
                _Done(None, dequeued, run.preprocess_s, run.inference_s, 0.0, {k: v[i] for k, v in outputs.items()})
                for i, job in enumerate(jobs)]


def find_pipeline(pipelines: Mapping[str, Pipeline], name: str) -> Pipeline:
    """The pipeline serving model ``name``; ModelNotFoundError (NOT_FOUND) naming the loaded ones."""
    if name not in pipelines:
        raise ModelNotFoundError(f"model {clip(name)} is not loaded; loaded: {sorted(pipelines)}")
    return pipelines[name]
