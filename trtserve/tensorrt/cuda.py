"""The CUDA runtime calls the TensorRT path needs, through cuda-python, imported lazily.

cuda-python moved its runtime module: ``cuda.bindings.runtime`` since 12.6.1, ``cuda.cudart`` before.
Both are accepted. Every cuda-python call returns ``(error, *values)``; :meth:`CudaRuntime.call` checks
the error and raises :class:`BackendError` naming the call, so no failure passes silently.

Without a usable NVIDIA driver the releases differ: cuda-python <= 12.6.x (and 11.8) raise
``RuntimeError('Failed to dlopen libcuda.so.1')`` from the call itself, 12.9 / 13.x return
``(cudaErrorInsufficientDriver, None)``. Both become the same BackendError, with the reason and what to check.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from trtserve.errors import BackendError, ModelLoadError

_MODULES = ("cuda.bindings.runtime", "cuda.cudart")
INSTALL_HINT = ("install cuda-python (pip install 'trtserve[gpu]'); on a Jetson use the JetPack image, "
                "on x86 the NGC TensorRT container")
DRIVER_HINT = ("check that the NVIDIA driver is installed and loaded (`nvidia-smi`), that this process sees the GPU "
               "(CUDA_VISIBLE_DEVICES; in a container the NVIDIA container runtime / --gpus), and that the driver is "
               "new enough for this cuda-python's CUDA release")
# runtime errors that mean "no usable driver or device", not a bug in the call
_DRIVER_ERRORS = {"cudaErrorInsufficientDriver", "cudaErrorNoDevice", "cudaErrorInitializationError",
                  "cudaErrorStubLibrary", "cudaErrorCallRequiresNewerDriver", "cudaErrorSystemDriverMismatch",
                  "cudaErrorCompatNotSupportedOnDevice", "cudaErrorDevicesUnavailable",
                  "cudaErrorUnsupportedPtxVersion"}


def import_cudart() -> Any:
    """The cuda-python runtime module (newest import path first); ModelLoadError says how to install it."""
    errors = []
    for name in _MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise ModelLoadError(f"the CUDA runtime bindings are not importable ({'; '.join(errors)}): {INSTALL_HINT}")


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU an engine is built for: TensorRT plans are valid for one GPU model and compute capability."""

    gpu_name: str
    compute_capability: str  # "8.7"

    @property
    def slug(self) -> str:
        """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3`` (safe in a file name)."""
        return "-".join("".join(c if c.isalnum() else " " for c in self.gpu_name.lower()).split()) or "gpu"


class CudaRuntime:
    """Checked wrappers over the cuda-python runtime. Pointers and stream handles are plain ints / objects."""

    def __init__(self, module: Any | None = None) -> None:
        self.rt = module if module is not None else import_cudart()

    def call(self, what: str, *args: Any) -> Any:
        """``self.rt.<what>(*args)`` with its error code checked; returns the value(s) after the code.

        Raises BackendError naming the call and the reason: a non-zero ``cudaError_t`` (with CUDA's own text),
        or the RuntimeError / OSError older cuda-python raises when it cannot load the driver (libcuda.so.1).
        """
        try:
            result = getattr(self.rt, what)(*args)
        except (RuntimeError, OSError) as exc:
            raise BackendError(f"CUDA {what} failed: {exc}: no usable NVIDIA driver; {DRIVER_HINT}") from None
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendError(f"CUDA {what} failed: {self.describe(err)}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def describe(self, err: Any) -> str:
        """``cudaErrorInsufficientDriver (35): CUDA driver version is insufficient ...`` plus what to check."""
        name = getattr(err, "name", str(err))
        text = f"{name} ({int(err)})"
        try:  # CUDA's own sentence for the code, when this cuda-python has it
            code, message = self.rt.cudaGetErrorString(err)
            if int(code) == 0 and message:
                text += ": " + (message.decode(errors="replace") if isinstance(message, bytes) else str(message))
        except Exception:  # the name and number are enough without the sentence
            pass
        return f"{text}; {DRIVER_HINT}" if name in _DRIVER_ERRORS else text

    def device(self, index: int | None = None) -> DeviceInfo:
        """The GPU ``index`` (None: this thread's current device)."""
        if index is None:
            index = self.call("cudaGetDevice")
        props = self.call("cudaGetDeviceProperties", index)
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return DeviceInfo(name.split("\x00")[0].strip(), f"{props.major}.{props.minor}")

    def device_count(self) -> int:
        """The GPUs this process sees (CUDA_VISIBLE_DEVICES applies)."""
        return int(self.call("cudaGetDeviceCount"))

    def current_device(self) -> int:
        return int(self.call("cudaGetDevice"))

    def set_device(self, index: int) -> None:
        """Make GPU ``index`` this thread's current device: allocations, streams, engines and kernel launches made
        on this thread from now on are on it (CUDA's current device is per host thread)."""
        self.call("cudaSetDevice", index)

    def check_device_index(self, index: int, what: str = "key 'device' is", where: str = "") -> None:
        """ModelLoadError unless GPU ``index`` is one this process sees, saying ``where`` ``what`` was wrong."""
        import os

        count = self.device_count()
        if not 0 <= index < count:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ModelLoadError(
                f"{where}{what} {index}, but this process sees {count} GPU(s)"
                f"{f' (0..{count - 1})' if count else ''}"
                f"{f' with CUDA_VISIBLE_DEVICES={visible!r}' if visible is not None else ''}: list a GPU index below "
                f"{count} (indices count the visible GPUs), or make the GPU visible (`nvidia-smi -L`)")

    def malloc(self, size_bytes: int) -> int:
        return int(self.call("cudaMalloc", size_bytes))

    def malloc_host(self, size_bytes: int) -> int:
        """Page-locked host memory: async copies from it overlap with compute."""
        return int(self.call("cudaMallocHost", size_bytes))

    def free(self, pointer: int) -> None:
        self.call("cudaFree", pointer)

    def free_host(self, pointer: int) -> None:
        self.call("cudaFreeHost", pointer)

    def stream_create(self) -> Any:
        return self.call("cudaStreamCreate")

    def stream_destroy(self, stream: Any) -> None:
        self.call("cudaStreamDestroy", stream)

    def synchronize(self, stream: Any) -> None:
        self.call("cudaStreamSynchronize", stream)

    def copy_to_device(self, device_ptr: int, host_ptr: int, size_bytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call("cudaMemcpyAsync", device_ptr, host_ptr, size_bytes, kind, stream)

    def copy_to_host(self, host_ptr: int, device_ptr: int, size_bytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call("cudaMemcpyAsync", host_ptr, device_ptr, size_bytes, kind, stream)


def nvidia_smi() -> tuple[list[dict[str, str]], str | None, str]:
    """(GPUs as name / compute capability / memory, driver version, why none) from ``nvidia-smi``; never raises."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], None, "nvidia-smi not found: no NVIDIA driver on this host (or not in PATH)"
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return [], None, f"nvidia-smi failed: {exc}"
    gpus, driver = [], None
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"name": parts[0], "compute_capability": parts[1], "memory": parts[2]})
            driver = parts[3]
    return gpus, driver, "" if gpus else "nvidia-smi lists no GPU"
