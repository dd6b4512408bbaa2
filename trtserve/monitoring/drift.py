"""FP32 shadow drift monitoring on live traffic.

A sample of the served batches (``sample_rate``, a fraction of batches, spread evenly) is copied to a
shadow: the same network at FP32 (ONNX Runtime on the CPU by default). The shadow runs in a process
of its own at the lowest CPU priority (SCHED_IDLE on Linux), behind a bounded hand-off
(``max_pending``): when it is busy a sample is skipped and counted — the serving path never waits for
it, never shares its GIL, and survives its crash (counted as errors). For every sampled frame the
served detections are compared with the shadow's:

* agreement F1 at IoU ``iou_threshold`` (same class), mean IoU of the matched boxes, mean absolute
  score difference, detections only in the shadow (missed) and only in the served model (extra);
* for models without a detector head: cosine similarity and relative L2 of the raw outputs;
* calibration coverage: the fraction of values outside the calibrated INT8 range, in the input and
  in every calibrated activation (read off the shadow as extra outputs) — the early warning that the
  scene has moved away from the calibration set.

Results go to Prometheus and to a rolling window (``window_frames``) whose pooled agreement F1 is
compared with ``agreement_threshold``: crossing it logs a warning (and, if configured, flips the
model's health to NOT_SERVING until it recovers).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from trtserve.backends.base import BackendOptions, TensorInfo
from trtserve.backends.registry import backend_class
from trtserve.config import DriftSpec
from trtserve.detector import BatchRun, Detector
from trtserve.errors import ModelLoadError
from trtserve.heads.base import Thresholds
from trtserve.monitoring.metrics import Metrics
from trtserve.monitoring.ranges import calibrated_ranges
from trtserve.monitoring.shadow import FrameDrift, ShadowInfo, ShadowSetup, shadow_close, shadow_compare, shadow_open
from trtserve.vision.letterbox import Letterbox
from trtserve.vision.matching import MatchCounts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftSummary:
    """The rolling window, as :meth:`DriftMonitor.summary` and GetModel report it (the proto's fields)."""

    sample_rate: float
    shadow_precision: str
    samples: int  # frames compared since start
    skipped: int  # sampled batches skipped because the shadow was busy
    errors: int
    window_frames: int
    agreement_f1: float
    mean_iou: float
    mean_score_abs_diff: float
    missed: int
    extra: int
    out_of_range_ratio: float  # pooled over every calibrated activation, window mean
    below_threshold: bool
    ranges_source: str


class DriftMonitor:
    """Compares one served model with its shadow on sampled batches. Create with :meth:`open`."""

    def __init__(self, served: Detector, shadow: ShadowInfo, spec: DriftSpec, metrics: Metrics,
                 ranges_source: str, executor: ProcessPoolExecutor,
                 on_verdict: Callable[[bool], None] | None = None) -> None:
        self.served = served
        self.spec = spec
        self.ranges_source = ranges_source
        self._executor = executor
        self._on_verdict = on_verdict
        self._lock = threading.Condition()
        self._pending = 0
        self._credit = 0.0
        self._window: deque[FrameDrift] = deque(maxlen=spec.window_frames)
        self._below = False
        self.samples = self.skipped = self.errors = 0
        model, precision = served.config.name, served.precision
        m = metrics
        self._m_f1, self._m_iou = m.drift_f1.labels(model, precision), m.drift_iou.labels(model, precision)
        self._m_score = m.drift_score.labels(model, precision)
        self._m_missed, self._m_extra = m.drift_missed.labels(model, precision), m.drift_extra.labels(model, precision)
        self._m_cos, self._m_l2 = m.drift_cosine.labels(model, precision), m.drift_rel_l2.labels(model, precision)
        self._m_samples = m.drift_samples.labels(model, precision)
        self._m_skipped = m.drift_skipped.labels(model, precision)
        self._m_errors = m.drift_errors.labels(model, precision)
        self._m_window = m.drift_window_f1.labels(model, precision)
        self._m_coverage = {label: m.coverage.labels(model, precision, label) for label in shadow.coverage_labels}

    @classmethod
    def open(cls, served: Detector, spec: DriftSpec, metrics: Metrics,
             on_verdict: Callable[[bool], None] | None = None) -> DriftMonitor:
        """Start the shadow process, load the shadow there and check it matches the served model."""
        import multiprocessing

        config = served.config
        ranges, source = calibrated_ranges(served)
        unknown = [t for t in spec.coverage_tensors if t not in ranges]
        if unknown:
            raise ModelLoadError(f"{config.source_file}: drift.coverage_tensors {unknown} are not calibrated tensors "
                                 f"of {served.backend.model_path.name} (some that are: {sorted(ranges)[:8]})")
        if not ranges:
            logger.info("model %s: calibration coverage off: %s", config.name, source)
        setup = ShadowSetup(config, backend_class(spec.shadow_backend), spec.shadow_precision,
                            BackendOptions(intra_op_threads=spec.shadow_threads, providers=spec.shadow_providers),
                            served.input_name, served.head, tuple(t.name for t in served.backend.outputs), ranges,
                            spec.coverage_tensors, spec.iou_threshold)
        # spawn, not fork: the server has gRPC and ONNX Runtime threads that a fork would copy half-way
        executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            shadow = executor.submit(shadow_open, setup).result()
            if shadow.unreadable:
                logger.warning("model %s: %d calibrated tensors are not in the shadow %s (e.g. %s); coverage leaves "
                               "them out", config.name, len(shadow.unreadable), shadow.model_path.name,
                               shadow.unreadable[:3])
            _check_same_network(served, shadow)
        except BaseException:
            executor.shutdown(wait=True, cancel_futures=True)
            raise
        logger.info("model %s: %s drift monitor against a %s shadow (%s, own process), sample rate %.3f, "
                    "ranges from %s", config.name, served.precision, spec.shadow_precision, spec.shadow_backend,
                    spec.sample_rate, source or "nowhere")
        return cls(served, shadow, spec, metrics, source, executor, on_verdict)

    # --- the serving side: never blocks -----------------------------------------------------------------

    def offer(self, run: BatchRun, geometries: Sequence[Letterbox], thresholds: Sequence[Thresholds]) -> bool:
        """Maybe sample this batch; returns at once. True when it went to the shadow."""
        with self._lock:
            self._credit += self.spec.sample_rate
            if self._credit < 1.0:
                return False
            self._credit -= 1.0
            if self._pending >= self.spec.max_pending:
                self.skipped += 1
                self._m_skipped.inc()
                return False
            self._pending += 1
        served = run.outputs if self.served.head.type == "raw" else run.detections
        try:
            future = self._executor.submit(shadow_compare, run.tensor, served, list(geometries), list(thresholds))
        except RuntimeError as exc:  # the pool is broken (the shadow process died) or shut down
            self._failed(exc)
            return False
        future.add_done_callback(self._finished)
        return True

    def _finished(self, future: Future[list[FrameDrift]]) -> None:
        if future.cancelled():  # closing: the sample was never run
            self._done()
            return
        exc = future.exception()
        if exc is not None:
            self._failed(exc)
            return
        try:
            self._record(future.result())
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
            self._lock.notify_all()

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            errors = self.errors
        self._m_errors.inc()
        if errors <= 3 or errors % 100 == 0:
            logger.warning("model %s: shadow run %d failed (serving is unaffected): %s: %s",
                           self.served.config.name, errors, type(exc).__name__, exc)
        self._done()

    def _record(self, frames: list[FrameDrift]) -> None:
        for f in frames:
            self._m_samples.inc()
            if f.cosine is not None:
                self._m_cos.observe(f.cosine)
                self._m_l2.observe(f.relative_l2 or 0.0)
            else:
                self._m_f1.observe(f.counts.f1)
                if f.counts.true_positives:
                    self._m_iou.observe(f.counts.mean_iou)
                    self._m_score.observe(f.mean_score_abs_diff)
                self._m_missed.inc(f.counts.false_negatives)
                self._m_extra.inc(f.counts.false_positives)
            for label, ratio in (f.out_of_range or {}).items():
                self._m_coverage[label].observe(ratio)
        with self._lock:
            self.samples += len(frames)
            self._window.extend(frames)
        summary = self.summary()
        self._m_window.set(summary.agreement_f1)
        self._judge(summary)

    def _judge(self, summary: DriftSummary) -> None:
        below = summary.below_threshold  # never true on fewer than min_window_frames
        if below == self._below:
            return
        self._below = below
        name = self.served.config.name
        if below:
            logger.warning("model %s (%s): agreement with the %s shadow fell to %.3f over the last %d sampled frames "
                           "(threshold %.3f); calibration coverage: %.4f of activations out of range — the scene "
                           "may have moved away from the calibration set: recalibrate with recent frames",
                           name, self.served.precision, self.spec.shadow_precision, summary.agreement_f1,
                           summary.window_frames, self.spec.agreement_threshold, summary.out_of_range_ratio)
        else:
            logger.info("model %s: agreement with the shadow recovered to %.3f", name, summary.agreement_f1)
        if self._on_verdict is not None and self.spec.unhealthy_below_threshold:
            self._on_verdict(not below)

    def summary(self) -> DriftSummary:
        with self._lock:
            window = list(self._window)
            samples, skipped, errors = self.samples, self.skipped, self.errors
        detections = [f for f in window if f.cosine is None]
        counts = sum((f.counts for f in detections), MatchCounts())
        if detections:
            agreement = counts.f1
        else:  # raw outputs: agreement is the mean cosine similarity
            agreement = float(np.mean([f.cosine for f in window])) if window else 1.0
        scored = sum(f.counts.true_positives for f in detections)
        coverage = [f.out_of_range["all"] for f in window if f.out_of_range and "all" in f.out_of_range]
        return DriftSummary(
            sample_rate=self.spec.sample_rate, shadow_precision=self.spec.shadow_precision,
            samples=samples, skipped=skipped, errors=errors, window_frames=len(window), agreement_f1=agreement,
            mean_iou=counts.mean_iou, mean_score_abs_diff=sum(f.score_abs_diff_sum for f in detections) / scored
            if scored else 0.0, missed=counts.false_negatives, extra=counts.false_positives,
            out_of_range_ratio=float(np.mean(coverage)) if coverage else 0.0,
            below_threshold=len(window) >= self.spec.min_window_frames and agreement < self.spec.agreement_threshold,
            ranges_source=self.ranges_source)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Wait until every sample offered so far is compared and recorded; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self) -> None:
        """Stop the shadow process (after the comparison it is running, if any)."""
        try:
            self._executor.submit(shadow_close).result(timeout=30)
        except Exception as exc:  # a dead shadow process has nothing left to close
            logger.info("model %s: shadow close: %s", self.served.config.name, exc)
        self._executor.shutdown(wait=True, cancel_futures=True)


def _check_same_network(served: Detector, shadow: ShadowInfo) -> None:
    """Refuse a shadow whose outputs (names and known dims) or input name differ from the served model's."""

    def describe(outputs: Sequence[TensorInfo]) -> list[str]:
        return [f"{t.name}{list(t.shape)}" for t in outputs]

    served_out = served.backend.outputs
    shadow_out = {t.name: t for t in shadow.outputs}
    mismatch = any(t.name not in shadow_out or len(t.shape) != len(shadow_out[t.name].shape) or any(
        a is not None and b is not None and a != b for a, b in zip(t.shape, shadow_out[t.name].shape))
        for t in served_out)
    if mismatch or served.input_name not in [t.name for t in shadow.inputs]:
        raise ModelLoadError(
            f"the drift shadow {shadow.model_path.name} does not match the served model "
            f"{served.backend.model_path.name}: outputs {describe(shadow.outputs)} vs {describe(served_out)}, inputs "
            f"{[t.name for t in shadow.inputs]} vs {[served.input_name]}; the shadow must be the same network at "
            "another precision (check drift.shadow_precision and the model's artifacts)")
