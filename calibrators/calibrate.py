"""Feeds in, ranges out: run the FP32 model on ONNX Runtime batch by batch and histogram activations."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray

from calibrators.fold import constants_to_initializers
from calibrators.graph import Plan, plan_quantization
from calibrators.histogram import HistogramSummary
from calibrators.memory import DEFAULT_MAX_MEMORY_BYTES, MemoryUse, collect_histograms
from calibrators.methods import DEFAULT_PERCENTILE, candidate_amax, compute_amax
from calibrators.names import unique_node_names

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
    histograms: dict[str, HistogramSummary] = field(default_factory=dict)  # |x| per tensor, small, for reports
    memory: MemoryUse | None = None  # how the activations were collected under the memory budget, and the peak
    # method "auto": tensor -> {candidate method: amax} (calibrators.methods.candidate_amax); empty otherwise
    alternatives: dict[str, dict[str, float]] = field(default_factory=dict)

    def amax(self) -> dict[str, float]:
        return {name: r.amax for name, r in self.ranges.items()}

    def nonnegative(self) -> frozenset[str]:
        return frozenset(name for name, r in self.ranges.items() if r.min_value >= 0)


def prepare_model(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """The working copy calibration runs on: loaded, Constant nodes folded into initializers (weights stored as
    Constants are weights), unnamed nodes named (:mod:`calibrators.names`), initializers listed as graph inputs
    dropped, and upgraded to opset 13 when older."""
    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else onnx.ModelProto.FromString(
        model.SerializeToString())
    moved = constants_to_initializers(proto)
    if moved:
        logger.info("moved %d Constant nodes into initializers", moved)
    renamed = unique_node_names(proto)
    if renamed:
        logger.info("named %d unnamed (or repeated-name) nodes <op_type>_<index>", renamed)
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


def calibrate(model: onnx.ModelProto | str | Path, feeds: Iterable[Feed], method: str = "entropy",
              percentile: float = DEFAULT_PERCENTILE, profile: str = "tensorrt", keep_head_float: bool = True,
              exclude_nodes: Iterable[str] = (), exclude_op_types: Iterable[str] = (),
              on_batch: Callable[[int], None] | None = None,
              max_memory_bytes: int | None = DEFAULT_MAX_MEMORY_BYTES) -> CalibrationResult:
    """Calibrate ``model`` on ``feeds`` (any iterable of ``{input_name: array}`` batches).

    Only the tensors the placement ``profile`` will quantize are collected. The ``onnxruntime`` profile
    collects a superset of ``tensorrt``'s, so one run can serve both writers. The activations held at once stay
    within ``max_memory_bytes`` (None: unbounded; see :mod:`calibrators.memory`).
    """
    t0 = time.monotonic()
    proto = prepare_model(model)
    plan = plan_quantization(proto, profile, keep_head_float, exclude_nodes, exclude_op_types)
    hists, batches, samples, memory = collect_histograms(proto, plan.activations, feeds, on_batch, max_memory_bytes)
    ranges = {}
    for name, hist in hists.items():
        amax = compute_amax(hist, method, percentile)
        if not amax > 0:
            logger.warning("tensor %s was all zeros on the calibration set; its range falls back to 1.0", name)
            amax = 1.0
        ranges[name] = TensorRange(amax, hist.max_abs, hist.values_seen, hist.min_value)
    seconds = time.monotonic() - t0
    logger.info("calibrated %d tensors (%s, %d samples) in %.1f s", len(ranges), method, samples, seconds)
    summaries = {name: hist.summary() for name, hist in hists.items()}
    alternatives = ({name: {m: a if a > 0 else 1.0 for m, a in candidate_amax(hist, percentile).items()}
                     for name, hist in hists.items()} if method == "auto" else {})
    return CalibrationResult(method, ranges, plan, batches, samples, seconds, summaries, memory, alternatives)
