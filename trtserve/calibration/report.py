"""The reports ``trtserve calibrate`` writes (``calibration.report.json``) and prints (``--json``).

Frozen dataclasses over :class:`trtserve.reports.JsonReport`: their fields, in declaration order, are the keys.
This module imports nothing heavy (no numpy, onnx or OpenCV).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from trtserve.reports import OMIT_WHEN_NONE, JsonReport


@dataclass(frozen=True)
class CalibratedTensor(JsonReport):
    """One calibrated activation (the report's view of :class:`calibrators.calibrate.TensorRange`)."""

    amax: float  # the calibrated symmetric range
    max_abs: float  # the largest |x| seen
    nonnegative: bool  # never negative on the calibration frames


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

    ``auto_exclude`` is None (``null`` in JSON) without ``--auto-exclude``; ``evaluation`` is None (and
    absent from JSON) without ``--eval-images``.
    """

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
