"""``trtserve build`` and the tensorrt backend against the TensorRT / CUDA contract doubles, per version.

The doubles hold only each version's documented API (11.x has no BuilderFlag.INT8, no calibrator, no bindings
API), check shapes, profiles and device addresses as TensorRT does, and run the parsed ONNX with ONNX Runtime
on the bytes the backend copied into "device" memory. Outputs are compared with ONNX Runtime on the same file.
"""

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trtserve.cli import main
from trtserve.config import ModelConfig
from trtserve.datasets.synthetic import evaluation_set
from trtserve.detector import Detector
from trtserve.errors import ConfigError, EngineBuildError, InvalidFrameError, ModelLoadError, TensorRTUnavailableError
from trtserve.repository import ModelRepository
from trtserve.tensorrt.builder import build_engine
from trtserve.tensorrt.keys import BuildSettings, default_settings

from ...conftest import ENGINES
from ...doubles.gpu_host import FakeHost, install

VERSIONS = [("8.5.2", "cuda.cudart"), ("8.6.2", "cuda.bindings.runtime"), ("10.3.0", "cuda.cudart"),
            ("10.13.0", "cuda.bindings.runtime"), ("11.4.1", "cuda.bindings.runtime")]


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    shutil.copytree(ENGINES / "shapes", tmp_path / "shapes", ignore=shutil.ignore_patterns("cache"))
    return ModelRepository(tmp_path)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"images": x})[0])


@pytest.mark.parametrize("version, cuda_path", VERSIONS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_and_run_matches_onnxruntime(monkeypatch: pytest.MonkeyPatch, repo: ModelRepository, version: str,
                                           cuda_path: str, precision: str) -> None:
    host = install(monkeypatch, version, cuda_path)
    config = repo.get("shapes")
    result = build_engine(config, default_settings(config, precision))
    built_from = result.path.onnx if not result.path.convert_fp16 else config.directory / "cache" / "model.fp16.onnx"
    record = json.loads(result.plan.with_suffix(".json").read_text())
    assert record["tensorrt_version"] == version and record["compute_capability"] == "8.9"
    assert record["profile"]["images"] == [[1, 3, 256, 256], [8, 3, 256, 256], [8, 3, 256, 256]]
    host.calls.clear()
    x = np.random.default_rng(1).random((3, 3, 256, 256), dtype=np.float32)
    with Detector.open(config, precision, backend="tensorrt") as detector:
        out = detector.backend.infer({"images": x})["output0"]
        assert detector.backend.name == "tensorrt"
    np.testing.assert_allclose(out, _ort(built_from, x), rtol=1e-5, atol=1e-4)
    legacy = version.startswith("8.")
    run_calls = [c for c in host.calls if c.startswith(("set_binding_shape(0", "set_input_shape(images", "execute"))]
    if legacy:  # bindings by index: shape of binding 0 (profile 0), then enqueue v2
        assert run_calls[-2:] == ["set_binding_shape(0, [3, 3, 256, 256])", "execute_async_v2"]
    else:
        assert run_calls[-2:] == ["set_input_shape(images, [3, 3, 256, 256])", "execute_async_v3"]
        assert "set_tensor_address(images)" in host.calls and "set_tensor_address(output0)" in host.calls
    assert host.cuda.live() == 0  # every buffer and stream released on close


@pytest.mark.parametrize("version, network_flags, builder_flags", [
    ("8.5.2", "create_network(1)", ["set_flag(INT8)", "set_flag(FP16)"]),  # EXPLICIT_BATCH, calibrator
    ("10.3.0", "create_network(2)", []),  # STRONGLY_TYPED Q/DQ
    ("11.4.1", "create_network(0)", []),  # strongly typed by default; the flag is deprecated
])
def test_int8_builder_calls_per_version(monkeypatch: pytest.MonkeyPatch, repo: ModelRepository, version: str,
                                        network_flags: str, builder_flags: list[str]) -> None:
    host = install(monkeypatch, version)
    config = repo.get("shapes")
    build_engine(config, BuildSettings("int8", 8, 4, execution_contexts=1))
    assert network_flags in host.calls
    assert [c for c in host.calls if c.startswith("set_flag")] == builder_flags
    assert ("set_calibration_profile" in host.calls) == version.startswith("8.")
    assert ("read_calibration_cache" in host.calls) == version.startswith("8.")
    assert "profile.set_shape(images, [1, 3, 256, 256], [4, 3, 256, 256], [8, 3, 256, 256])" in host.calls
    parsed = next(c for c in host.calls if c.startswith("parse_from_file"))
    assert parsed == ("parse_from_file(model.onnx)" if version.startswith("8.") else
                      "parse_from_file(model.int8.tensorrt.onnx)")


def test_the_11_double_really_lacks_the_removed_apis(monkeypatch: pytest.MonkeyPatch) -> None:
    host = install(monkeypatch, "11.4.1")
    trt = host.trt
    for missing in ("FP16", "INT8"):
        assert not hasattr(trt.BuilderFlag, missing)
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert not hasattr(trt, "IInt8EntropyCalibrator2")
    config = trt.Builder(trt.Logger()).create_builder_config()
    with pytest.raises(AttributeError):
        config.int8_calibrator = object()


def test_concurrent_batches_use_their_own_contexts(monkeypatch: pytest.MonkeyPatch, repo: ModelRepository) -> None:
    install(monkeypatch, "10.3.0")
    config = repo.get("shapes")
    build_engine(config, default_settings(config, "fp32"))
    frames = [s.image_bgr for s in evaluation_set(6)]
    with Detector.open(config, "fp32", backend="tensorrt") as trt_detector, Detector.open(config, "fp32") as cpu:
        assert trt_detector.backend.execution_contexts == 2  # type: ignore[attr-defined]
        expected = cpu.detect(frames)
        results: list[list] = [[] for _ in range(4)]

        def work(i: int) -> None:
            results[i] = trt_detector.detect(frames[i:] + frames[:i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, got in enumerate(results):
        want = expected[i:] + expected[:i]
        for a, b in zip(got, want):
            assert a.detections is not None and b.detections is not None
            assert a.detections.class_ids.tolist() == b.detections.class_ids.tolist()
            np.testing.assert_allclose(a.detections.boxes_xyxy, b.detections.boxes_xyxy, atol=1e-3)


def test_a_batch_above_the_engine_max_is_refused(monkeypatch: pytest.MonkeyPatch, repo: ModelRepository) -> None:
    install(monkeypatch, "10.3.0")
    config = repo.get("shapes")
    result = build_engine(config, BuildSettings("fp32", 4, 2, execution_contexts=1))
    from trtserve.backends.tensorrt import TensorRTBackend

    with TensorRTBackend(result.plan).load() as backend:
        assert backend.runtime_version == "10.3.0" and backend.device == "NVIDIA Double GPU (sm 8.9)"
        with pytest.raises(InvalidFrameError, match=r"batch of 5 is outside the engine's range 1..4.*--max-batch"):
            backend.infer({"images": np.zeros((5, 3, 256, 256), np.float32)})


def _fresh_host_and_plan(monkeypatch: pytest.MonkeyPatch, config: ModelConfig) -> Path:
    install(monkeypatch, "8.6.2", gpu_name="Orin", compute_capability=(8, 7))
    return build_engine(config, default_settings(config, "fp16")).plan


def test_plan_from_another_tensorrt_or_gpu_says_how_to_rebuild(monkeypatch: pytest.MonkeyPatch,
                                                               repo: ModelRepository) -> None:
    config = repo.get("shapes")
    plan = _fresh_host_and_plan(monkeypatch, config)
    install(monkeypatch, "10.3.0", gpu_name="Orin", compute_capability=(8, 7))
    with pytest.raises(ModelLoadError, match=r"no TensorRT fp16 engine for this host.*built with TensorRT 8.6.2, "
                                             r"this host has TensorRT 10.3.0.*trtserve build shapes --precision fp16 "
                                             r"--max-batch 8 --repository"):
        Detector.open(config, "fp16", backend="tensorrt")
    from trtserve.backends.tensorrt import TensorRTBackend

    install(monkeypatch, "8.6.2", gpu_name="NVIDIA A10", compute_capability=(8, 6))
    with pytest.raises(ModelLoadError, match=r"built for Orin \(compute 8.7\), this host has NVIDIA A10.*"
                                             r"Rebuild it here with: trtserve build shapes --precision fp16"):
        TensorRTBackend(plan).load()


def test_corrupt_or_mislabelled_plans_fail_with_the_rebuild_command(monkeypatch: pytest.MonkeyPatch,
                                                                    repo: ModelRepository) -> None:
    from trtserve.backends.tensorrt import TensorRTBackend

    config = repo.get("shapes")
    plan = _fresh_host_and_plan(monkeypatch, config)
    plan.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"cannot deserialize .*Magic tag does not match.*trtserve build shapes"):
        TensorRTBackend(plan).load()
    # a plan whose sidecar claims this TensorRT but whose bytes are from another: TensorRT's own check catches it
    other = _fresh_host_and_plan(monkeypatch, config)
    install(monkeypatch, "8.5.2", gpu_name="Orin", compute_capability=(8, 7))
    sidecar = other.with_suffix(".json")
    sidecar.write_text(sidecar.read_text().replace('"8.6.2"', '"8.5.2"'))
    with pytest.raises(ModelLoadError, match="expecting library version 8502 got 8602"):
        TensorRTBackend(other).load()


def test_unsupported_ops_are_named_by_node_and_type(monkeypatch: pytest.MonkeyPatch, repo: ModelRepository) -> None:
    config = repo.get("shapes")
    model = onnx.load(str(config.onnx_path))
    node = model.graph.node[5]
    node.op_type, node.domain = "FancyNMS", "com.example"
    onnx.save(model, str(config.onnx_path))
    for version in ("8.5.2", "8.6.2", "10.3.0"):  # 8.x parser errors have no node_name() (10.0+): the ONNX is asked
        install(monkeypatch, version)
        with pytest.raises(EngineBuildError, match=rf"cannot parse model.onnx: node '{node.name}' \(FancyNMS\): "
                                                   r"No importer registered for op: FancyNMS"):
            build_engine(config, default_settings(config, "fp32"))


def test_too_small_workspace_says_to_raise_it(monkeypatch: pytest.MonkeyPatch, repo: ModelRepository) -> None:
    install(monkeypatch, "10.3.0")
    config = repo.get("shapes")
    with pytest.raises(EngineBuildError, match=r"workspace of 0.00390625 GiB is too small.*raise --workspace-gb"):
        build_engine(config, BuildSettings("fp32", 8, 8, workspace_bytes=4 << 20))


def test_missing_calibration_for_int8(monkeypatch: pytest.MonkeyPatch, repo: ModelRepository) -> None:
    install(monkeypatch, "10.13.0")
    config = repo.get("shapes")
    (config.directory / "model.int8.tensorrt.onnx").unlink()
    with pytest.raises(ConfigError, match=r"calibration cache for 101300.*trtserve calibrate shapes"):
        build_engine(config, default_settings(config, "int8"))


def test_auto_build_and_timing_cache(monkeypatch: pytest.MonkeyPatch, repo: ModelRepository, tmp_path: Path) -> None:
    host = install(monkeypatch, "10.3.0")
    yaml_path = repo.root / "shapes" / "model.yaml"
    yaml_path.write_text(yaml_path.read_text() + "backend: tensorrt\nengine:\n  auto_build: true\n  opt_batch: 2\n")
    config = repo.get("shapes")
    with Detector.open(config, "fp32") as detector:  # backend from model.yaml, engine built on demand
        assert detector.backend.name == "tensorrt"
    assert "build_serialized_network" in host.calls
    cache = tmp_path / "timing.cache"
    build_engine(config, default_settings(config, "fp32"), timing_cache=cache)
    assert cache.read_bytes() == b"TIMING-CACHE:100300"


def test_cli_build(monkeypatch: pytest.MonkeyPatch, repo: ModelRepository, capsys: pytest.CaptureFixture[str]) -> None:
    host: FakeHost = install(monkeypatch, "8.6.2", num_dla_cores=2)
    assert main(["build", "shapes", "--precision", "int8", "--max-batch", "4", "--dla-core", "1",
                 "--repository", str(repo.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["plan"]).is_file() and out["settings"]["dla_core"] == 1
    assert out["build_path"] == "int8 implicit (calibration cache), weakly typed, DLA core 1 with GPU fallback"
    assert "set_flag(GPU_FALLBACK)" in host.calls
    assert main(["build", "shapes", "--precision", "fp32", "--dla-core", "0", "--repository", str(repo.root)]) == 2
    assert "FP16 and INT8 only" in capsys.readouterr().err


def test_without_tensorrt_build_exits_2_and_says_what_to_do(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["build", "shapes", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "JetPack" in err and "pip install tensorrt-cu12" in err
    assert "cannot be pip-installed" not in err
    with pytest.raises(TensorRTUnavailableError):
        Detector.open(ModelRepository(ENGINES).get("shapes"), "fp32", backend="tensorrt")


@pytest.mark.parametrize("version, source", [("8.6.2", "calibration.trt8602.cache"),
                                             ("10.3.0", "model.int8.tensorrt.onnx")])
def test_drift_coverage_reads_the_ranges_the_engine_was_built_from(monkeypatch: pytest.MonkeyPatch,
                                                                   repo: ModelRepository, version: str,
                                                                   source: str) -> None:
    from trtserve.monitoring.ranges import calibrated_ranges

    install(monkeypatch, version)
    config = repo.get("shapes")
    build_engine(config, default_settings(config, "int8"))
    with Detector.open(config, "int8", backend="tensorrt") as detector:
        ranges, found = calibrated_ranges(detector)
    assert found == source and len(ranges) > 20
    lo, hi = ranges["images"]
    assert lo < 0 < hi  # symmetric int8 ranges around zero
