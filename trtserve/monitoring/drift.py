"""FP32 shadow drift monitoring on live traffic.

A sample of the served batches (``sample_rate``, a fraction of batches, spread evenly) is copied to a
shadow: the same network at FP32 (ONNX Runtime on the CPU by default). The shadow runs in a process
of its own at the lowest CPU priority (SCHED_IDLE on Linux), behind a bounded hand-off
(``max_pending``): when it is busy a sample is skipped and counted — the serving path never waits for
it, never shares its GIL, and survives its crash. For every sampled frame the served detections are
compared with the shadow's:

* agreement F1 at IoU ``iou_threshold`` (same class), mean IoU of the matched boxes, mean absolute
  score difference, detections only in the shadow (missed) and only in the served model (extra);
* for raw outputs (``head: raw`` models, and frames of a detector's raw tensor interface ``<model>.raw``): cosine
  similarity and relative L2 of each output tensor, exported per output
  (``trtserve_drift_window_output_cosine_similarity{output=...}``: one badly quantized output is seen as such) and
  as the per-frame mean over the outputs;
* calibration coverage: the fraction of values outside the calibrated INT8 range, in the input and
  in every calibrated activation (read off the shadow as extra outputs) — the early warning that the
  scene has moved away from the calibration set.

Results go to Prometheus and to a rolling window (``window_frames``) whose agreement is compared with
``agreement_threshold``: crossing it logs a warning (and, if configured, flips the model's health to NOT_SERVING
until it recovers). The agreement is the pooled detection F1 when the window holds detections
(``trtserve_drift_window_agreement_f1``, F1 only: NaN for a window of raw outputs alone); for a ``head: raw`` model
it is the lowest per-output mean cosine similarity, so the worst output decides.

**A shadow that dies** (killed, out of memory, a crash in its runtime: seen as EOF or a broken pipe on its
pipe, or its process gone while idle) is restarted with exponential backoff (:class:`RestartBackoff`: 1 s
doubling to 60 s, from 1 s again once a shadow stayed up 60 s). While it is down: sampled batches are dropped
and counted (``skipped_shadow_down``; nothing queues), ``trtserve_drift_shadow_up`` is 0, the window gauge is
NaN and the summary says ``stale`` (its figures are the last window's, kept for context, not current); the
drift verdict is unknown, so a NOT_SERVING that drift caused is lifted — a dead shadow is no evidence against
the served model, and a verdict that no live shadow backs must not hold the model out of service for as long
as the shadow stays down. A restarted shadow starts a new, empty window and is judged afresh (after
``min_window_frames``). The log says "down" and "back" once each per outage, not once per batch.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtserve.backends.base import BackendOptions, TensorInfo
from trtserve.backends.registry import backend_class
from trtserve.config import DriftSpec
from trtserve.detector import BatchRun, Detector
from trtserve.errors import ModelLoadError
from trtserve.heads.base import Thresholds
from trtserve.monitoring.metrics import Metrics
from trtserve.monitoring.ranges import calibrated_ranges
from trtserve.monitoring.reservoir import Reservoir
from trtserve.monitoring.shadow import FrameDrift, ShadowInfo, ShadowSetup, shadow_main
from trtserve.threads import DRIFT, set_os_thread_name
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
    below_threshold: bool  # never while stale: no verdict without a live shadow
    ranges_source: str
    stale: bool = False  # the shadow is down: the window's figures are from before it died, not current
    shadow_restarts: int = 0  # times the shadow process was started again after it died
    skipped_shadow_down: int = 0  # sampled batches dropped because the shadow was down


#: Below this fraction of activations outside their calibrated ranges the frames are within what was calibrated:
#: a low agreement then comes from how the model was quantized, not from the scene.
SCENE_SHIFT_OUT_OF_RANGE = 0.01


def drift_advice(out_of_range_ratio: float, coverage_measured: bool) -> str:
    """What a below-threshold verdict tells the operator to do, from the calibration coverage: recalibrate on recent
    frames when many activations leave the calibrated ranges (the scene moved), change the calibration method when
    few do (the scene did not move: the method lost the accuracy)."""
    if not coverage_measured:
        return ("calibration coverage is not measured for this model, so the cause is unknown: compare with "
                "`trtserve eval --data` on recent labelled frames, then recalibrate")
    if out_of_range_ratio >= SCENE_SHIFT_OUT_OF_RANGE:
        return (f"calibration coverage: {out_of_range_ratio:.4f} of activations out of range — the scene may have "
                "moved away from the calibration set: recalibrate with recent frames")
    return (f"calibration coverage: {out_of_range_ratio:.4f} of activations out of range, so the frames are within "
            "the calibrated ranges — the loss is the calibration method's, not the scene's: recalibrate with another "
            "method (`trtserve calibrate --method percentile`, or `--auto-exclude` to keep the most sensitive layers "
            "float) rather than with more frames")


@dataclass(frozen=True)
class RestartBackoff:
    """When a dead shadow is started again: ``initial_s``, times ``factor`` per death or failed start, at most
    ``max_s``; a shadow that stayed up ``reset_after_s`` starts from ``initial_s`` again. ``poll_s``: how often an
    idle monitor checks that the shadow process is still there (a busy one learns it from the pipe at once)."""

    initial_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0
    reset_after_s: float = 60.0
    poll_s: float = 0.25

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.max_s and self.factor >= 1 and self.reset_after_s >= 0
                and self.poll_s > 0):
            raise ValueError(f"invalid shadow restart backoff {self}: expected 0 < initial_s <= max_s, factor >= 1, "
                             "reset_after_s >= 0, poll_s > 0")


class RestartSchedule:
    """The delays of :class:`RestartBackoff`, as state: ask it each time the shadow dies or fails to start."""

    def __init__(self, backoff: RestartBackoff) -> None:
        self.backoff = backoff
        self._next_s = backoff.initial_s

    def after_death(self, up_for_s: float) -> float:
        """Seconds to wait before restarting a shadow that died after ``up_for_s`` seconds up."""
        if up_for_s >= self.backoff.reset_after_s:
            self._next_s = self.backoff.initial_s
        return self._take()

    def after_failed_start(self) -> float:
        """Seconds to wait before trying again after a restart that did not come up."""
        return self._take()

    def _take(self) -> float:
        delay = self._next_s
        self._next_s = min(delay * self.backoff.factor, self.backoff.max_s)
        return delay


class _ShadowProcess:
    """One shadow process and the server's end of its pipe (see :mod:`trtserve.monitoring.shadow`).

    :meth:`ready` and :meth:`call` are used by one thread at a time; a dead process shows as EOFError or
    OSError (broken pipe, connection reset) from them.
    """

    def __init__(self, setup: ShadowSetup, name: str) -> None:
        # spawn, not fork: the server has gRPC and ONNX Runtime threads that a fork would copy half-way
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        # daemon: it ends with the server; and it ends itself on EOF when the server dies first
        self.process = ctx.Process(target=shadow_main, args=(child, setup), name=name, daemon=True)
        try:
            self.process.start()
        except BaseException:
            self._conn.close()
            raise
        finally:
            child.close()  # the server keeps only its own end, so the shadow's death is EOF here

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.exitcode is None

    def ready(self) -> ShadowInfo:
        """Wait until the shadow is loaded; raises what its loading raised, EOFError when the process died."""
        status, payload = self._conn.recv()
        if status != "ok":
            raise payload
        info: ShadowInfo = payload
        return info

    def call(self, request: tuple[Any, ...]) -> tuple[str, Any]:
        """Send one comparison and wait for its answer: ("ok", frames) or ("error", exception)."""
        self._conn.send(request)
        reply: tuple[str, Any] = self._conn.recv()
        return reply

    def how_it_ended(self) -> str:
        """The exit of a process that is gone: "killed by SIGKILL", "exited with status 1"."""
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is None:
            return "stopped answering (its pipe closed)"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with status {code}"

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the shadow to close and exit; kill it after ``timeout_s``. Safe on a dead process."""
        try:
            self._conn.send(None)
        except OSError:
            pass
        self.process.join(timeout_s)
        self.kill()

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(5.0)
        self._conn.close()


@dataclass
class _Sample:
    request: tuple[Any, ...]  # (tensor, served, geometries, thresholds): what shadow_compare takes


class DriftMonitor:
    """Compares one served model with its shadow on sampled batches. Create with :meth:`open`.

    One thread of its own feeds the shadow process, records the results, notices the shadow's death and
    restarts it; :meth:`offer` (the serving path) only appends to a bounded hand-off and returns.
    """

    def __init__(self, served: Detector, setup: ShadowSetup, process: _ShadowProcess, shadow: ShadowInfo,
                 spec: DriftSpec, metrics: Metrics, ranges_source: str,
                 on_verdict: Callable[[bool], None] | None = None,
                 restart: RestartBackoff | None = None, reservoir: Reservoir | None = None) -> None:
        self.served = served
        self.reservoir = reservoir  # frames compared are offered to it, with their agreement
        self.spec = spec
        self.ranges_source = ranges_source
        self.restart = restart or RestartBackoff()
        self._setup = setup
        self._on_verdict = on_verdict
        self._lock = threading.Condition()
        # state below: written under _lock; _process, _up, _window and the schedule only by the monitor thread
        self._process: _ShadowProcess | None = process
        self._starting: _ShadowProcess | None = None  # a restart loading now (close() kills it)
        self._up = True
        self._settled_up = True  # _up once everything that follows a change (metrics, log, verdict) is done
        self._closing = False
        self._queue: deque[_Sample] = deque()  # at most max_pending (with the one in the shadow)
        self._pending = 0
        self._credit = 0.0
        self._window: deque[FrameDrift] = deque(maxlen=spec.window_frames)
        self._below = False
        self._schedule = RestartSchedule(self.restart)
        self._up_since = self._down_since = self._retry_at = time.monotonic()
        self._failed_starts = 0
        self.samples = self.skipped = self.errors = self.restarts = self.skipped_down = 0
        self._metrics = metrics
        self._coverage_labels = list(shadow.coverage_labels)
        self._output_names = [t.name for t in served.backend.outputs]  # what raw frames are compared on
        self._bind_metrics(reset=True)
        self._thread = threading.Thread(target=self._run, name=f"trtserve-drift-{served.config.name}", daemon=True)
        self._thread.start()

    _FAMILIES = ("drift_f1", "drift_iou", "drift_score", "drift_missed", "drift_extra", "drift_cosine",
                 "drift_rel_l2", "drift_samples", "drift_skipped", "drift_errors", "drift_window_f1",
                 "drift_shadow_up", "drift_shadow_restarts", "drift_skipped_shadow_down")

    def _bind_metrics(self, reset: bool) -> None:
        """Resolve this monitor's series; with ``reset``, start them afresh (a new model version: a monitor of the
        previous version still running keeps writing to its own series, which are no longer exported)."""
        model, precision = self.served.config.name, self.served.precision
        m = self._metrics
        if reset:
            for family in self._FAMILIES:
                try:
                    getattr(m, family).remove(model, precision)
                except KeyError:
                    pass
            for label in self._coverage_labels:
                try:
                    m.coverage.remove(model, precision, label)
                except KeyError:
                    pass
            for output in self._output_names:
                try:
                    m.drift_window_output_cosine.remove(model, precision, output)
                except KeyError:
                    pass
        self._m_f1, self._m_iou = m.drift_f1.labels(model, precision), m.drift_iou.labels(model, precision)
        self._m_score = m.drift_score.labels(model, precision)
        self._m_missed, self._m_extra = m.drift_missed.labels(model, precision), m.drift_extra.labels(model, precision)
        self._m_cos, self._m_l2 = m.drift_cosine.labels(model, precision), m.drift_rel_l2.labels(model, precision)
        self._m_samples = m.drift_samples.labels(model, precision)
        self._m_skipped = m.drift_skipped.labels(model, precision)
        self._m_errors = m.drift_errors.labels(model, precision)
        self._m_window = m.drift_window_f1.labels(model, precision)
        self._m_output_cos = {o: m.drift_window_output_cosine.labels(model, precision, o) for o in self._output_names}
        with self._lock:
            window = len(self._window)
            up = self._up
        self._set_window_gauges(up and window > 0)  # no window: no agreement
        self._m_up = m.drift_shadow_up.labels(model, precision)
        self._m_up.set(1 if up else 0)
        self._m_restarts = m.drift_shadow_restarts.labels(model, precision)
        self._m_skipped_down = m.drift_skipped_shadow_down.labels(model, precision)
        self._m_coverage = {label: m.coverage.labels(model, precision, label) for label in self._coverage_labels}

    def rebind_metrics(self) -> None:
        """Export this monitor's series again, afresh: after a newer version's monitor took them over and then
        failed to start, the version still serving reports again (from zero; its window is kept)."""
        self._bind_metrics(reset=True)

    @classmethod
    def open(cls, served: Detector, spec: DriftSpec, metrics: Metrics,
             on_verdict: Callable[[bool], None] | None = None,
             restart: RestartBackoff | None = None, reservoir: Reservoir | None = None) -> DriftMonitor:
        """Start the shadow process, load the shadow there and check it matches the served model.

        Raises what loading the shadow raised (ModelLoadError, ...), and ModelLoadError for a shadow that is not
        the served network; later deaths of the shadow are restarted per ``restart`` (default
        :class:`RestartBackoff`), never raised.
        """
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
        process = _ShadowProcess(setup, f"trtserve-shadow-{config.name}")
        try:
            shadow = process.ready()
            if shadow.unreadable:
                logger.warning("model %s: %d calibrated tensors are not in the shadow %s (e.g. %s); coverage leaves "
                               "them out", config.name, len(shadow.unreadable), shadow.model_path.name,
                               shadow.unreadable[:3])
            _check_same_network(served, shadow)
        except EOFError:
            process.kill()
            raise ModelLoadError(f"model {config.name}: the drift shadow process {process.how_it_ended()} while "
                                 "loading the shadow model") from None
        except BaseException:
            process.stop()
            raise
        logger.info("model %s: %s drift monitor against a %s shadow (%s, own process), sample rate %.3f, "
                    "ranges from %s", config.name, served.precision, spec.shadow_precision, spec.shadow_backend,
                    spec.sample_rate, source or "nowhere")
        return cls(served, setup, process, shadow, spec, metrics, source, on_verdict, restart, reservoir)

    # --- the serving side: never blocks -----------------------------------------------------------------

    def offer(self, run: BatchRun, geometries: Sequence[Letterbox | None], thresholds: Sequence[Thresholds],
              raw_frames: Sequence[bool] | None = None) -> bool:
        """Maybe sample this batch; returns at once. True when it went to the shadow's hand-off.

        ``raw_frames``: which frames of the batch came through the raw tensor interface (their geometry is None, and
        ``run.detections`` holds the other frames' detections only, in order); their outputs are compared tensor by
        tensor. A sample is skipped (and counted) when ``max_pending`` samples already wait for or are in the shadow,
        or when the shadow is down.
        """
        served: Any
        if self.served.head.type == "raw":
            served = run.outputs
        elif raw_frames is not None and any(raw_frames):
            found = iter(run.detections)
            served = [{k: v[i] for k, v in run.outputs.items()} if raw else next(found)
                      for i, raw in enumerate(raw_frames)]
        else:
            served = run.detections
        with self._lock:
            self._credit += self.spec.sample_rate
            if self._credit < 1.0:
                return False
            self._credit -= 1.0
            if not self._up or self._closing:
                self.skipped_down += 1
                self._m_skipped_down.inc()
                return False
            if self._pending >= self.spec.max_pending:
                self.skipped += 1
                self._m_skipped.inc()
                return False
            self._pending += 1
        # a copy, made outside the lock: the serving thread assembles its next batch in the same array
        # (Detector.run_batch reuse_input)
        try:
            sample = _Sample((run.tensor.copy(), served, list(geometries), list(thresholds)))
        except BaseException:
            with self._lock:
                self._pending -= 1
                self._lock.notify_all()
            raise
        with self._lock:
            if not self._up or self._closing:  # the shadow went down or the monitor closed meanwhile
                self._pending -= 1
                self.skipped_down += 1
                self._m_skipped_down.inc()
                self._lock.notify_all()
                return False
            self._queue.append(sample)
            self._lock.notify_all()
        return True

    # --- the monitor thread: feeds the shadow, records, restarts ----------------------------------------

    def _run(self) -> None:
        set_os_thread_name(f"{DRIFT}-{self.served.config.name}")
        try:
            while True:
                with self._lock:
                    if not self._closing and not self._queue:
                        wait_s = self.restart.poll_s if self._up else self._retry_at - time.monotonic()
                        if wait_s > 0:
                            self._lock.wait(wait_s)
                    if self._closing:
                        return
                    sample = self._queue.popleft() if self._up and self._queue else None
                    process = self._process
                if process is None:
                    if time.monotonic() >= self._retry_at:
                        self._start_again()
                elif sample is not None:
                    self._compare(process, sample)
                elif not process.alive():
                    self._went_down(process)
        except BaseException:  # a bug here must not pass silently: drift would stop being measured unseen
            logger.exception("model %s: the drift monitor stopped", self.served.config.name)
            with self._lock:
                self._up = False
            self._m_up.set(0)
            self._set_window_gauges(False)
            raise
        finally:
            self._shut_down()

    def _compare(self, process: _ShadowProcess, sample: _Sample) -> None:
        try:
            status, payload = process.call(sample.request)
        except (EOFError, OSError) as exc:  # the shadow died (maybe while running this one)
            self._failed(exc)
            self._went_down(process)
            return
        except Exception as exc:  # e.g. a request that does not pickle: this sample fails, the shadow is fine
            self._failed(exc)
            return
        if status == "ok":
            try:
                self._record(payload)
                if self.reservoir is not None:
                    self._keep_frames(sample, payload)
            finally:
                self._done()
        else:
            self._failed(payload)

    def _done(self, n: int = 1) -> None:
        with self._lock:
            self._pending -= n
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

    def _went_down(self, process: _ShadowProcess) -> None:
        if self._closing:  # close() killed a shadow that hung: nothing to restart or to report
            process.kill()
            return
        how = process.how_it_ended()
        process.kill()
        now = time.monotonic()
        with self._lock:
            self._up = False
            self._process = None
            dropped = len(self._queue)
            self._queue.clear()
            self._pending -= dropped
            self.skipped_down += dropped
            delay_s = self._schedule.after_death(now - self._up_since)
            self._down_since, self._retry_at, self._failed_starts = now, now + delay_s, 0
            self._lock.notify_all()
        self._m_up.set(0)
        self._set_window_gauges(False)
        self._m_skipped_down.inc(dropped)
        logger.warning("model %s: the drift shadow process (pid %s) %s; drift is not measured while it is down "
                       "(serving is unaffected); restarting it in %.1f s", self.served.config.name, process.pid, how,
                       delay_s)
        self._set_below(False, "the drift shadow is down: no drift verdict until it is back")
        self._settle()

    def _start_again(self) -> None:
        name = self.served.config.name
        with self._lock:
            if self._closing:
                return
        try:  # not under the lock: offer() never waits
            process = _ShadowProcess(self._setup, f"trtserve-shadow-{name}")
        except Exception as exc:  # the spawn itself (EMFILE, EAGAIN, ENOMEM): a failed start, tried again later
            with self._lock:
                delay_s = self._schedule.after_failed_start()
                self._retry_at = time.monotonic() + delay_s
                self._failed_starts += 1
                first = self._failed_starts == 1
            logger.log(logging.WARNING if first else logging.DEBUG,
                       "model %s: the drift shadow process could not be spawned (%s: %s); trying again in %.1f s",
                       name, type(exc).__name__, exc, delay_s)
            return
        with self._lock:
            self._starting = process
            closing = self._closing
        try:
            if closing:  # close() came while it was spawned, and did not see it: no use loading it
                raise EOFError
            shadow = process.ready()
            _check_same_network(self.served, shadow)
        except BaseException as exc:
            process.kill()
            with self._lock:
                self._starting = None
                if self._closing:
                    return
                delay_s = self._schedule.after_failed_start()
                self._retry_at = time.monotonic() + delay_s
                self._failed_starts += 1
                first = self._failed_starts == 1
            reason = f"the process {process.how_it_ended()}" if isinstance(exc, EOFError) else \
                f"{type(exc).__name__}: {exc}"
            # once per outage at warning (the reason); each further try only at debug
            logger.log(logging.WARNING if first else logging.DEBUG,
                       "model %s: the drift shadow did not start again (%s); trying again in %.1f s, backing off "
                       "to at most %.0f s", name, reason, delay_s, self.restart.max_s)
            if not isinstance(exc, Exception):
                raise
            return
        for label in shadow.coverage_labels:
            if label not in self._m_coverage:
                self._coverage_labels.append(label)
                self._m_coverage[label] = self._metrics.coverage.labels(name, self.served.precision, label)
        now = time.monotonic()
        with self._lock:
            self._starting = None
            self._process = process
            self._up = True
            self._up_since = now
            self._window.clear()  # a new window: nothing from before the outage is presented as current
            self.restarts += 1
            restarts, down_s = self.restarts, now - self._down_since
            self._lock.notify_all()
        self._m_restarts.inc()
        self._m_up.set(1)
        logger.info("model %s: the drift shadow is back (pid %s) after %.1f s down (restart %d); a new drift window "
                    "begins", name, process.pid, down_s, restarts)
        self._settle()

    def _settle(self) -> None:
        with self._lock:
            self._settled_up = self._up
            self._lock.notify_all()

    def _shut_down(self) -> None:
        with self._lock:
            process, self._process = self._process, None
            self._up = False
            dropped = len(self._queue)
            self._queue.clear()
            self._pending -= dropped  # closing: never run
            self._lock.notify_all()
        if process is not None:
            process.stop()
        self._m_up.set(0)
        self._settle()

    def _set_window_gauges(self, current: bool) -> None:
        """The window gauges from the window (NaN where it holds nothing of their kind, or is not ``current``)."""
        with self._lock:
            window = list(self._window)
        detections = [f for f in window if f.cosine is None] if current else []
        self._m_window.set(sum((f.counts for f in detections), MatchCounts()).f1 if detections else math.nan)
        means = _output_means(window) if current else {}
        for output, gauge in self._m_output_cos.items():
            gauge.set(means.get(output, math.nan))

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
        self._set_window_gauges(True)
        self._judge(summary)

    def _keep_frames(self, sample: _Sample, frames: list[FrameDrift]) -> None:
        """Offer the compared frames to the calibration reservoir with their agreement (raw heads: cosine)."""
        assert self.reservoir is not None
        agreements = [f.cosine if f.cosine is not None else f.counts.f1 for f in frames]
        try:
            self.reservoir.offer_tensor(self.served.config.input, sample.request[0], agreements)
        except Exception:  # a bug in the reservoir must not stop drift monitoring
            logger.exception("model %s: the calibration reservoir failed to take a frame", self.served.config.name)

    def _judge(self, summary: DriftSummary) -> None:
        below = summary.below_threshold  # never true on fewer than min_window_frames
        if below == self._below:
            return
        name = self.served.config.name
        if below:
            logger.warning("model %s (%s): agreement with the %s shadow fell to %.3f over the last %d sampled frames "
                           "(threshold %.3f); %s",
                           name, self.served.precision, self.spec.shadow_precision, summary.agreement_f1,
                           summary.window_frames, self.spec.agreement_threshold,
                           drift_advice(summary.out_of_range_ratio, bool(self._coverage_labels)))
            self._set_below(True, None)
        else:
            self._set_below(False, f"agreement with the shadow recovered to {summary.agreement_f1:.3f}")

    def _set_below(self, below: bool, lifted: str | None) -> None:
        """The verdict changes (``lifted``: why a below-threshold verdict ends); health follows if configured."""
        if below == self._below:
            return
        self._below = below
        if not below and lifted:
            logger.info("model %s: %s", self.served.config.name, lifted)
        if self._on_verdict is not None and self.spec.unhealthy_below_threshold:
            self._on_verdict(not below)

    def summary(self) -> DriftSummary:
        with self._lock:
            window = list(self._window)
            samples, skipped, errors = self.samples, self.skipped, self.errors
            stale, restarts, skipped_down = not self._up, self.restarts, self.skipped_down
        detections = [f for f in window if f.cosine is None]
        counts = sum((f.counts for f in detections), MatchCounts())
        if detections:
            agreement = counts.f1
        else:  # raw outputs: the worst output's mean cosine similarity, so one bad output is not averaged away
            means = _output_means(window)
            agreement = min(means.values()) if means else 1.0
        scored = sum(f.counts.true_positives for f in detections)
        coverage = [f.out_of_range["all"] for f in window if f.out_of_range and "all" in f.out_of_range]
        return DriftSummary(
            sample_rate=self.spec.sample_rate, shadow_precision=self.spec.shadow_precision,
            samples=samples, skipped=skipped, errors=errors, window_frames=len(window), agreement_f1=agreement,
            mean_iou=counts.mean_iou, mean_score_abs_diff=sum(f.score_abs_diff_sum for f in detections) / scored
            if scored else 0.0, missed=counts.false_negatives, extra=counts.false_positives,
            out_of_range_ratio=float(np.mean(coverage)) if coverage else 0.0,
            below_threshold=not stale and len(window) >= self.spec.min_window_frames
            and agreement < self.spec.agreement_threshold,
            ranges_source=self.ranges_source, stale=stale, shadow_restarts=restarts, skipped_shadow_down=skipped_down)

    @property
    def shadow_up(self) -> bool:
        """Whether the shadow process runs now (False while it is down and being restarted, and after close)."""
        with self._lock:
            return self._up

    @property
    def shadow_pid(self) -> int | None:
        """The shadow process's id; None while it is down."""
        with self._lock:
            return self._process.pid if self._process is not None and self._up else None

    def wait_shadow(self, up: bool = True, timeout_s: float = 60.0) -> bool:
        """Wait until the shadow is up (or down, ``up=False``) and the metrics, the log and the verdict say so;
        False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._settled_up == up, timeout_s)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Wait until every sample offered so far is compared and recorded (or dropped); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self) -> None:
        """Stop the shadow process (after the comparison it is running, if any); no restart after this."""
        with self._lock:
            self._closing = True
            starting = self._starting
            self._lock.notify_all()
        if starting is not None:  # a restart still loading: it will never be used
            starting.kill()
        self._thread.join(30.0)
        if self._thread.is_alive():  # a shadow that does not answer: kill it, which ends the wait for it
            with self._lock:
                running = self._process
            logger.warning("model %s: the drift shadow did not finish its comparison within 30 s; killing it",
                           self.served.config.name)
            if running is not None:
                running.process.kill()
            self._thread.join(10.0)


def _output_means(window: Sequence[FrameDrift]) -> dict[str, float]:
    """Per output tensor, the mean cosine similarity over the window's raw-output frames."""
    sums: dict[str, list[float]] = {}
    for f in window:
        for output, cosine in (f.output_cosines or {}).items():
            sums.setdefault(output, []).append(cosine)
    return {output: float(np.mean(values)) for output, values in sums.items()}


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
