"""Feeds in, ranges out: run the FP32 model on ONNX Runtime batch by batch and histogram activations."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray

from calibrators.graph import Plan, plan_quantization
from calibrators.histogram import AbsHistogram
from calibrators.methods import DEFAULT_PERCENTILE, compute_amax

logger = logging.getLogger(__name__)
MIN_OPSET = 13

Feed = Mapping[str, NDArray[np.floating]]


@dataclass(frozen=True)
class TensorRange:
    amax: float  # the calibrated symmetric range
    max_abs: float  # the largest |x| seen
    values_seen: int
    min_value: float  # >= 0: the tensor never went negative on the calibration set


@dataclass(frozen=True)
class CalibrationResult:
    method: str
    ranges: dict[str, TensorRange]
    plan: Plan
    batches: int
    samples: int  # items along the batch dimension
    seconds: float

    def amax(self) -> dict[str, float]:
        return {name: r.amax for name, r in self.ranges.items()}

    def nonnegative(self) -> frozenset[str]:
        return frozenset(name for name, r in self.ranges.items() if r.min_value >= 0)


def prepare_model(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """Load, drop initializers listed as graph inputs, and upgrade to opset 13 when older."""
    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else onnx.ModelProto.FromString(
        model.SerializeToString())
    init_names = {i.name for i in proto.graph.initializer}
    real_inputs = [i for i in proto.graph.input if i.name not in init_names]
    if len(real_inputs) != len(proto.graph.input):
        del proto.graph.input[:]
        proto.graph.input.extend(real_inputs)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        from onnx import version_converter

        logger.info("upgrading opset %d to %d for per-channel Q/DQ", opset, MIN_OPSET)
        proto = version_converter.convert_version(proto, MIN_OPSET)
    return proto


def collect_histograms(model: onnx.ModelProto, tensors: Iterable[str], feeds: Iterable[Feed],
                       on_batch: Callable[[int], None] | None = None) -> tuple[dict[str, AbsHistogram], int, int]:
    """Histograms of ``tensors`` over all ``feeds`` (memory independent of their number).

    Returns (histograms, batches, samples). Raises ValueError on feeds that do not fit the model.
    """
    import onnxruntime as ort

    wanted = list(dict.fromkeys(tensors))
    input_names = [i.name for i in model.graph.input]
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in input_names and name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep tensors as named
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fetch = [n for n in wanted if n not in input_names]
    hists = {n: AbsHistogram() for n in wanted}
    batches = samples = 0
    for feed in feeds:
        if set(feed) != set(input_names):
            raise ValueError(f"calibration feed has inputs {sorted(feed)}; the model expects {sorted(input_names)}")
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()}
        outputs = session.run(fetch, arrays) if fetch else []
        values = {n: arrays[n] for n in wanted if n in arrays}  # inputs first: a bad feed is the root cause
        values.update(zip(fetch, outputs))
        for name, value in values.items():
            try:
                hists[name].update(value)
            except ValueError as exc:
                raise ValueError(f"tensor {name!r} in calibration batch {batches + 1}: {exc}") from None
        batches += 1
        samples += int(next(iter(arrays.values())).shape[0])
        if on_batch is not None:
            on_batch(samples)
    if batches == 0:
        raise ValueError("no calibration batches: the feeds were empty; give images or a video")
    return hists, batches, samples


def calibrate(model: onnx.ModelProto | str | Path, feeds: Iterable[Feed], method: str = "entropy",
              percentile: float = DEFAULT_PERCENTILE, profile: str = "tensorrt", keep_head_float: bool = True,
              exclude_nodes: Iterable[str] = (), exclude_op_types: Iterable[str] = (),
              on_batch: Callable[[int], None] | None = None) -> CalibrationResult:
    """Calibrate ``model`` on ``feeds`` (any iterable of ``{input_name: array}`` batches).

    Only the tensors the placement ``profile`` will quantize are collected. The ``onnxruntime`` profile
    collects a superset of ``tensorrt``'s, so one run can serve both writers.
    """
    t0 = time.monotonic()
    proto = prepare_model(model)
    plan = plan_quantization(proto, profile, keep_head_float, exclude_nodes, exclude_op_types)
    hists, batches, samples = collect_histograms(proto, plan.activations, feeds, on_batch)
    ranges = {}
    for name, hist in hists.items():
        amax = compute_amax(hist, method, percentile)
        if not amax > 0:
            logger.warning("tensor %s was all zeros on the calibration set; its range falls back to 1.0", name)
            amax = 1.0
        ranges[name] = TensorRange(amax, hist.max_abs, hist.values_seen, hist.min_value)
    seconds = time.monotonic() - t0
    logger.info("calibrated %d tensors (%s, %d samples) in %.1f s", len(ranges), method, samples, seconds)
    return CalibrationResult(method, ranges, plan, batches, samples, seconds)
