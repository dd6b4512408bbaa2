"""A QAT / pre-quantized model folder (``onnx:`` names a Q/DQ model) is served as INT8 as it is, with an FP32
shadow made by folding its Q/DQ away; calibrate refuses it; TensorRT builds it explicitly on 10/11 and says why
not on 8.x; a quantized model without a float path is refused in one line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import grpc
import pytest

from trtserve.cli import main
from trtserve.config import DriftSpec
from trtserve.datasets.synthetic import video_frames
from trtserve.errors import ConfigError, ModelLoadError
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.server import Server, ServerSettings
from trtserve.tensorrt.plan import TrtVersion, plan_build, sources_of
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ..qat_models import write_qat_folder
from ..servers import with_server

SHADOW_ALL = DriftSpec(enabled=True, sample_rate=1.0, max_pending=64, min_window_frames=16, agreement_threshold=0.9)
FRAMES = [cv2.imencode(".jpg", s.image_bgr)[1].tobytes() for s in video_frames(32)]


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write_qat_folder(root)
    return root


def test_the_repository_serves_the_qdq_model_as_int8_and_folds_an_fp32_shadow(repo: Path) -> None:
    config = ModelRepository(repo).get("qat")
    qdq = repo / "qat" / "model.qat.onnx"
    assert config.prequantized == qdq and config.artifact("int8") == qdq and config.artifacts["int8_tensorrt"] == qdq
    assert config.onnx_path != qdq and config.onnx_path.is_file() and config.onnx_path.parent == qdq.parent
    assert config.onnx_path.name.startswith("model.qat.fp32-")
    assert set(config.available_precisions()) == {"fp32", "int8"}
    # read again: the same folded file, not a second one
    again = ModelRepository(repo).get("qat")
    assert again.onnx_path == config.onnx_path
    assert sorted(p.name for p in (repo / "qat").glob("*.onnx")) == sorted([qdq.name, config.onnx_path.name])


def test_served_int8_with_an_fp32_shadow_over_the_real_server(repo: Path) -> None:
    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)

        async def requests():  # type: ignore[no-untyped-def]
            for i, data in enumerate(FRAMES):
                yield pb.DetectRequest(model="qat", stream_id="cam", sequence=i, image=pb.Image(encoded=data))

        answers = [a async for a in stub.StreamDetect(requests())]
        assert len(answers) == len(FRAMES) and all(a.status == pb.STATUS_OK for a in answers)
        assert all(a.precision == "int8" for a in answers)
        assert sum(len(a.detections) for a in answers) > len(FRAMES)  # it detects
        monitor = server.pipelines["qat"].drift
        assert monitor is not None and monitor.wait_idle()
        info = await stub.GetModel(pb.GetModelRequest(name="qat"))
        assert info.drift.samples == len(FRAMES) and info.drift.shadow_precision == "fp32"
        assert info.drift.agreement_f1 >= 0.95 and not info.drift.below_threshold
        assert info.drift.ranges_source == "model.qat.onnx"  # coverage measured against the QAT model's own scales
        assert info.drift.out_of_range_ratio < 0.05

    settings = ServerSettings(grpc_port=0, metrics_port=0, models=("qat",), precision="int8", drift=SHADOW_ALL,
                              batcher=BatcherConfig(max_batch_size=8, max_queue_delay_ms=5))
    asyncio.run(with_server(settings, ModelRepository(repo), test))


def test_tensorrt_builds_it_explicitly_on_10_and_11_and_says_why_not_on_8(repo: Path) -> None:
    config = ModelRepository(repo).get("qat")
    sources = sources_of(config)
    qdq = repo / "qat" / "model.qat.onnx"
    for version, flags in (("10.3.0", ("STRONGLY_TYPED",)), ("11.0.0", ())):
        path = plan_build(TrtVersion.parse(version), "int8", sources, model="qat")
        assert path.quantization == "explicit" and path.onnx == qdq and path.network_flags == flags
    fp16 = plan_build(TrtVersion.parse("10.3.0"), "fp16", sources, model="qat")
    assert fp16.onnx == config.onnx_path  # fp16 / fp32 builds start from the folded FP32 copy
    with pytest.raises(ConfigError, match=r"model\.qat\.onnx is a pre-quantized \(QAT\) Q/DQ model.*TensorRT 8\.6\.2 "
                                          r"builds INT8 only the implicit way.*cannot use them"):
        plan_build(TrtVersion.parse("8.6.2"), "int8", sources, model="qat")


def test_calibrate_refuses_an_already_quantized_model(repo: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "frames"
    images.mkdir()
    cv2.imwrite(str(images / "0.png"), next(iter(video_frames(1))).image_bgr)
    ModelRepository(repo).get("qat")  # the folded FP32 copy is written on first read
    before = sorted(p.name for p in (repo / "qat").iterdir())
    code = main(["--repository", str(repo), "calibrate", "qat", "--images", str(images)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "qat: model.qat.onnx is already quantized" in err and "a QAT or pre-quantized export" in err
    assert "point 'onnx:' in model.yaml at the model's FP32 export" in err
    assert sorted(p.name for p in (repo / "qat").iterdir()) == before


def test_a_quantized_model_without_a_float_path_is_refused_in_one_line(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "repo"
    folder = write_qat_folder(root, "qop", fmt="QOperator")
    with pytest.raises(ModelLoadError, match=r"model\.qat\.onnx: node .* is QLinearConv, an integer-only operator"):
        ModelRepository(root).get("qop")
    code = main(["--repository", str(root), "eval", "--model", "qop", "--precision", "int8", "--images", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(folder / "model.qat.onnx") in err and "export the model in QDQ format" in err


@pytest.mark.parametrize("version", ["10.3.0", "11.4.1"])
def test_tensorrt_builds_and_runs_the_qat_model_on_the_contract_double(monkeypatch: pytest.MonkeyPatch, repo: Path,
                                                                         version: str) -> None:
    """The TensorRT 10/11 contract doubles (their documented API; the network runs on ONNX Runtime) build the QAT
    model as an explicitly quantized network and the tensorrt backend serves it; fp32 builds from the folded copy."""
    import numpy as np
    import onnxruntime as ort

    from trtserve.detector import Detector
    from trtserve.tensorrt.builder import build_engine
    from trtserve.tensorrt.keys import default_settings

    from ...doubles.gpu_host import install

    install(monkeypatch, version)
    config = ModelRepository(repo).get("qat")
    x = np.random.default_rng(1).random((2, 3, 256, 256), dtype=np.float32)
    for precision, source in (("int8", repo / "qat" / "model.qat.onnx"), ("fp32", config.onnx_path)):
        result = build_engine(config, default_settings(config, precision))
        assert result.path.onnx == source
        assert result.path.quantization == ("explicit" if precision == "int8" else "none")
        with Detector.open(config, precision, backend="tensorrt") as detector:
            out = detector.backend.infer({"images": x})["output0"]
        want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)
