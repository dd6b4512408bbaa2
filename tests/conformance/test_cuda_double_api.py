"""The CUDA double (tests/doubles/cuda_double.py) offers only what real cuda-python has: every function it defines
exists and is callable in each real release's runtime module, and every enum member it defines (error codes, copy
kinds) has the real name and value — including cudaSetDevice / cudaGetDeviceCount / cudaErrorInvalidDevice, which
the several-GPU path uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from .bindings import CUDA_WHEELS
from .test_real_bindings import _run, cuda_paths


@pytest.mark.parametrize("cuda_version", list(CUDA_WHEELS))
def test_the_cuda_double_is_a_subset_of_real_cuda_python(cuda_version: str, conformance_workdir: Path) -> None:
    paths = cuda_paths(cuda_version)
    api = _run(f"cuda-{cuda_version}", "10.3.0", conformance_workdir, paths, command="cuda")["json"]["cuda"][
        "double_api"]
    assert {"cudaSetDevice", "cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaMalloc", "cudaError_t"} \
        <= set(api["checked"])
    assert api["missing"] == [] and api["wrong"] == [], api
