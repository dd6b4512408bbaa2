"""trtserve against NVIDIA's real TensorRT bindings and real cuda-python releases, on this host without a GPU.

One subprocess per release runs tests/conformance/real_paths.py, which imports the real module (factories
return NULL here: tests/conformance/bindings.py) and reports what happened as JSON; the tests assert on it.

* A TensorRT that cannot start CUDA (``trt.Builder`` / ``trt.Runtime`` raise pybind11's TypeError) ends as
  TensorRTUnavailableError, and ``trtserve build`` exits 2 with one line — never a traceback.
* Real cuda-python without a driver: 12.6.0 raises RuntimeError, 12.9 / 13.x return cudaErrorInsufficientDriver;
  both end as the same BackendError.
* The calibrator adapter's classes are subclasses of the real ``IInt8EntropyCalibrator2`` / ``IInt8MinMaxCalibrator``
  and their C++ entry points, found in the real object's vtable by the extension's own symbol table, hand the
  cache bytes and batch pointers to C++ unchanged; a Python exception in ``get_batch`` is swallowed by the real
  bindings (C++ sees ``false``, the end of the data) and kept by the adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .bindings import CUDA_WHEELS, WHEELS, BindingsUnavailableError, prepare_cuda, require_tools
from .conftest import bindings_for

_results: dict[str, dict[str, Any]] = {}
CALIBRATOR_VERSIONS = ["8.6.1", "10.3.0", "10.13.3.9.post1"]  # TensorRT 11 has no calibrators


def cuda_paths(cuda_version: str) -> tuple[Path, ...]:
    """The real cuda-python wheel's import paths; fails where the tools are required and the wheel exists, else
    skips, when it cannot be prepared."""
    try:
        return prepare_cuda(cuda_version)
    except BindingsUnavailableError as exc:
        if require_tools() and all(w.unavailable_reason() is None for w in CUDA_WHEELS[cuda_version]):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _run(key: str, version: str, workdir: Path, extra: tuple[Path, ...] = (), command: str = "tensorrt") -> Any:
    if key not in _results:
        proc = bindings_for(version).run("tests.conformance.real_paths", command, str(workdir / key),
                                         extra_paths=extra)
        assert proc.returncode == 0, f"the real-bindings run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        _results[key] = {"json": json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}
    return _results[key]


@pytest.mark.parametrize("version", list(WHEELS))
def test_a_tensorrt_that_cannot_start_cuda_is_reported_not_a_traceback(version: str,
                                                                       conformance_workdir: Path) -> None:
    result = _run(version, version, conformance_workdir)["json"]
    assert result["version"] == version
    for part, factory in (("build", "Builder"), ("load", "Runtime")):
        assert result["factories"][part].startswith(f"TensorRTUnavailableError: TensorRT {version} is installed but "
                                                    f"could not create its {factory}"), result["factories"][part]
        assert "nvidia-smi" in result["factories"][part]
    cli = result["cli"]
    assert cli["code"] == 2 and cli["stderr"].startswith("trtserve: error: TensorRT"), cli
    assert "Traceback" not in cli["stderr"] and cli["stderr"].count("\n") == 1


@pytest.mark.parametrize("cuda_version, reason", [
    ("12.6.0", "Failed to dlopen libcuda.so.1: no usable NVIDIA driver"),
    ("12.9.10", "cudaErrorInsufficientDriver (35): CUDA driver version is insufficient for CUDA runtime version"),
    ("13.5.0", "cudaErrorInsufficientDriver (35): CUDA driver version is insufficient for CUDA runtime version"),
])
def test_real_cuda_python_without_a_driver_is_one_backend_error(cuda_version: str, reason: str,
                                                               conformance_workdir: Path) -> None:
    paths = cuda_paths(cuda_version)
    result = _run(f"cuda-{cuda_version}", "10.3.0", conformance_workdir, paths, command="cuda")["json"]
    from trtserve.tensorrt.cuda import DRIVER_HINT

    assert result["cuda"]["device"] == f"BackendError: CUDA cudaGetDevice failed: {reason}; {DRIVER_HINT}"
    cli = result["cli"]
    assert cli["code"] == 2 and cli["stderr"].startswith("trtserve: error: CUDA cudaGetDevice failed: "), cli
    assert "no usable NVIDIA driver" in cli["stderr"] or "cudaErrorInsufficientDriver" in cli["stderr"]
    assert "Traceback" not in cli["stderr"]


def _calibrator(version: str, mode: str, workdir: Path) -> dict[str, Any]:
    found: dict[str, Any] = _run(version, version, workdir)["json"]["calibrator"][mode]
    if "skip" in found:
        pytest.skip(f"the calibrator's C++ entry points cannot be driven reliably on {version}: {found['skip']}")
    return found


@pytest.mark.parametrize("version", CALIBRATOR_VERSIONS)
@pytest.mark.parametrize("algorithm, base, value", [("entropy", "IInt8EntropyCalibrator2", 2),
                                                     ("minmax", "IInt8MinMaxCalibrator", 3)])
def test_a_served_cache_reaches_cpp_byte_for_byte(version: str, algorithm: str, base: str, value: int,
                                                 conformance_workdir: Path) -> None:
    found = _calibrator(version, f"{algorithm}-cache", conformance_workdir)
    assert found["module"] == "tensorrt_bindings.tensorrt" and found["bases"] == [base, "IInt8Calibrator"]
    assert found["vtable"].startswith("tensorrt::pyCalibratorTrampoline<") and found["vtable"].endswith(f"{base}>")
    assert {"getBatchSize", "getBatch", "readCalibrationCache", "writeCalibrationCache", "getAlgorithm"} \
        <= set(found["slots"])
    assert found["getBatchSize"] == 2 and found["getAlgorithm"] == value  # kENTROPY_CALIBRATION_2 / kMINMAX
    assert found["readCalibrationCache"] == found["cache_file"] and bytes.fromhex(found["cache_file"]).startswith(
        b"TRT-")
    assert found["getBatch"] == [{"ok": False, "bindings": [0], "at_pointer": None}]  # a cache: no batches asked
    assert found["written_file"] == found["written"]  # what C++ writes lands in the file unchanged (\0 and \xff too)
    assert found["raised"] is None and found["cuda_live"] == 0


@pytest.mark.parametrize("version", CALIBRATOR_VERSIONS)
def test_batch_pointers_reach_cpp_unchanged(version: str, conformance_workdir: Path) -> None:
    found = _calibrator(version, "entropy-batches", conformance_workdir)
    batches = found["getBatch"]
    assert [b["ok"] for b in batches] == [True, True, True, False]  # three batches, then the end of the data
    assert {b["bindings"][0] for b in batches[:3]} == set(found["python_pointers"])  # the device pointer Python gave
    expected = [bytes.fromhex(f) for f in found["frames"]]
    assert [bytes.fromhex(b["at_pointer"]) for b in batches[:3]] == expected  # and the batch's bytes behind it
    assert np.frombuffer(expected[2], np.float32)[0] == 2.5
    assert found["raised"] is None and found["cuda_live"] == 0


@pytest.mark.parametrize("version", CALIBRATOR_VERSIONS)
def test_a_failing_feed_is_end_of_data_to_tensorrt_and_an_error_to_trtserve(version: str,
                                                                           conformance_workdir: Path) -> None:
    run = _run(version, version, conformance_workdir)
    found = _calibrator(version, "entropy-failing", conformance_workdir)
    assert [b["ok"] for b in found["getBatch"]] == [True, False]
    assert found["error"] == "OSError('frame source went away')"
    assert found["raised"].startswith("CalibrationFeedError: the calibrator's get_batch failed after 1 batches: "
                                      "OSError: frame source went away")
    # a plain subclass: the real bindings themselves swallow the exception and return false to C++
    swallowed = run["json"]["swallowed"]
    assert swallowed["getBatch"] == [{"ok": False, "bindings": [0], "at_pointer": None}]
    assert "Exception caught in get_batch(): ValueError: feed broke" in run["stderr"]
