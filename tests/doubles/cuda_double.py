# ruff: noqa: N815 - cuda-python's own mixedCase names
"""A contract double of cuda-python's runtime module (``cuda.bindings.runtime`` / ``cuda.cudart``).

Mirrors the calls trtserve makes: every function returns ``(cudaError_t, *values)`` like cuda-python.
"Device" and pinned memory are real host memory (numpy buffers) handed out by address, so code that
copies through these pointers really moves the bytes, and the double can check each copy stays inside an
allocation of the right kind. It is NOT CUDA: nothing runs on a GPU.
"""

from __future__ import annotations

import ctypes
import enum
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's name
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101


_ERROR_STRINGS = {  # cudaGetErrorString's sentences
    cudaError_t.cudaErrorInsufficientDriver: b"CUDA driver version is insufficient for CUDA runtime version",
    cudaError_t.cudaErrorNoDevice: b"no CUDA-capable device is detected",
    cudaError_t.cudaErrorInvalidDevice: b"invalid device ordinal",
}


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStream_t:  # noqa: N801
    def __init__(self, handle: int) -> None:
        self._handle = handle

    def __int__(self) -> int:
        return self._handle


@dataclass
class Props:
    name: bytes
    major: int
    minor: int


class CudaDouble:
    """State of the fake devices of one host; :meth:`module` wraps it as cuda-python's runtime module.

    Several GPUs: device 0 is ``gpu_name`` / ``compute_capability``, ``more_gpus`` follow. As in CUDA, the current
    device is per host thread (``cudaSetDevice``; 0 on a thread that never set one), and every allocation and
    stream belongs to the device current on the thread that made it: :attr:`made_on` records which, and
    :attr:`history` each (call, device) in order, so a test can check that nothing was allocated before
    ``cudaSetDevice`` chose the device.
    """

    def __init__(self, gpu_name: str = "NVIDIA Double GPU", compute_capability: tuple[int, int] = (8, 9),
                 driver: str = "ok", more_gpus: Sequence[tuple[str, tuple[int, int]]] = ()) -> None:
        """``driver`` is ``ok``; ``raises`` for a driverless host under cuda-python <= 12.6.x / 11.8 (every call
        but the runtime version raises ``RuntimeError('Failed to dlopen libcuda.so.1')``); ``insufficient`` for
        cuda-python 12.9 / 13.x there (calls return ``(cudaErrorInsufficientDriver, None)``). Both behaviours were
        observed on the real wheels by tests/conformance/test_real_bindings.py."""
        self.gpus = [Props(gpu_name.encode(), *compute_capability)] + [
            Props(name.encode(), *cc) for name, cc in more_gpus]
        self.driver = driver
        self.device: dict[int, np.ndarray] = {}
        self.pinned: dict[int, np.ndarray] = {}
        self.streams: set[int] = set()
        self.made_on: dict[int, int] = {}  # device pointer, pinned pointer or stream handle -> its device
        self.history: list[tuple[str, int]] = []  # (cudaMalloc / cudaMallocHost / cudaStreamCreate / ..., device)
        self._next_stream = 0x1000
        self._thread = threading.local()

    @property
    def current(self) -> int:
        """The calling thread's current device."""
        return int(getattr(self._thread, "device", 0))

    @property
    def props(self) -> Props:
        """The current device's properties (what a build or a deserialization on this thread sees)."""
        return self.gpus[self.current]

    def record(self, what: str) -> int:
        """Note ``what`` happened on the calling thread's current device; returns that device."""
        device = self.current
        self.history.append((what, device))
        return device

    def on_device(self, device: int, *handles: int) -> bool:
        """Whether every pointer or stream handle in ``handles`` was made on ``device``."""
        return all(self.made_on.get(int(h)) == device for h in handles)

    def live(self) -> int:
        """Allocations and streams not released yet."""
        return len(self.device) + len(self.pinned) + len(self.streams)

    def find(self, pointer: int, size: int, pool: dict[int, np.ndarray]) -> bool:
        return any(base <= pointer and pointer + size <= base + buf.nbytes for base, buf in pool.items())

    def check_device(self, pointer: int, size: int) -> None:
        if not self.find(pointer, size, self.device):
            raise AssertionError(f"{size} bytes at {pointer:#x} are not inside a cudaMalloc allocation")

    def _alloc(self, pool: dict[int, np.ndarray], size: int) -> tuple[cudaError_t, int]:
        if size <= 0:
            return cudaError_t.cudaErrorInvalidValue, 0
        buf = np.zeros(size + 256, np.uint8)
        pointer = (buf.ctypes.data + 255) // 256 * 256  # CUDA allocations are 256-byte aligned
        pool[pointer] = buf[pointer - buf.ctypes.data:][:size]
        self.made_on[pointer] = self.record("cudaMalloc" if pool is self.device else "cudaMallocHost")
        return cudaError_t.cudaSuccess, pointer

    def module(self, name: str) -> ModuleType:
        m = ModuleType(name)
        m.cudaError_t = cudaError_t  # type: ignore[attr-defined]
        m.cudaMemcpyKind = cudaMemcpyKind  # type: ignore[attr-defined]

        def cudaMalloc(size: int) -> tuple[cudaError_t, int]:  # noqa: N802
            return self._alloc(self.device, size)

        def cudaMallocHost(size: int) -> tuple[cudaError_t, int]:  # noqa: N802
            return self._alloc(self.pinned, size)

        def cudaFree(pointer: int) -> tuple[cudaError_t]:  # noqa: N802
            return (cudaError_t.cudaSuccess,) if self.device.pop(pointer, None) is not None \
                else (cudaError_t.cudaErrorInvalidDevicePointer,)

        def cudaFreeHost(pointer: int) -> tuple[cudaError_t]:  # noqa: N802
            return (cudaError_t.cudaSuccess,) if self.pinned.pop(pointer, None) is not None \
                else (cudaError_t.cudaErrorInvalidValue,)

        def cudaMemcpy(dst: int, src: int, size: int, kind: cudaMemcpyKind) -> tuple[cudaError_t]:  # noqa: N802
            if kind == cudaMemcpyKind.cudaMemcpyHostToDevice and not self.find(dst, size, self.device):
                return (cudaError_t.cudaErrorInvalidValue,)
            if kind == cudaMemcpyKind.cudaMemcpyDeviceToHost and not self.find(src, size, self.device):
                return (cudaError_t.cudaErrorInvalidValue,)
            ctypes.memmove(dst, src, size)
            return (cudaError_t.cudaSuccess,)

        def cudaMemcpyAsync(dst: int, src: int, size: int, kind: cudaMemcpyKind, stream: Any  # noqa: N802
                            ) -> tuple[cudaError_t]:
            if int(stream) not in self.streams:
                return (cudaError_t.cudaErrorInvalidValue,)
            return cudaMemcpy(dst, src, size, kind)

        def cudaStreamCreate() -> tuple[cudaError_t, cudaStream_t]:  # noqa: N802
            self._next_stream += 16
            self.streams.add(self._next_stream)
            self.made_on[self._next_stream] = self.record("cudaStreamCreate")
            return cudaError_t.cudaSuccess, cudaStream_t(self._next_stream)

        def cudaStreamDestroy(stream: Any) -> tuple[cudaError_t]:  # noqa: N802
            if int(stream) not in self.streams:
                return (cudaError_t.cudaErrorInvalidValue,)
            self.streams.discard(int(stream))
            return (cudaError_t.cudaSuccess,)

        def cudaStreamSynchronize(stream: Any) -> tuple[cudaError_t]:  # noqa: N802
            return (cudaError_t.cudaSuccess,) if int(stream) in self.streams else (cudaError_t.cudaErrorInvalidValue,)

        def cudaGetDevice() -> tuple[cudaError_t, int]:  # noqa: N802
            return cudaError_t.cudaSuccess, self.current

        def cudaSetDevice(device: int) -> tuple[cudaError_t]:  # noqa: N802
            if not 0 <= int(device) < len(self.gpus):
                return (cudaError_t.cudaErrorInvalidDevice,)
            self._thread.device = int(device)
            self.record("cudaSetDevice")
            return (cudaError_t.cudaSuccess,)

        def cudaGetDeviceCount() -> tuple[cudaError_t, int]:  # noqa: N802
            return cudaError_t.cudaSuccess, len(self.gpus)

        def cudaGetDeviceProperties(device: int) -> tuple[cudaError_t, Props | None]:  # noqa: N802
            if not 0 <= int(device) < len(self.gpus):
                return cudaError_t.cudaErrorInvalidDevice, None
            return cudaError_t.cudaSuccess, self.gpus[int(device)]

        def cudaRuntimeGetVersion() -> tuple[cudaError_t, int]:  # noqa: N802
            return cudaError_t.cudaSuccess, 12060

        def cudaGetErrorString(error: cudaError_t) -> tuple[cudaError_t, bytes]:  # noqa: N802
            return cudaError_t.cudaSuccess, _ERROR_STRINGS.get(error, error.name.encode())

        for fn in (cudaMalloc, cudaMallocHost, cudaFree, cudaFreeHost, cudaMemcpy, cudaMemcpyAsync, cudaStreamCreate,
                   cudaStreamDestroy, cudaStreamSynchronize, cudaGetDevice, cudaSetDevice, cudaGetDeviceCount,
                   cudaGetDeviceProperties,
                   cudaRuntimeGetVersion, cudaGetErrorString):
            setattr(m, fn.__name__, self._without_driver(fn) if fn.__name__ not in _NO_DRIVER_NEEDED else fn)
        return m

    def _without_driver(self, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            if self.driver == "raises":
                raise RuntimeError("Failed to dlopen libcuda.so.1")
            if self.driver == "insufficient":
                return cudaError_t.cudaErrorInsufficientDriver, None
            return fn(*args)

        call.__name__ = fn.__name__
        return call


_NO_DRIVER_NEEDED = {"cudaRuntimeGetVersion", "cudaGetErrorString"}
