"""Prometheus metrics: one registry per server, one ``trtserve_`` prefix, base units, bounded labels.

Labels are only ever model, precision, method, code, outcome, stage, tensor (a configured set) and output (a model's
output tensors), and the gRPC convention's grpc_type, grpc_service, grpc_method and grpc_code —
never a stream or frame id, so the series count does not grow with traffic; a model label only ever holds
the name of a loaded model (or of its raw tensor interface, ``<model>.raw``, once that is used). Everything is
served in the Prometheus text format on its own HTTP port (:func:`start_metrics_http`), without prometheus_client's
``_created`` series (:class:`Registry`).

gRPC calls are counted twice over, on purpose: ``grpc_server_started_total`` / ``grpc_server_handled_total``
carry the names and labels of the grpc-ecosystem convention (go-grpc-prometheus, which gRPC dashboards and
alert mixins read) for every service, health and reflection included; ``trtserve_requests_total`` counts only
the inference APIs' calls, by model.

Process CPU and memory are always exported; GPU utilisation and memory come from the optional device
collectors of :mod:`trtserve.monitoring.devices`.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector

from trtserve.errors import ConfigError

STAGES = ("queue", "preprocess", "inference", "postprocess", "total")
# seconds; from 0.5 ms (one small batch on a GPU) to 10 s (a deadline-sized backlog)
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                     0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
RATIO_BUCKETS = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
SCORE_DIFF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

# The monotonic time at which the current gRPC call's deadline falls (None: no deadline), set by the server's
# metrics interceptor for the call's task; tasks the handler starts inherit it. A frame cancelled because its
# call's deadline passed is counted DEADLINE_EXCEEDED, as the client sees it, not CANCELLED.
CALL_DEADLINE: ContextVar[float | None] = ContextVar("trtserve_call_deadline", default=None)


def call_deadline_passed() -> bool:
    """True inside a gRPC call whose deadline has passed (see :data:`CALL_DEADLINE`)."""
    deadline = CALL_DEADLINE.get()
    return deadline is not None and time.monotonic() >= deadline


class Registry(CollectorRegistry):
    """A registry that leaves out the ``<name>_created`` samples of counters, histograms and summaries.

    prometheus_client exports, beside every counter and histogram child, a ``_created`` series holding the
    child's creation time: as many series again, which Prometheus does not need (``rate`` and ``increase``
    handle counter resets). Its own switch, ``disable_created_metrics()``, is process-wide; this is per registry.
    """

    def collect(self) -> Iterator[Metric]:
        for family in super().collect():
            if family.type in ("counter", "histogram", "summary", "gaugehistogram"):
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class Metrics:
    """All of the server's metric families, registered in ``registry`` (a private :class:`Registry` by default)."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry or Registry(auto_describe=True)
        r = self.registry
        # models with metrics, in the order they were loaded: the first is the server's default model
        self.models: dict[str, None] = {}
        # per (model, precision), kept across the model's versions like its Prometheus series: KServe's statistics
        self.totals: dict[tuple[str, str], ModelTotals] = {}
        if process:
            ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.frames = Counter("trtserve_frames", "Frames answered, by outcome (ok, dropped, error) and gRPC code",
                              ["model", "precision", "outcome", "code"], registry=r)
        self.requests = Counter("trtserve_requests",
                                "Calls of the inference APIs (trtserve.v1, KServe v2) finished, by model, method and "
                                "gRPC status code; health checks and reflection are not counted here",
                                ["model", "method", "code"], registry=r)
        # the grpc-ecosystem convention (go-grpc-prometheus), every service: grpc_code holds Go's code names
        self.grpc_started = Counter("grpc_server_started", "RPCs started on the server",
                                    ["grpc_type", "grpc_service", "grpc_method"], registry=r)
        self.grpc_handled = Counter("grpc_server_handled", "RPCs completed on the server, whatever their status",
                                    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"], registry=r)
        self.stage_seconds = Histogram(
            "trtserve_stage_duration_seconds",
            "Time one frame spent per stage: queue wait, preprocess (decode, letterbox, normalize), inference "
            "(its batch's), postprocess (its batch's head + NMS), total (end to end in the server)",
            ["model", "precision", "stage"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("trtserve_batch_size", "Frames per batch sent to the backend",
                                    ["model", "precision"], buckets=BATCH_BUCKETS, registry=r)
        self.engine_cpu = Counter("trtserve_engine_cpu_seconds",
                                  "CPU time of the engine calls (the backend's run of each batch), on the threads that "
                                  "made them; beside process_cpu_seconds_total, the rest is the server's own work",
                                  ["model", "precision"], registry=r)
        self.queue_depth = Gauge("trtserve_queue_depth", "Frames waiting in the batcher queue", ["model"],
                                 registry=r)
        self.queue_capacity = Gauge("trtserve_queue_capacity", "The batcher queue's bound (max_queue_size)", ["model"],
                                    registry=r)
        self.inflight_batches = Gauge("trtserve_inflight_batches", "Batches running in the backend now",
                                      ["model"], registry=r)
        self.active_streams = Gauge("trtserve_active_streams", "Open streaming calls", ["method"], registry=r)
        self.model_ready = Gauge("trtserve_model_ready", "1 when the model serves, 0 when it does not",
                                 ["model", "precision"], registry=r)
        self.build_info = Gauge("trtserve_build_info", "Constant 1; labels say what is running",
                                ["model", "precision", "version", "backend", "runtime_version", "device"],
                                registry=r)
        # drift of the served model against its FP32 shadow, per sampled frame
        self.drift_f1 = Histogram("trtserve_drift_agreement_f1",
                                  "Per sampled frame: F1 of served vs shadow detections (IoU 0.5, same class)",
                                  ["model", "precision"], buckets=RATIO_BUCKETS, registry=r)
        self.drift_iou = Histogram("trtserve_drift_matched_iou", "Per sampled frame: mean IoU of matched boxes",
                                   ["model", "precision"], buckets=RATIO_BUCKETS, registry=r)
        self.drift_score = Histogram("trtserve_drift_score_abs_diff",
                                     "Per sampled frame: mean |served score - shadow score| of matched boxes",
                                     ["model", "precision"], buckets=SCORE_DIFF_BUCKETS, registry=r)
        self.drift_missed = Counter("trtserve_drift_missed_detections",
                                    "Detections the shadow made and the served model did not",
                                    ["model", "precision"], registry=r)
        self.drift_extra = Counter("trtserve_drift_extra_detections",
                                   "Detections the served model made and the shadow did not",
                                   ["model", "precision"], registry=r)
        self.drift_cosine = Histogram("trtserve_drift_output_cosine_similarity",
                                      "Per sampled frame: cosine similarity of raw outputs (models without a head)",
                                      ["model", "precision"], buckets=RATIO_BUCKETS, registry=r)
        self.drift_rel_l2 = Histogram("trtserve_drift_output_relative_l2",
                                      "Per sampled frame: |served - shadow| / |shadow| of raw outputs",
                                      ["model", "precision"], buckets=RATIO_BUCKETS, registry=r)
        self.drift_samples = Counter("trtserve_drift_samples", "Frames compared with the shadow",
                                     ["model", "precision"], registry=r)
        self.drift_skipped = Counter("trtserve_drift_skipped",
                                     "Sampled batches not compared because the shadow was busy (max_pending)",
                                     ["model", "precision"], registry=r)
        self.drift_errors = Counter("trtserve_drift_errors", "Shadow runs that failed (serving is unaffected)",
                                    ["model", "precision"], registry=r)
        self.drift_window_f1 = Gauge("trtserve_drift_window_agreement_f1",
                                     "Agreement F1 pooled over the rolling window of sampled frames (NaN while "
                                     "there is no current window: none yet, or the shadow is down)",
                                     ["model", "precision"], registry=r)
        self.drift_window_output_cosine = Gauge(
            "trtserve_drift_window_output_cosine_similarity",
            "Cosine similarity of served vs shadow raw output tensors, per output tensor, averaged over the rolling "
            "window (head: raw models and the <model>.raw interface; NaN while there is no current window)",
            ["model", "precision", "output"], registry=r)
        self.drift_shadow_up = Gauge("trtserve_drift_shadow_up",
                                     "1 while the drift shadow process runs, 0 while it is down (being restarted)",
                                     ["model", "precision"], registry=r)
        self.drift_shadow_restarts = Counter("trtserve_drift_shadow_restarts",
                                             "Times the drift shadow process was started again after it died",
                                             ["model", "precision"], registry=r)
        self.drift_skipped_shadow_down = Counter("trtserve_drift_skipped_shadow_down",
                                                 "Sampled batches not compared because the shadow process was down",
                                                 ["model", "precision"], registry=r)
        self.coverage = Histogram(
            "trtserve_calibration_out_of_range_ratio",
            "Per sampled frame: fraction of values outside the calibrated INT8 range (tensor: input, a "
            "configured tensor, or all = every calibrated activation pooled)",
            ["model", "precision", "tensor"], buckets=RATIO_BUCKETS, registry=r)
        # model control (serving/model_control.py) and the live-frame calibration reservoir (monitoring/reservoir.py)
        self.model_version = Gauge("trtserve_model_version",
                                   "The serving version of each loaded model: 1 at its first load, +1 per reload "
                                   "(drift series and windows restart with each version)", ["model"], registry=r)
        self.model_loads = Counter("trtserve_model_loads",
                                   "Model loads and reloads while serving, by outcome (ok, failed)",
                                   ["model", "outcome"], registry=r)
        self.reservoir_frames = Gauge("trtserve_calibration_reservoir_frames",
                                      "Frames held in the model's calibration reservoir", ["model"], registry=r)
        self.reservoir_bytes = Gauge("trtserve_calibration_reservoir_bytes",
                                     "Bytes on disk of the model's calibration reservoir", ["model"], registry=r)
        self.reservoir_write_errors = Counter("trtserve_calibration_reservoir_write_errors",
                                              "Frames the reservoir did not store because writing failed (disk full, "
                                              "permissions)", ["model"], registry=r)


class ModelTotals:
    """What KServe's ModelStatistics reads beside the Prometheus series, per (model, precision) on the
    :class:`Metrics` object, so it continues across reloads as the series do: batches per size and the wall clock
    of the latest answered frame."""

    def __init__(self) -> None:
        self.executions: dict[int, int] = {}
        self.last_ok_s = 0.0


class BatchSizes:
    """A model's ``trtserve_batch_size`` child, and beside it the exact number of batches of each size (the
    histogram's buckets pool some sizes): KServe's ModelStatistics reports batches per size. The sizes are bounded
    by the model's max batch size. ``executions`` is shared by every version of the model (``ModelTotals``). Call
    :meth:`observe` from the event loop only."""

    def __init__(self, child: Histogram, executions: dict[int, int] | None = None) -> None:
        self.child = child
        self.executions: dict[int, int] = {} if executions is None else executions

    def observe(self, size: float) -> None:
        self.child.observe(size)
        n = int(size)
        self.executions[n] = self.executions.get(n, 0) + 1


class ModelMetrics:
    """The children of :class:`Metrics` for one model and precision, resolved once (cheap to observe)."""

    def __init__(self, metrics: Metrics, model: str, precision: str) -> None:
        self.metrics = metrics
        self.model = model
        self.precision = precision
        metrics.models.setdefault(model, None)
        self.stage = {s: metrics.stage_seconds.labels(model, precision, s) for s in STAGES}
        self.ok = metrics.frames.labels(model, precision, "ok", "OK")
        self.dropped = metrics.frames.labels(model, precision, "dropped", "")
        self.totals = metrics.totals.setdefault((model, precision), ModelTotals())
        self.batch_size = BatchSizes(metrics.batch_size.labels(model, precision), self.totals.executions)
        self.engine_cpu = metrics.engine_cpu.labels(model, precision)

    @property
    def last_ok_s(self) -> float:
        """Wall clock of the latest answered frame of the model, any version (KServe statistics' last_inference)."""
        return self.totals.last_ok_s

    def frame_ok(self, queue_s: float, preprocess_s: float, inference_s: float, postprocess_s: float,
                 total_s: float) -> None:
        self.ok.inc()
        self.totals.last_ok_s = time.time()
        stage = self.stage
        stage["queue"].observe(queue_s)
        stage["preprocess"].observe(preprocess_s)
        stage["inference"].observe(inference_s)
        stage["postprocess"].observe(postprocess_s)
        stage["total"].observe(total_s)

    def frame_error(self, code: str) -> None:
        if code == "CANCELLED" and call_deadline_passed():  # the call's deadline cancelled the frame
            code = "DEADLINE_EXCEEDED"
        self.metrics.frames.labels(self.model, self.precision, "error", code).inc()

    def track(self, queue_depth: Callable[[], float], inflight_batches: Callable[[], float],
              queue_capacity: int) -> None:
        self.metrics.queue_depth.labels(self.model).set_function(queue_depth)
        self.metrics.queue_capacity.labels(self.model).set(queue_capacity)
        self.metrics.inflight_batches.labels(self.model).set_function(inflight_batches)

    def set_ready(self, ready: bool) -> None:
        self.metrics.model_ready.labels(self.model, self.precision).set(1 if ready else 0)


def start_metrics_http(registry: CollectorRegistry, host: str, port: int) -> tuple[Any, int]:
    """Serve ``/metrics`` on ``host:port`` (0: any free port) in a daemon thread; (server, bound port).

    A port in use is a :class:`ConfigError` that says so and what to change.
    """
    try:
        server, _thread = start_http_server(port, host, registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"metrics port {port} on {host} is already in use; choose another with "
                              "--metrics-port or metrics_port in the server config (0 picks a free one)") from None
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return server, int(server.server_port)
