"""FP32 shadow drift monitoring on live traffic.

A sample of the served batches (``sample_rate``, a fraction of batches, spread evenly) is copied to a
shadow: the same network at FP32 (ONNX Runtime on the CPU by default). The shadow runs on its own
thread at the lowest CPU priority, behind a bounded hand-off (``max_pending``): when it is busy a
sample is skipped and counted — the serving path never waits for it. For every sampled frame the
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from trtserve.backends import Backend, BackendOptions, backend_class
from trtserve.config import DriftSpec
from trtserve.detector import BatchRun, Detector, infer_padded
from trtserve.errors import ModelLoadError
from trtserve.heads import Detections, Thresholds
from trtserve.metrics import Metrics
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
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ranges: dict[str, Range] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = inits.get(node.input[1])
        zero = inits.get(node.input[2]) if len(node.input) > 2 else np.array(0, np.uint8)
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
    from trtserve.engine_key import read_record

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
    tp = len(pairs)
    counts = MatchCounts(tp, len(served.scores) - tp, len(shadow.scores) - tp, sum(p[2] for p in pairs))
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
    """The rolling window, as :meth:`DriftMonitor.summary` and GetModel report it."""

    enabled: bool
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
    """Run this thread (and threads it starts, such as ONNX Runtime's pool) at the lowest CPU priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # Linux: per thread
    except (AttributeError, OSError) as exc:
        logger.info("shadow thread keeps normal priority: %s", exc)


class DriftMonitor:
    """Compares one served model with its shadow on sampled batches. Create with :meth:`open`."""

    def __init__(self, served: Detector, shadow: Backend, spec: DriftSpec, metrics: Metrics,
                 ranges: dict[str, Range], ranges_source: str, executor: ThreadPoolExecutor,
                 scratch: tempfile.TemporaryDirectory[str] | None = None,
                 on_verdict: Callable[[bool], None] | None = None) -> None:
        self.served = served
        self.shadow = shadow
        self.spec = spec
        self.ranges = ranges
        self.ranges_source = ranges_source
        self._executor = executor
        self._scratch = scratch
        self._on_verdict = on_verdict
        self._lock = threading.Lock()
        self._pending = 0
        self._credit = 0.0
        self._window: deque[FrameDrift] = deque(maxlen=spec.window_frames)
        self._below = False
        self.samples = self.skipped = self.errors = 0
        self._head_outputs = [t.name for t in served.backend.outputs]
        model, precision = served.config.name, served.precision
        self._labels = (model, precision)
        m = metrics
        self._m_f1, self._m_iou = m.drift_f1.labels(model, precision), m.drift_iou.labels(model, precision)
        self._m_score = m.drift_score.labels(model, precision)
        self._m_missed, self._m_extra = m.drift_missed.labels(model, precision), m.drift_extra.labels(model, precision)
        self._m_cos, self._m_l2 = m.drift_cosine.labels(model, precision), m.drift_rel_l2.labels(model, precision)
        self._m_samples = m.drift_samples.labels(model, precision)
        self._m_skipped = m.drift_skipped.labels(model, precision)
        self._m_errors = m.drift_errors.labels(model, precision)
        self._m_window = m.drift_window_f1.labels(model, precision)
        input_name = served.input_name
        self._coverage_labels = {"all": [t for t in ranges if t != input_name]}
        if input_name in ranges:
            self._coverage_labels["input"] = [input_name]
        for t in spec.coverage_tensors:
            if t in ranges:
                self._coverage_labels[t] = [t]
        self._coverage_labels = {k: v for k, v in self._coverage_labels.items() if v}  # nothing to read: no series
        self._m_coverage = {label: m.coverage.labels(model, precision, label) for label in self._coverage_labels}

    @classmethod
    def open(cls, served: Detector, spec: DriftSpec, metrics: Metrics,
             on_verdict: Callable[[bool], None] | None = None) -> DriftMonitor:
        """Load the shadow (on its own low-priority thread) and check it matches the served model."""
        config = served.config
        ranges, source = calibrated_ranges(served)
        unknown = [t for t in spec.coverage_tensors if t not in ranges]
        if unknown:
            raise ModelLoadError(f"{config.source_file}: drift.coverage_tensors {unknown} are not calibrated tensors "
                                 f"of {served.backend.model_path.name} (some that are: {sorted(ranges)[:8]})")
        if not ranges:
            logger.info("model %s: calibration coverage off: %s", config.name, source)
        kind = backend_class(spec.shadow_backend)
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"trtserve-shadow-{config.name}",
                                      initializer=_lowest_priority)
        scratch = tempfile.TemporaryDirectory(prefix="trtserve-shadow-") if ranges else None
        options = BackendOptions(intra_op_threads=spec.shadow_threads, providers=spec.shadow_providers)

        def load() -> tuple[Backend, Path, list[str]]:
            source_path = kind.model_file(config, spec.shadow_precision)  # an engine for a tensorrt shadow
            path, readable = source_path, list[str]()
            if scratch is not None and source_path.suffix == ".onnx":
                extra = [t for t in ranges if t != served.input_name]
                path, readable = with_extra_outputs(source_path, extra, Path(scratch.name))
            return kind(path, options).load(), source_path, readable

        try:
            shadow, shadow_path, readable = executor.submit(load).result()
            unreadable = [t for t in ranges if t != served.input_name and t not in readable]
            if unreadable:
                logger.warning("model %s: %d calibrated tensors are not in the shadow %s (e.g. %s); coverage leaves "
                               "them out", config.name, len(unreadable), shadow_path.name, unreadable[:3])
                ranges = {t: r for t, r in ranges.items() if t not in unreadable}
            try:
                _check_same_network(served, shadow, shadow_path)
            except Exception:
                shadow.close()
                raise
        except Exception:
            executor.shutdown(wait=False)
            if scratch is not None:
                scratch.cleanup()
            raise
        logger.info("model %s: %s drift monitor against a %s shadow (%s), sample rate %.3f, ranges from %s",
                    config.name, served.precision, spec.shadow_precision, shadow.name, spec.sample_rate,
                    source or "nowhere")
        return cls(served, shadow, spec, metrics, ranges, source, executor, scratch, on_verdict)

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
        future = self._executor.submit(self._compare, run, list(geometries), list(thresholds))
        future.add_done_callback(self._finished)
        return True

    def _finished(self, future: Future[None]) -> None:
        with self._lock:
            self._pending -= 1
        if future.cancelled():  # closing: the sample was never run
            return
        exc = future.exception()
        if exc is not None:
            with self._lock:
                self.errors += 1
                errors = self.errors
            self._m_errors.inc()
            if errors <= 3 or errors % 100 == 0:
                logger.warning("model %s: shadow run %d failed (serving is unaffected): %s",
                               self.served.config.name, errors, exc)

    # --- the shadow side --------------------------------------------------------------------------------

    def _compare(self, run: BatchRun, geometries: list[Letterbox], thresholds: list[Thresholds]) -> None:
        shadow_in = self.shadow.inputs[0]
        tensor = run.tensor.astype(shadow_in.dtype, copy=False)
        fixed = shadow_in.shape[0]
        outputs = infer_padded(self.shadow, self.served.input_name, tensor, fixed if isinstance(fixed, int) else None)
        head_outputs = {k: outputs[k] for k in self._head_outputs}
        frames: list[FrameDrift] = []
        if self.served.head.type == "raw":
            for i in range(len(geometries)):
                pairs = [compare_raw(run.outputs[k][i], head_outputs[k][i]) for k in self._head_outputs]
                frames.append(FrameDrift(MatchCounts(0, 0, 0, 0.0), 0.0, float(np.mean([p[0] for p in pairs])),
                                         float(np.mean([p[1] for p in pairs]))))
        else:
            shadow_dets = self.served.decode(head_outputs, geometries, thresholds)
            frames = [compare_detections(s, f, self.spec.iou_threshold)
                      for s, f in zip(run.detections, shadow_dets)]
        if self.ranges:
            frames = [self._with_coverage(frame, i, tensor, outputs) for i, frame in enumerate(frames)]
        self._record(frames)

    def _with_coverage(self, frame: FrameDrift, i: int, tensor: NDArray[np.generic],
                       outputs: dict[str, NDArray[np.generic]]) -> FrameDrift:
        ratios: dict[str, float] = {}
        for label, tensors in self._coverage_labels.items():
            outside = total = 0
            for t in tensors:
                values = tensor[i] if t == self.served.input_name else outputs[t][i]
                o, n = out_of_range_fraction(values, self.ranges[t])
                outside, total = outside + o, total + n
            ratios[label] = outside / total if total else 0.0
        return FrameDrift(frame.counts, frame.score_abs_diff_sum, frame.cosine, frame.relative_l2, ratios)

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
        if summary.window_frames < self.spec.min_window_frames:
            return
        below = summary.below_threshold
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
        counts = sum((f.counts for f in detections), MatchCounts(0, 0, 0, 0.0))
        if detections:
            agreement = counts.f1
        else:  # raw outputs: agreement is the mean cosine similarity
            agreement = float(np.mean([f.cosine for f in window])) if window else 1.0
        scored = sum(f.counts.true_positives for f in detections)
        coverage = [f.out_of_range["all"] for f in window if f.out_of_range and "all" in f.out_of_range]
        return DriftSummary(
            enabled=True, sample_rate=self.spec.sample_rate, shadow_precision=self.spec.shadow_precision,
            samples=samples, skipped=skipped, errors=errors, window_frames=len(window), agreement_f1=agreement,
            mean_iou=counts.mean_iou, mean_score_abs_diff=sum(f.score_abs_diff_sum for f in detections) / scored
            if scored else 0.0, missed=counts.false_negatives, extra=counts.false_positives,
            out_of_range_ratio=float(np.mean(coverage)) if coverage else 0.0,
            below_threshold=len(window) >= self.spec.min_window_frames and agreement < self.spec.agreement_threshold,
            ranges_source=self.ranges_source)

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until no sample is pending (tests, benchmarks, shutdown); False on timeout."""
        done = threading.Event()
        self._executor.submit(done.set)
        return done.wait(timeout_s)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.shadow.close()
        if self._scratch is not None:
            self._scratch.cleanup()


def _check_same_network(served: Detector, shadow: Backend, shadow_path: Path) -> None:
    """Refuse a shadow whose outputs (names and known dims) or input name differ from the served model's."""

    def describe(outputs: Sequence[object]) -> list[str]:
        return [f"{t.name}{list(t.shape)}" for t in outputs]  # type: ignore[attr-defined]

    served_out = served.backend.outputs
    shadow_out = {t.name: t for t in shadow.outputs}
    mismatch = any(t.name not in shadow_out or len(t.shape) != len(shadow_out[t.name].shape) or any(
        a is not None and b is not None and a != b for a, b in zip(t.shape, shadow_out[t.name].shape))
        for t in served_out)
    if mismatch or served.input_name not in [t.name for t in shadow.inputs]:
        theirs = [shadow_out[n] for n in shadow_out if n in {t.name for t in served_out}] or list(shadow_out.values())
        raise ModelLoadError(
            f"the drift shadow {shadow_path.name} does not match the served model {served.backend.model_path.name}: "
            f"outputs {describe(theirs)} vs {describe(served_out)}, inputs {[t.name for t in shadow.inputs]} vs "
            f"{[served.input_name]}; the shadow must be the same network at another precision "
            "(check drift.shadow_precision and the model's artifacts)")
