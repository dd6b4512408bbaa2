"""Hosts where TensorRT or CUDA cannot start, calibration feeds that fail, contexts TensorRT refuses: each ends as
one trtserve error saying what to check, never a traceback. The same paths against NVIDIA's real bindings and
real cuda-python releases are in tests/conformance/test_real_bindings.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from calibrators.tensorrt_calibrator import CalibrationFeedError, make_entropy_calibrator
from trtserve.cli import main
from trtserve.errors import BackendError, EngineBuildError, ModelLoadError, TensorRTUnavailableError
from trtserve.repository import ModelRepository
from trtserve.tensorrt.builder import build_engine
from trtserve.tensorrt.cuda import CudaRuntime
from trtserve.tensorrt.keys import BuildSettings, default_settings

from ...conftest import ENGINES
from ...doubles import tensorrt_double
from ...doubles.cuda_double import CudaDouble
from ...doubles.gpu_host import install, install_cuda


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    shutil.copytree(ENGINES / "shapes", tmp_path / "shapes", ignore=shutil.ignore_patterns("cache"))
    return ModelRepository(tmp_path)


@pytest.mark.parametrize("version", ["8.6.2", "10.3.0", "11.4.1"])
def test_tensorrt_that_cannot_start_cuda_is_unavailable_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, repo: ModelRepository, capsys: pytest.CaptureFixture[str],
        version: str) -> None:
    install(monkeypatch, version, factories_fail=True)
    config = repo.get("shapes")
    with pytest.raises(TensorRTUnavailableError, match=r"could not create its Builder \(CUDA initialization failure "
                                                       r"with error: 35.*nvidia-smi.*trtserve doctor"):
        build_engine(config, default_settings(config, "fp32"))
    assert main(["build", "shapes", "--precision", "fp32", "--repository", str(repo.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trtserve: error: TensorRT") and "Traceback" not in err and err.count("\n") == 1


def test_a_runtime_that_cannot_start_fails_the_load_with_what_to_check(monkeypatch: pytest.MonkeyPatch,
                                                                       repo: ModelRepository) -> None:
    from trtserve.backends.tensorrt import TensorRTBackend

    install(monkeypatch, "10.3.0")
    config = repo.get("shapes")
    plan = build_engine(config, BuildSettings("fp32", 2, 1, execution_contexts=1)).plan
    host = install(monkeypatch, "10.3.0", factories_fail=True)
    with pytest.raises(TensorRTUnavailableError, match=r"could not create its Runtime .*CUDA_VISIBLE_DEVICES"):
        TensorRTBackend(plan).load()
    assert host.cuda.live() == 0


def test_other_type_errors_are_not_mistaken_for_a_missing_gpu() -> None:
    from types import SimpleNamespace

    from trtserve.tensorrt.builder import create

    def wrong_arguments(log: object) -> None:
        raise TypeError("__init__(): incompatible constructor arguments")

    with pytest.raises(TypeError, match="incompatible constructor arguments"):  # a bug stays a bug
        create(SimpleNamespace(Builder=wrong_arguments, __version__="10.3.0"), "Builder", object())


@pytest.mark.parametrize("driver, reason", [
    ("raises", r"CUDA cudaGetDevice failed: Failed to dlopen libcuda.so.1: no usable NVIDIA driver; check "
               r".*nvidia-smi"),
    ("insufficient", r"CUDA cudaGetDevice failed: cudaErrorInsufficientDriver \(35\): CUDA driver version is "
                     r"insufficient for CUDA runtime version; check .*nvidia-smi"),
])
def test_no_driver_is_a_backend_error_for_old_and_new_cuda_python(
        monkeypatch: pytest.MonkeyPatch, repo: ModelRepository, capsys: pytest.CaptureFixture[str],
        driver: str, reason: str) -> None:
    install(monkeypatch, "10.3.0", cuda_driver=driver)
    with pytest.raises(BackendError, match=reason):
        CudaRuntime().device()
    assert main(["build", "shapes", "--precision", "fp32", "--repository", str(repo.root)]) == 2
    err = capsys.readouterr().err
    assert "cudaGetDevice failed" in err and "Traceback" not in err


def test_a_failing_calibration_feed_is_recorded_and_raised_after_the_build(tmp_path: Path) -> None:
    def feeds() -> Iterator[dict[str, np.ndarray]]:
        yield {"images": np.zeros((2, 3, 8, 8), np.float32)}
        raise OSError("camera share unmounted")

    cuda = CudaDouble()
    with pytest.MonkeyPatch.context() as mp:
        install_cuda(mp, cuda=cuda)
        calibrator = make_entropy_calibrator(tmp_path / "c.cache", 2, feeds(), trt=tensorrt_double)
        # TensorRT's side takes the failure as the end of the data and writes a cache from one batch ...
        assert tensorrt_double.run_implicit_calibration(calibrator, ["images"])
        # ... the calibrator kept what happened
        assert calibrator.batches_served == 1 and isinstance(calibrator.error, OSError)
        assert calibrator.get_batch(["images"]) is None  # no more batches once failed
        with pytest.raises(CalibrationFeedError, match=r"get_batch failed after 1 batches: OSError: camera share "
                                                       r"unmounted.*fix the feed") as info:
            calibrator.raise_if_failed()
        assert isinstance(info.value.__cause__, OSError)
        calibrator.free()
    assert cuda.live() == 0


def test_a_missing_input_in_the_feed_is_kept_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install_cuda(monkeypatch)
    calibrator = make_entropy_calibrator(tmp_path / "c.cache", 1, [{"other": np.zeros((1, 3), np.float32)}],
                                         trt=tensorrt_double)
    assert tensorrt_double.get_batch_as_tensorrt_does(calibrator, ["images"]) is None
    with pytest.raises(CalibrationFeedError, match=r"KeyError: .*calibration feed has no input 'images'"):
        calibrator.raise_if_failed()


def test_the_builder_raises_what_the_calibrator_swallowed(monkeypatch: pytest.MonkeyPatch,
                                                          repo: ModelRepository) -> None:
    import calibrators.tensorrt_calibrator as adapter

    install(monkeypatch, "8.6.2")
    config = repo.get("shapes")
    real_factory = adapter.make_entropy_calibrator

    def failing_feed() -> Iterator[dict[str, np.ndarray]]:
        raise ValueError("frame 17 is truncated")
        yield {}

    def with_failing_feed(cache_path: Path, batch_size: int, feeds: object = None, trt: object = None) -> object:
        return real_factory(repo.root / "missing.cache", batch_size, failing_feed(), trt=trt)  # type: ignore[arg-type]

    monkeypatch.setattr(adapter, "make_entropy_calibrator", with_failing_feed)
    with pytest.raises(EngineBuildError, match=r"INT8 calibration of shapes: the calibrator's get_batch failed after "
                                               r"0 batches: ValueError: frame 17 is truncated") as info:
        build_engine(config, default_settings(config, "int8"))
    assert isinstance(info.value.__cause__, CalibrationFeedError)


def test_a_refused_optimization_profile_fails_the_load_and_frees_everything(monkeypatch: pytest.MonkeyPatch,
                                                                           repo: ModelRepository) -> None:
    from trtserve.backends.tensorrt import TensorRTBackend

    host = install(monkeypatch, "10.3.0")
    config = repo.get("shapes")
    plan = build_engine(config, BuildSettings("fp32", 2, 1, execution_contexts=2)).plan
    original = host.trt.IExecutionContext.set_optimization_profile_async

    def refuse_the_second(self: object, profile_index: int, stream_handle: int) -> bool:
        return False if profile_index == 1 else bool(original(self, profile_index, stream_handle))

    monkeypatch.setattr(host.trt.IExecutionContext, "set_optimization_profile_async", refuse_the_second)
    with pytest.raises(ModelLoadError, match=r"refused optimization profile 1 of .*\.plan for execution context 1"):
        TensorRTBackend(plan).load()
    assert host.cuda.live() == 0
