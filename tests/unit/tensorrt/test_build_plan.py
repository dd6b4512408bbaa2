"""The build-path decision per TensorRT version, engine keys and records (no TensorRT needed)."""

from pathlib import Path

import numpy as np
import pytest

from trtserve.backends.onnxruntime import ort_cache_dir, provider_options
from trtserve.config import ModelConfig
from trtserve.errors import ConfigError, ModelLoadError
from trtserve.repository import ModelRepository
from trtserve.tensorrt.cuda import DeviceInfo
from trtserve.tensorrt.fp16 import convert_fp16
from trtserve.tensorrt.keys import BuildSettings, EngineRecord, engine_key
from trtserve.tensorrt.plan import Sources, TrtVersion, plan_build, sources_of

FP32, QDQ, FP16 = Path("model.onnx"), Path("model.int8.tensorrt.onnx"), Path("model.fp16.onnx")
CACHES = {8502: Path("c8502"), 8602: Path("c8602"), 100300: Path("c100300")}
ALL = Sources(FP32, False, QDQ, None, CACHES)


@pytest.mark.parametrize("version, precision, onnx, quant, net, flags, strong", [
    ("8.5.2", "fp32", FP32, "none", ("EXPLICIT_BATCH",), (), False),
    ("8.5.2", "fp16", FP32, "none", ("EXPLICIT_BATCH",), ("FP16",), False),
    ("8.5.2", "int8", FP32, "implicit", ("EXPLICIT_BATCH",), ("INT8", "FP16"), False),
    ("8.6.2", "int8", FP32, "implicit", ("EXPLICIT_BATCH",), ("INT8", "FP16"), False),
    ("10.3.0", "fp32", FP32, "none", (), (), False),
    ("10.3.0", "fp16", FP32, "none", (), ("FP16",), False),
    ("10.3.0", "int8", QDQ, "explicit", ("STRONGLY_TYPED",), (), True),
    ("10.13.0", "int8", QDQ, "explicit", ("STRONGLY_TYPED",), (), True),
    ("11.4.1", "fp32", FP32, "none", (), (), True),
    ("11.4.1", "fp16", FP32, "none", (), (), True),
    ("11.4.1", "int8", QDQ, "explicit", (), (), True),
])
def test_each_version_gets_its_documented_path(version: str, precision: str, onnx: Path, quant: str,
                                               net: tuple[str, ...], flags: tuple[str, ...], strong: bool) -> None:
    path = plan_build(TrtVersion.parse(version), precision, ALL)
    assert (path.onnx, path.quantization, path.network_flags, path.builder_flags, path.strongly_typed) == \
        (onnx, quant, net, flags, strong)
    assert path.convert_fp16 == (version.startswith("11") and precision == "fp16")
    assert (path.calibration_cache is not None) == (quant == "implicit")


def test_eleven_never_gets_flags_it_removed() -> None:
    for precision in ("fp32", "fp16", "int8"):
        path = plan_build(TrtVersion(11, 0, 0), precision, ALL)
        assert not {"FP16", "INT8", "EXPLICIT_BATCH"} & set(path.builder_flags + path.network_flags)


def test_ten_uses_the_cache_when_no_qdq_model_exists_and_the_cache_version_must_match() -> None:
    only_cache = Sources(FP32, False, None, None, CACHES)
    path = plan_build(TrtVersion(10, 3, 0), "int8", only_cache)
    assert path.quantization == "implicit" and path.calibration_cache == Path("c100300")
    with pytest.raises(ConfigError, match=r"calibration cache for 101300 \(caches here: 8502, 8602, 100300\).*"
                                          r"trtserve calibrate shapes --images DIR --trt-version 10.13.0"):
        plan_build(TrtVersion(10, 13, 0), "int8", only_cache, model="shapes")


def test_a_qdq_model_given_to_tensorrt_8_5_says_to_use_the_fp32_model_and_a_cache() -> None:
    with pytest.raises(ConfigError, match=r"FP32 ONNX plus a calibration cache.*trt-version 8.5.2"):
        plan_build(TrtVersion(8, 5, 2), "int8", Sources(QDQ, True, None, None, {}))
    with pytest.raises(ConfigError, match=r"Q/DQ model model.int8.tensorrt.onnx is for TensorRT 10\+.*8.5.2"):
        plan_build(TrtVersion(8, 5, 2), "int8", Sources(FP32, False, QDQ, None, {}))


def test_missing_calibration_and_eleven_without_qdq() -> None:
    bare = Sources(FP32, False, None, None, {})
    with pytest.raises(ConfigError, match="needs calibration"):
        plan_build(TrtVersion(8, 6, 2), "int8", bare)
    with pytest.raises(ConfigError, match="only explicit INT8"):
        plan_build(TrtVersion(11, 4, 1), "int8", Sources(FP32, False, None, None, CACHES))


def test_dla_rules() -> None:
    path = plan_build(TrtVersion(10, 3, 0), "fp16", ALL, dla_core=1, num_dla_cores=2)
    assert path.dla_core == 1 and "GPU_FALLBACK" in path.builder_flags
    with pytest.raises(ConfigError, match="FP16 and INT8 only"):
        plan_build(TrtVersion(8, 6, 2), "fp32", ALL, dla_core=0, num_dla_cores=2)
    with pytest.raises(ConfigError, match="has 0 DLA cores"):
        plan_build(TrtVersion(8, 6, 2), "fp16", ALL, dla_core=0, num_dla_cores=0)
    with pytest.raises(ConfigError, match="no DLA support"):
        plan_build(TrtVersion(11, 3, 0), "int8", ALL, dla_core=0, num_dla_cores=2)
    assert plan_build(TrtVersion(11, 4, 1), "int8", ALL, dla_core=0, num_dla_cores=2).dla_core == 0


def test_versions_parse_with_build_suffixes() -> None:
    assert TrtVersion.parse("10.3.0.30") == TrtVersion(10, 3, 0)
    assert TrtVersion.parse("8.5.2-double").nv_version == 8502
    assert TrtVersion.parse("10.13.0").nv_version == 101300
    with pytest.raises(ModelLoadError):
        TrtVersion.parse("ten")


def test_bundled_model_sources(repository: ModelRepository) -> None:
    s = sources_of(repository.get("shapes"))
    assert not s.fp32_is_qdq and s.qdq is not None and s.qdq.name == "model.int8.tensorrt.onnx"
    assert sorted(s.caches) == [8502, 8602, 100300]


def test_keys_differ_by_everything_that_makes_an_engine(repository: ModelRepository) -> None:
    config: ModelConfig = repository.get("shapes")
    s = BuildSettings("int8", 8, 4)
    orin, h100 = DeviceInfo("Orin", "8.7"), DeviceInfo("NVIDIA H100 80GB HBM3", "9.0")
    key = engine_key("shapes", s, orin, "10.3.0", "abc")
    assert key.startswith("shapes.int8.trt10.3.0.sm87.orin.b8.")
    assert engine_key("shapes", s, h100, "10.3.0", "abc").startswith("shapes.int8.trt10.3.0.sm90.nvidia-h100-80gb-hbm3")
    others = {engine_key("shapes", s, orin, "10.3.0", "abd"), engine_key("shapes", BuildSettings("int8", 8, 8), orin,
              "10.3.0", "abc"), engine_key("shapes", s, orin, "8.6.2", "abc")}
    assert key not in others and len(others) == 3
    command = BuildSettings("fp16", 16, 4, dla_core=0).build_command("shapes", config.directory.parent)
    assert command == (f"trtserve build shapes --precision fp16 --max-batch 16 --opt-batch 4 --dla-core 0 "
                       f"--repository {config.directory.parent}")
    four = BuildSettings("int8", 8, 8, execution_contexts=4).build_command("shapes", config.directory.parent)
    assert "--contexts 4" in four  # the rebuild keeps the profiles the old engine had


def test_record_mismatch_names_what_differs() -> None:
    r = EngineRecord("shapes", "k", "8.6.2", "Orin", "8.7", {"precision": "int8", "max_batch": 8, "opt_batch": 8},
                     "model.onnx", "abc", "int8 implicit")
    assert r.mismatch("8.6.2", DeviceInfo("Orin", "8.7")) is None
    assert "TensorRT 8.6.2, this host has TensorRT 10.3.0" in (r.mismatch("10.3.0", DeviceInfo("Orin", "8.7")) or "")
    assert "this host has NVIDIA A10 (compute 8.6)" in (r.mismatch("8.6.2", DeviceInfo("NVIDIA A10", "8.6")) or "")


def test_bad_build_settings_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="opt"):
        BuildSettings("fp16", 4, 8)
    with pytest.raises(ModelLoadError, match="workspace"):
        BuildSettings("fp16", 4, 4, workspace_bytes=0)


@pytest.mark.parametrize("ort_version, precision, expected", [
    ("1.20.1", "fp16", {"trt_fp16_enable": True}),
    ("1.20.1", "int8", {}),  # Q/DQ model, TensorRT 10+: strongly typed, no INT8 flag
    ("1.17.3", "int8", {"trt_int8_enable": True}),  # TensorRT 8.6 needs the flag to honour Q/DQ
    ("1.20.1", "fp32", {}),
])
def test_onnxruntime_tensorrt_provider_options(tmp_path: Path, ort_version: str, precision: str,
                                               expected: dict[str, bool]) -> None:
    got = provider_options(["TensorrtExecutionProvider", "CUDAExecutionProvider"], precision, tmp_path, ort_version)
    trt_name, trt_opts = got[0]
    assert trt_name == "TensorrtExecutionProvider" and got[1] == ("CUDAExecutionProvider", {})
    assert trt_opts == {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path),
                        "trt_timing_cache_enable": True, **expected}


def test_onnxruntime_engine_cache_is_keyed_by_device_version_and_precision() -> None:
    d = ort_cache_dir(Path("engines/shapes/model.onnx"), "fp16", "1.20.1",
                      {"name": "NVIDIA A10", "compute_capability": "8.6"})
    assert d == Path("engines/shapes/cache/ort-1.20.1.fp16.sm86.nvidia-a10")


def test_fp16_conversion_keeps_io_float32_and_the_head_float(repository: ModelRepository, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    config = repository.get("shapes")
    out = convert_fp16(config.onnx_path, tmp_path / "m.fp16.onnx")
    model = onnx.load(str(out))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]
    halves = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) > 10  # the backbone's weights really are FP16
    x = np.random.default_rng(0).random((2, 3, 256, 256), dtype=np.float32)
    ref = ort.InferenceSession(str(config.onnx_path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    scores_ref, scores = ref[:, 4:], got[:, 4:]  # class scores in [0, 1]
    assert float(np.abs(scores - scores_ref).max()) < 0.02
    np.testing.assert_allclose(got[:, :4], ref[:, :4], rtol=0.02, atol=1.0)  # boxes in pixels, FP16 rounding
