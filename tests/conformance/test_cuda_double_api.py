"""The CUDA double (tests/doubles/cuda_double.py) offers only what real cuda-python has: every function it defines
exists and is callable in each real release's runtime module, and every enum member it defines (error codes, copy
kinds) has the real name and value — including cudaSetDevice / cudaGetDeviceCount / cudaErrorInvalidDevice, which
the several-GPU path uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from .bindings import CUDA_WHEELS, BindingsUnavailableError, prepare_cuda, require_tools
from .test_real_bindings import _run


@pytest.mark.parametrize("cuda_version", list(CUDA_WHEELS))
def test_the_cuda_double_is_a_subset_of_real_cuda_python(cuda_version: str, conformance_workdir: Path) -> None:
    try:
        paths = prepare_cuda(cuda_version)
    except BindingsUnavailableError as exc:
        if require_tools() and all(w.unavailable_reason() is None for w in CUDA_WHEELS[cuda_version]):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    api = _run(f"cuda-{cuda_version}", "10.3.0", conformance_workdir, paths, command="cuda")["json"]["cuda"][
        "double_api"]
    assert {"cudaSetDevice", "cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaMalloc", "cudaError_t"} \
        <= set(api["checked"])
    assert api["missing"] == [] and api["wrong"] == [], api
