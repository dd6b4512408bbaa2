"""The calibrated INT8 range of each activation of a served model, read from what it was built from.

A Q/DQ ONNX carries them in its QuantizeLinear scales and zero points; an engine built the implicit way, in
the TensorRT calibration cache its sidecar names. The shadow measures live traffic against them
(calibration coverage).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from trtserve.detector import Detector

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
