"""An ``IInt8EntropyCalibrator2`` for TensorRT 8.x / 10.x (implicit quantization; gone in TensorRT 11).

Two modes:

* **serve a cache** (no GPU pass): ``read_calibration_cache`` returns the bytes of a cache written by
  :mod:`calibrators.trt_cache`, so the builder takes the scales from it and never calls
  ``get_batch``. This is how a Jetson builds an INT8 engine from a cache calibrated on a laptop.
* **feed batches**: ``get_batch`` copies each ``{input_name: array}`` feed into device memory (CUDA
  through cuda-python) and returns the device pointers; the cache TensorRT writes is saved atomically.

TensorRT is imported only inside :func:`make_entropy_calibrator`; pass ``trt`` to use another module
implementing the same API (the tests use a contract double).

TensorRT swallows an exception raised in any of these callbacks (the bindings print ``[ERROR] Exception caught
in get_batch()`` and the builder takes it as the end of the data), so a failing feed would quietly calibrate on
fewer batches. The calibrator therefore keeps the first exception (:attr:`error`) and stops serving batches;
whoever drives the build calls :meth:`raise_if_failed` afterwards (``trtserve build`` does).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from calibrators.files import atomic_write_bytes
from calibrators.trt_cache import CacheFormatError, read_cache

logger = logging.getLogger(__name__)


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6.1
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as exc:
            raise RuntimeError("feeding calibration batches to TensorRT needs cuda-python "
                               "(pip install 'trtserve[gpu]'); or serve a calibration cache instead") from exc
    return runtime


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (error, *values); raise on a non-zero error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA {what} failed: {err}")
    return values[0] if len(values) == 1 else values


class CalibrationFeedError(RuntimeError):
    """A calibrator callback failed while TensorRT was building; TensorRT itself would have carried on."""


def make_entropy_calibrator(cache_path: Path, batch_size: int,
                            feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
                            trt: ModuleType | None = None) -> Any:
    """Build a ``trt.IInt8EntropyCalibrator2`` instance (an ``IInt8MinMaxCalibrator`` to serve a MinMax cache).

    With ``feeds`` None, ``cache_path`` must hold a valid cache (checked now, not at build time). After the
    build, ``raise_if_failed()`` raises :class:`CalibrationFeedError` (from the original exception) if a feed or
    cache callback failed; ``free()`` releases the device buffers.
    """
    if trt is None:
        import tensorrt as trt  # type: ignore[import-not-found,no-redef]
    assert trt is not None
    base: Any = trt.IInt8EntropyCalibrator2
    cache_path = Path(cache_path)
    if feeds is None:
        cache = read_cache(cache_path)  # raises CacheFormatError naming the line
        # TensorRT uses a cache only with a calibrator of the algorithm named in its header
        bases = {"EntropyCalibration2": "IInt8EntropyCalibrator2", "MinMaxCalibration": "IInt8MinMaxCalibrator"}
        if cache.algorithm not in bases:
            raise CacheFormatError(f"{cache_path}: a {cache.algorithm} cache; trtserve serves EntropyCalibration2 and "
                                   "MinMaxCalibration caches: recalibrate with `trtserve calibrate MODEL --method "
                                   "entropy`")
        base = getattr(trt, bases[cache.algorithm])

    class EntropyCalibrator(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._batches: Iterator[Mapping[str, np.ndarray]] | None = iter(feeds) if feeds is not None else None
            self._device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
            self.error: BaseException | None = None  # the first callback failure, re-raised by raise_if_failed
            self._failed_in = ""
            self.batches_served = 0

        def _failed(self, where: str, exc: BaseException) -> None:
            if self.error is None:
                self.error, self._failed_in = exc, where
            logger.error("calibrator %s failed (TensorRT would take it as the end of the data): %s", where, exc)

        def raise_if_failed(self) -> None:
            """Raise CalibrationFeedError if a callback failed during the build (TensorRT swallowed it)."""
            if self.error is not None:
                raise CalibrationFeedError(
                    f"the calibrator's {self._failed_in} failed after {self.batches_served} batches: "
                    f"{type(self.error).__name__}: {self.error}. TensorRT does not stop on this (it treats it as the "
                    "end of the calibration data), so the result was discarded: fix the feed and build again"
                ) from self.error

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.error is not None:
                return None
            try:
                pointers = self._next_batch(names)
            except Exception as exc:
                self._failed("get_batch", exc)
                return None
            if pointers is not None:
                self.batches_served += 1
            return pointers

        def _next_batch(self, names: list[str]) -> list[int] | None:
            if self._batches is None:
                return None
            batch = next(self._batches, None)
            if batch is None:
                return None
            cudart = _cudart()
            pointers = []
            for name in names:
                if name not in batch:
                    raise KeyError(f"calibration feed has no input {name!r}; it has {sorted(batch)}")
                host = np.ascontiguousarray(batch[name], dtype=np.float32)
                if host.shape[0] != batch_size:
                    raise ValueError(f"calibration batch for {name!r} has {host.shape[0]} items; "
                                     f"the calibrator's batch size is {batch_size}")
                ptr, size = self._device.get(name, (0, 0))
                if size < host.nbytes:
                    if ptr:
                        _check(cudart.cudaFree(ptr), "cudaFree")
                    ptr = int(_check(cudart.cudaMalloc(host.nbytes), "cudaMalloc"))
                    self._device[name] = (ptr, host.nbytes)
                _check(cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy")
                pointers.append(ptr)
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            try:
                if cache_path.is_file():
                    logger.info("serving calibration cache %s", cache_path)
                    return cache_path.read_bytes()
            except OSError as exc:
                self._failed("read_calibration_cache", exc)
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            try:
                atomic_write_bytes(cache_path, bytes(cache))
            except Exception as exc:
                self._failed("write_calibration_cache", exc)

        def free(self) -> None:
            """Release device buffers (call after the engine is built)."""
            if self._device:
                cudart = _cudart()
                for ptr, _ in self._device.values():
                    _check(cudart.cudaFree(ptr), "cudaFree")
                self._device.clear()

    return EntropyCalibrator()
