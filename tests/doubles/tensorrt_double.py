"""A contract double of the parts of the ``tensorrt`` Python API that trtserve uses.

It mirrors NVIDIA's documented signatures and the behaviour the bindings enforce (pybind11 refuses a
subclass whose ``__init__`` did not call the base one; objects take no new attributes) so that control
flow can be tested without a GPU. It is NOT TensorRT.

The module-level names below are the calibrator API (8.6). ``trt_module_double.make_tensorrt`` returns a
whole ``tensorrt`` module for one version (8.5, 8.6, 10.3, 10.13, 11.x) holding only that version's documented
API subset — so code that calls an API a version lacks (``BuilderFlag.INT8`` or ``execute_async_v2`` on
11.x) fails with AttributeError as it would there. Its "engines" are the parsed ONNX plus a header; they run
through ONNX Runtime on the CPU, reading and writing the buffers of :mod:`tests.doubles.cuda_double`.
"""

from __future__ import annotations

import enum
from typing import Any

__version__ = "8.6.2-double"


class CalibrationAlgoType(enum.Enum):
    LEGACY_CALIBRATION = 0
    ENTROPY_CALIBRATION = 1
    ENTROPY_CALIBRATION_2 = 2
    MINMAX_CALIBRATION = 3


class IInt8Calibrator:
    _algorithm = CalibrationAlgoType.LEGACY_CALIBRATION

    def __init__(self) -> None:
        self._base_initialised = True

    def get_algorithm(self) -> CalibrationAlgoType:
        return self._algorithm


class IInt8EntropyCalibrator2(IInt8Calibrator):
    _algorithm = CalibrationAlgoType.ENTROPY_CALIBRATION_2


class IInt8MinMaxCalibrator(IInt8Calibrator):
    _algorithm = CalibrationAlgoType.MINMAX_CALIBRATION


def run_implicit_calibration(calibrator: Any, input_names: list[str]) -> bytes | None:
    """What the builder does with a calibrator during an INT8 build (documented order of calls).

    Returns the cache the builder would have used (read or freshly written).
    """
    if not getattr(calibrator, "_base_initialised", False):
        raise TypeError(f"{type(calibrator).__name__}.__init__() must call the base class __init__")
    cached = calibrator.read_calibration_cache()
    if cached:
        return bytes(cached)
    batch_size = calibrator.get_batch_size()
    if batch_size < 1:
        raise ValueError("get_batch_size() must be positive")
    batches = 0
    while (pointers := calibrator.get_batch(input_names)) is not None:
        if len(pointers) != len(input_names) or not all(isinstance(p, int) for p in pointers):
            raise TypeError("get_batch() must return one int device pointer per input name, or None")
        batches += 1
    if batches == 0:
        raise RuntimeError("calibration failed: no batches and no cache")
    cache = b"TRT-8602-EntropyCalibration2\nimages: 3c010204\n"
    calibrator.write_calibration_cache(cache)
    return cache

