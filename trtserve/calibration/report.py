"""The reports ``trtserve calibrate`` writes (``calibration.report.json``) and prints (``--json``).

Frozen dataclasses over :class:`trtserve.reports.JsonReport`: their fields, in declaration order, are the keys.
This module imports nothing heavy (no numpy, onnx or OpenCV).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trtserve.reports import NOT_IN_JSON, OMIT_WHEN_NONE, JsonReport

if TYPE_CHECKING:
    import onnx

    from calibrators.graph import Plan
    from calibrators.histogram import HistogramSummary


@dataclass(frozen=True)
class CalibratedTensor(JsonReport):
    """One calibrated activation (the report's view of :class:`calibrators.calibrate.TensorRange`)."""

    amax: float  # the calibrated symmetric range
    max_abs: float  # the largest |x| seen
    nonnegative: bool  # never negative on the calibration frames


@dataclass(frozen=True)
class LayerCount(JsonReport):
    """The weighted layers (Conv, ConvTranspose, Gemm, MatMul with constant weights) of the INT8 model: how many
    are quantized and how many stay float; ``post_processing_nodes`` other nodes stay float too (the head's decode).
    """

    total: int
    quantized: int
    kept_float: int
    post_processing_nodes: int

    @classmethod
    def of(cls, model: onnx.ModelProto, plan: Plan) -> LayerCount:
        """The count for ``plan`` (the onnxruntime placement's) on the prepared ``model``."""
        from calibrators.graph import WEIGHTED_OPS

        ops = {n.name: n.op_type for n in model.graph.node}
        float_weighted = sum(1 for n in plan.excluded_nodes if ops.get(n) in WEIGHTED_OPS)
        quantized = len(plan.weighted_nodes)
        return cls(quantized + float_weighted, quantized, float_weighted, len(plan.excluded_nodes) - float_weighted)

    def describe(self) -> str:
        """E.g. ``kept float: 6 of 46 weighted layers (+ post-processing)``."""
        extra = " (+ post-processing)" if self.post_processing_nodes else ""
        return f"kept float: {self.kept_float} of {self.total} weighted layers{extra}"


@dataclass(frozen=True)
class CalibrationArtifacts(JsonReport):
    """File names, relative to the model's folder, of what the calibration wrote."""

    qdq_onnxruntime: str  # Q/DQ in the onnxruntime placement
    qdq_tensorrt: str  # Q/DQ in the tensorrt placement
    trt_caches: Mapping[str, str]  # TensorRT version as given (X.Y.Z) -> calibration cache file


@dataclass(frozen=True)
class PrecisionComparison(JsonReport):
    """FP32 vs INT8 COCO mAP on the held-out synthetic set, and INT8's detection agreement with FP32."""

    map50_fp32: float
    map50_95_fp32: float
    map50_int8: float
    map50_95_int8: float
    agreement_f1: float  # F1 at IoU 0.5 of INT8's detections against FP32's, rounded to 4 digits
    agreement_mean_iou: float  # rounded to 4 digits
    images: int


@dataclass(frozen=True)
class CalibrationReport(JsonReport):
    """What ``trtserve calibrate`` did: the result of :func:`trtserve.calibration.run.run_calibration`.

    ``auto_exclude`` is None (``null`` in JSON) without ``--auto-exclude`` (or, for method ``auto``, when a
    candidate met the target without it); ``evaluation`` is None (and absent from JSON) without ``--eval-images``.
    ``tensors[...].amax`` are the ranges written (for ``auto``, the chosen method's).
    """

    def summary(self) -> str:
        """The method line ``trtserve calibrate`` prints: what was chosen and why, and what stayed float."""
        method = self.method
        if self.method_choice is not None:
            method = f"auto -> {self.method_choice['chosen']}: {self.method_choice['reason']}"
        layers = (self.weighted_layers.describe() if self.weighted_layers is not None
                  else f"{len(self.excluded)} nodes kept float")
        return f"method {method}\n{len(self.tensors)} tensors; {layers}"

    model: str
    method: str
    frames_used: int
    frames_skipped: int  # unreadable frames
    batches: int
    seconds: float  # calibration pass, rounded to 0.01 s
    onnx_opset: int  # of the onnxruntime Q/DQ model
    tensors: Mapping[str, CalibratedTensor]
    excluded: Mapping[str, str]  # node kept float -> why
    auto_exclude: Mapping[str, object] | None  # calibrators.sensitivity.AutoExcludeResult.as_dict()
    artifacts: CalibrationArtifacts
    evaluation: PrecisionComparison | None = field(default=None, metadata=OMIT_WHEN_NONE)
    # method "auto": calibrators.sensitivity.RangeChoice.as_dict() -- the method chosen, each candidate's agreement
    # with FP32 on the calibration frames, and why; absent for an explicit method
    method_choice: Mapping[str, object] | None = field(default=None, metadata=OMIT_WHEN_NONE)
    weighted_layers: LayerCount | None = field(default=None, metadata=OMIT_WHEN_NONE)  # quantized / kept float
    # |x| per tensor, 64 bins at most, for the HTML report (trtserve.calibration.html_report); not in the JSON
    histograms: Mapping[str, HistogramSummary] = field(default_factory=dict, metadata=NOT_IN_JSON, repr=False)
    # calibrators.memory.MemoryUse.as_dict(): the memory budget, passes, frames per run, measured peak RSS
    memory: Mapping[str, object] | None = field(default=None, metadata=OMIT_WHEN_NONE)
