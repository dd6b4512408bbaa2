"""Install the TensorRT and CUDA runtime doubles as the importable ``tensorrt`` / cuda-python modules."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import ModuleType

import pytest

from .cuda_double import CudaDouble
from .trt_module_double import make_tensorrt

CUDA_PATHS = ("cuda.bindings.runtime", "cuda.cudart")  # cuda-python >= 12.6.1, and older


@dataclass
class FakeHost:
    trt: ModuleType
    cuda: CudaDouble

    @property
    def calls(self) -> list[str]:
        return self.trt._calls  # type: ignore[no-any-return,attr-defined]


def install(monkeypatch: pytest.MonkeyPatch, version: str = "10.3.0", cuda_path: str = "cuda.bindings.runtime",
            gpu_name: str = "NVIDIA Double GPU", compute_capability: tuple[int, int] = (8, 9),
            num_dla_cores: int = 0, factories_fail: bool = False, cuda_driver: str = "ok",
            more_gpus: tuple[tuple[str, tuple[int, int]], ...] = ()) -> FakeHost:
    """Make ``import tensorrt`` give TensorRT ``version``'s double and cuda-python's ``cuda_path`` the CUDA double.

    The other cuda-python path is made unimportable, so both lookup orders are exercised. ``factories_fail``
    makes TensorRT's Builder and Runtime fail as on a host whose CUDA cannot start; ``cuda_driver`` is the
    CUDA double's driver (see :class:`CudaDouble`); ``more_gpus`` are GPUs 1, 2, ... beside ``gpu_name`` (GPU 0).
    """
    cuda = install_cuda(monkeypatch, cuda_path, CudaDouble(gpu_name, compute_capability, cuda_driver, more_gpus))
    trt = make_tensorrt(version, cuda, num_dla_cores, factories_fail)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return FakeHost(trt, cuda)


def install_cuda(monkeypatch: pytest.MonkeyPatch, cuda_path: str = "cuda.bindings.runtime",
                 cuda: CudaDouble | None = None) -> CudaDouble:
    """Make cuda-python's ``cuda_path`` the CUDA double (and the other path unimportable); returns the device."""
    cuda = cuda if cuda is not None else CudaDouble()
    runtime = cuda.module(cuda_path)
    package = ModuleType("cuda")
    package.__path__ = []  # a namespace package, as cuda-python's
    monkeypatch.setitem(sys.modules, "cuda", package)
    for path in CUDA_PATHS:
        monkeypatch.setitem(sys.modules, path, runtime if path == cuda_path else None)  # None: ImportError
    if cuda_path == "cuda.bindings.runtime":
        bindings = ModuleType("cuda.bindings")
        bindings.__path__ = []
        bindings.runtime = runtime  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    else:
        package.cudart = runtime  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    return cuda
