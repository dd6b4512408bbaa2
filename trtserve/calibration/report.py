"""The reports ``trtserve calibrate`` writes and prints, and the one JSON conversion every report shares.

Each report is a frozen dataclass whose fields, in declaration order, are the keys of its JSON form
(``--json``, ``calibration.report.json``, the demo's ``summary.json``). :meth:`JsonReport.as_dict`
builds that form: nested reports become nested objects, tuples become lists, and a field declared
``field(default=None, metadata=OMIT_WHEN_NONE)`` is left out while it is None (a None field declared
without it is written as ``null``).

This module imports nothing heavy (no numpy, onnx or OpenCV): the CLI reads these classes on every start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any

_OMIT_KEY = "trtserve.omit_when_none"
OMIT_WHEN_NONE: Mapping[str, bool] = MappingProxyType({_OMIT_KEY: True})  # dataclass field metadata


def _plain(value: object) -> Any:
    """``value`` as JSON-ready data: reports to dicts, mappings key by key, tuples and lists to lists."""
    if isinstance(value, JsonReport):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


class JsonReport:
    """Base of the report dataclasses: their JSON form, one key per field in declaration order."""

    def as_dict(self) -> dict[str, Any]:
        """The report as ``json.dumps`` takes it, optional fields that are None left out (see the module)."""
        assert is_dataclass(self), f"{type(self).__name__} is not a dataclass"
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get(_OMIT_KEY):
                continue
            out[f.name] = _plain(value)
        return out


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
