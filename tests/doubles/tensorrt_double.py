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
import sys
from typing import Any

__version__ = "8.6.2-double"
__double_only__ = ("run_implicit_calibration", "get_batch_as_tensorrt_does")  # what the builder does, not API


class CalibrationAlgoType(enum.Enum):
    LEGACY_CALIBRATION = 0
    ENTROPY_CALIBRATION = 1
    ENTROPY_CALIBRATION_2 = 2
    MINMAX_CALIBRATION = 3


class IInt8Calibrator:
    """The pybind11 base as the real bindings have it (8.6.1, 10.x, checked by tests/conformance).

    A subclass must call the base ``__init__`` (else TypeError at construction, as pybind11 says); the four
    methods TensorRT calls back are pure virtual in C++: called on the base from Python, the real bindings
    print the error and return -1 / an empty list / nothing, and ``read_calibration_cache`` raises TypeError.
    """

    _algorithm = CalibrationAlgoType.LEGACY_CALIBRATION

    def __init__(self) -> None:
        self._base_initialised = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        base = next(b for b in cls.__mro__[1:] if b.__module__ == __name__)

        def checked_init(self: Any, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if not getattr(self, "_base_initialised", False):
                raise TypeError(f"tensorrt.{base.__name__}.__init__() must be called when overriding __init__")

        cls.__init__ = checked_init  # type: ignore[method-assign]

    def get_algorithm(self) -> CalibrationAlgoType:
        return self._algorithm

    def get_batch_size(self) -> int:
        return -1

    def get_batch(self, names: list[str]) -> list[int]:
        return []

    def read_calibration_cache(self) -> Any:
        raise TypeError("Unable to convert function return value to a Python type!")

    def write_calibration_cache(self, cache: Any) -> None:
        return None


class IInt8EntropyCalibrator2(IInt8Calibrator):
    _algorithm = CalibrationAlgoType.ENTROPY_CALIBRATION_2


class IInt8MinMaxCalibrator(IInt8Calibrator):
    _algorithm = CalibrationAlgoType.MINMAX_CALIBRATION


def get_batch_as_tensorrt_does(calibrator: Any, names: list[str]) -> list[int] | None:
    """TensorRT's C++ side of ``get_batch``: an exception raised in Python is printed and swallowed, and the
    builder takes it as the end of the data (shown on the real bindings by tests/conformance/test_calibrator_vtable)."""
    try:
        return calibrator.get_batch(names)  # type: ignore[no-any-return]
    except Exception as exc:
        print(f"[ERROR] Exception caught in get_batch(): {exc}", file=sys.stderr)
        return None


def run_implicit_calibration(calibrator: Any, input_names: list[str]) -> bytes | None:
    """What the builder does with a calibrator during an INT8 build (documented order of calls).

    Returns the cache the builder would have used (read or freshly written).
    """
    cached = calibrator.read_calibration_cache()
    if cached:
        return bytes(cached)
    batch_size = calibrator.get_batch_size()
    if batch_size < 1:
        raise ValueError("get_batch_size() must be positive")
    batches = 0
    while (pointers := get_batch_as_tensorrt_does(calibrator, input_names)) is not None:
        if len(pointers) != len(input_names) or not all(isinstance(p, int) for p in pointers):
            raise TypeError("get_batch() must return one int device pointer per input name, or None")
        batches += 1
    if batches == 0:
        raise RuntimeError("calibration failed: no batches and no cache")
    cache = b"TRT-8602-EntropyCalibration2\nimages: 3c010204\n"
    calibrator.write_calibration_cache(cache)
    return cache

