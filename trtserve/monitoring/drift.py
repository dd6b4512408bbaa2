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
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trtserve.backends.base import BackendOptions, TensorInfo
from trtserve.backends.registry import backend_class
from trtserve.config import DriftSpec, ModelConfig
from trtserve.detector import BatchRun, Detector, infer_padded
from trtserve.errors import ModelLoadError
from trtserve.heads.base import Head, Thresholds
from trtserve.monitoring.metrics import Metrics
from trtserve.vision.detections import Detections
from trtserve.vision.letterbox import Letterbox
from trtserve.vision.matching import MatchCounts, match_pairs

logger = logging.getLogger(__name__)

Range = tuple[float, float]  # the float interval a quantized tensor can represent


def qdq_ranges(model_path: Path) -> dict[str, Range]:
    """Calibrated ranges of the activations of a Q/DQ ONNX model: ``[(qmin - zp) * s, (qmax - zp) * s]``.

    Weights (initializers) are skipped: only tensors computed at run time can leave their range.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}  # converted only where a scale or zero point is read

    def value(name: str) -> NDArray[Any] | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    ranges: dict[str, Range] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = value(node.input[1])
        zero = value(node.input[2]) if len(node.input) > 2 else np.array(0, np.uint8)
        if scale is None or zero is None or scale.size != 1:
            continue  # computed or per-channel activation scales: not a calibrated range we can read
        info = np.iinfo(zero.dtype)
        s, z = float(scale.reshape(())), int(zero.reshape(()))
        ranges[node.input[0]] = ((info.min - z) * s, (info.max - z) * s)
    return ranges


def cache_ranges(cache_path: Path) -> dict[str, Range]:
    """Calibrated ranges from a TensorRT calibration cache (symmetric: ``[-amax, amax]``)."""
    from calibrators.trt_cache import read_cache

    cache = read_cache(cache_path)
    return {t: (-cache.amax(t), cache.amax(t)) for t in cache.scales}


def calibrated_ranges(served: Detector) -> tuple[dict[str, Range], str]:
    """The served model's activation ranges and where they came from ('' and a reason when none)."""
    path = served.backend.model_path
    if path.suffix == ".onnx":
        ranges = qdq_ranges(path)
        if ranges:
            return ranges, str(path.name)
        return {}, f"{path.name} has no QuantizeLinear nodes (not an INT8 Q/DQ model)"
    if served.precision != "int8":
        return {}, f"{path.name} is not an INT8 model"
    # an engine: the ranges it was built from, as its sidecar records (a calibration cache, or the Q/DQ model)
    from trtserve.tensorrt.keys import read_record

    record = read_record(path)
    source = served.config.directory / (record.calibration_cache_file or record.onnx_file)
    if record.calibration_cache_file:
        return cache_ranges(source), source.name
    ranges = qdq_ranges(source) if source.suffix == ".onnx" and source.is_file() else {}
    return ranges, source.name if ranges else f"{path.name} records no calibration it was built from"


def with_extra_outputs(model_path: Path, tensors: Sequence[str], folder: Path) -> tuple[Path, list[str]]:
    """A copy of an ONNX model that also outputs those of ``tensors`` its nodes compute; (path, added names)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(model_path))
    computed = {o for node in model.graph.node for o in node.output}
    present = {o.name for o in model.graph.output}
    added = [t for t in tensors if t in computed]
    for name in added:
        if name not in present:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    out = folder / f"{model_path.stem}.shadow.onnx"
    onnx.save(model, str(out))
    return out, added


@dataclass(frozen=True)
class FrameDrift:
    """One sampled frame compared with the shadow."""

    counts: MatchCounts  # served = candidate, shadow = reference
    score_abs_diff_sum: float
    cosine: float | None = None  # raw-output models
    relative_l2: float | None = None
    out_of_range: dict[str, float] | None = None  # tensor label -> fraction outside its calibrated range

    @property
    def mean_score_abs_diff(self) -> float:
        tp = self.counts.true_positives
        return self.score_abs_diff_sum / tp if tp else 0.0


def compare_detections(served: Detections, shadow: Detections, iou_threshold: float) -> FrameDrift:
    pairs = match_pairs(served.boxes_xyxy, served.scores, served.class_ids, shadow.boxes_xyxy, shadow.class_ids,
                        iou_threshold)
    counts = MatchCounts.from_pairs(pairs, len(served.scores), len(shadow.scores))
    diff = sum(abs(float(served.scores[i]) - float(shadow.scores[j])) for i, j, _ in pairs)
    return FrameDrift(counts, diff)


def compare_raw(served: NDArray[np.generic], shadow: NDArray[np.generic]) -> tuple[float, float]:
    """Cosine similarity and relative L2 (``|a - b| / |b|``) of one frame's raw outputs."""
    a = np.asarray(served, np.float64).ravel()
    b = np.asarray(shadow, np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = 1.0 if na == nb == 0 else float(a @ b) / (na * nb) if na and nb else 0.0
    rel = float(np.linalg.norm(a - b)) / nb if nb else (0.0 if na == 0 else 1.0)
    return cosine, rel


def out_of_range_fraction(values: NDArray[np.generic], bounds: Range) -> tuple[int, int]:
    """(values outside ``bounds``, values) of one frame's tensor."""
    v = np.asarray(values)
    outside = int(np.count_nonzero((v < bounds[0]) | (v > bounds[1])))
    return outside, int(v.size)


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


def _lowest_priority() -> None:
    """Give this process (and the threads it starts) only CPU time nobody else wants.

    Linux: SCHED_IDLE (pid 0: the calling thread, the only one at this point), else nice 19.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.nice(19)
    except (AttributeError, OSError) as exc:
        logger.info("shadow process keeps normal priority: %s", exc)


# --- the shadow process -------------------------------------------------------------------------------------
# The shadow runs in a process of its own: its Python work (decoding, matching, coverage) never holds the
# server's GIL, so a descheduled low-priority shadow cannot stall the serving threads, and a crash of the
# shadow cannot take the server down.


@dataclass(frozen=True)
class ShadowSetup:
    """Everything the shadow process needs (picklable)."""

    config: ModelConfig
    backend: str
    precision: str
    options: BackendOptions
    input_name: str
    head: Head  # the served model's head (its type resolved), to decode the shadow's outputs alike
    head_outputs: tuple[str, ...]
    ranges: dict[str, Range]
    coverage_tensors: tuple[str, ...]
    iou_threshold: float


@dataclass(frozen=True)
class ShadowInfo:
    """What the shadow process loaded: for the same-network check and the coverage series."""

    model_path: Path
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]  # the model's own outputs (extra coverage outputs left out)
    coverage_labels: list[str]
    unreadable: list[str]  # calibrated tensors the shadow model does not compute


class _Shadow:
    def __init__(self, setup: ShadowSetup) -> None:
        self.setup = setup
        kind = backend_class(setup.backend)
        self.source = kind.model_file(setup.config, setup.precision)  # an engine for a tensorrt shadow
        self.scratch = tempfile.TemporaryDirectory(prefix="trtserve-shadow-")
        path, readable = self.source, list[str]()
        extra = [t for t in setup.ranges if t != setup.input_name]
        if extra and self.source.suffix == ".onnx":
            path, readable = with_extra_outputs(self.source, extra, Path(self.scratch.name))
        self.backend = kind(path, setup.options).load()
        self.unreadable = [t for t in extra if t not in readable]
        self.ranges = {t: r for t, r in setup.ranges.items() if t not in self.unreadable}
        labels = {"all": [t for t in self.ranges if t != setup.input_name]}
        if setup.input_name in self.ranges:
            labels["input"] = [setup.input_name]
        labels.update({t: [t] for t in setup.coverage_tensors if t in self.ranges})
        self.coverage = {k: v for k, v in labels.items() if v}  # nothing to read: no series

    def info(self) -> ShadowInfo:
        head = set(self.setup.head_outputs)
        own = [t for t in self.backend.outputs if t.name in head or t.name not in self.ranges]
        return ShadowInfo(self.source, self.backend.inputs, own, list(self.coverage), self.unreadable)

    def compare(self, tensor: NDArray[np.generic], served: list[Detections] | dict[str, NDArray[np.generic]],
                geometries: list[Letterbox], thresholds: list[Thresholds]) -> list[FrameDrift]:
        setup = self.setup
        shadow_in = self.backend.inputs[0]
        tensor = tensor.astype(shadow_in.dtype, copy=False)
        fixed = shadow_in.shape[0]
        outputs = infer_padded(self.backend, setup.input_name, tensor, fixed if isinstance(fixed, int) else None)
        head_outputs = {k: outputs[k] for k in setup.head_outputs}
        if isinstance(served, dict):  # a raw head: compare the tensors themselves
            frames = []
            for i in range(len(geometries)):
                pairs = [compare_raw(served[k][i], head_outputs[k][i]) for k in setup.head_outputs]
                frames.append(FrameDrift(MatchCounts(), 0.0, float(np.mean([p[0] for p in pairs])),
                                         float(np.mean([p[1] for p in pairs]))))
        else:
            shadow_dets = setup.head.decode_each(head_outputs, geometries, thresholds)
            frames = [compare_detections(s, f, setup.iou_threshold) for s, f in zip(served, shadow_dets)]
        if not self.coverage:
            return frames
        return [FrameDrift(f.counts, f.score_abs_diff_sum, f.cosine, f.relative_l2,
                           self._coverage(i, tensor, outputs)) for i, f in enumerate(frames)]

    def _coverage(self, i: int, tensor: NDArray[np.generic], outputs: dict[str, NDArray[np.generic]]
                  ) -> dict[str, float]:
        ratios: dict[str, float] = {}
        for label, tensors in self.coverage.items():
            outside = total = 0
            for t in tensors:
                values = tensor[i] if t == self.setup.input_name else outputs[t][i]
                o, n = out_of_range_fraction(values, self.ranges[t])
                outside, total = outside + o, total + n
            ratios[label] = outside / total if total else 0.0
        return ratios


_shadow: _Shadow | None = None  # in the shadow process


def _shadow_open(setup: ShadowSetup) -> ShadowInfo:
    global _shadow
    _lowest_priority()
    _shadow = _Shadow(setup)
    return _shadow.info()


def _shadow_compare(tensor: NDArray[np.generic], served: list[Detections] | dict[str, NDArray[np.generic]],
                    geometries: list[Letterbox], thresholds: list[Thresholds]) -> list[FrameDrift]:
    assert _shadow is not None, "the shadow process was not opened"
    return _shadow.compare(tensor, served, geometries, thresholds)


def _shadow_close() -> None:
    global _shadow
    if _shadow is not None:
        _shadow.backend.close()
        _shadow.scratch.cleanup()
        _shadow = None


# --- the server side ----------------------------------------------------------------------------------------


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
        setup = ShadowSetup(config, spec.shadow_backend, spec.shadow_precision,
                            BackendOptions(intra_op_threads=spec.shadow_threads, providers=spec.shadow_providers),
                            served.input_name, served.head, tuple(t.name for t in served.backend.outputs), ranges,
                            spec.coverage_tensors, spec.iou_threshold)
        # spawn, not fork: the server has gRPC and ONNX Runtime threads that a fork would copy half-way
        executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            shadow = executor.submit(_shadow_open, setup).result()
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
            future = self._executor.submit(_shadow_compare, run.tensor, served, list(geometries), list(thresholds))
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
            self._executor.submit(_shadow_close).result(timeout=30)
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
