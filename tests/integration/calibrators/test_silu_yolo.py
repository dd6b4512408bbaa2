"""The SiLU test model (tests/fixtures/silu_yolo, an Ultralytics-layout dynamic export): the default calibration
meets the bar on held-out scenes, the head walk ignores the Shape ops, every SiLU runs integer on ONNX Runtime,
and the report says what stayed float (issue 19)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from calibrators.calibrate import prepare_model
from calibrators.graph import WEIGHTED_OPS, detection_head_nodes, plan_quantization
from trtserve.calibration.frames import FrameSource
from trtserve.calibration.report import CalibrationReport, LayerCount
from trtserve.calibration.run import run_calibration
from trtserve.config import load_model_config
from trtserve.datasets.synthetic import CALIBRATION_SEED, render_scene, write_coco

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "silu_yolo"
CALIBRATION_FRAMES = 64
EVAL_IMAGES = 100  # held-out scenes (the bench scores 300)
FINAL_CONVS = {f"/cv{b}.{level}/cv{b}.{level}.2/Conv" for b in (2, 3) for level in range(3)}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CalibrationReport]:
    root = tmp_path_factory.mktemp("silu")
    folder = root / "repo" / "silu_yolo"
    shutil.copytree(FIXTURE, folder)
    frames = root / "frames"
    write_coco([render_scene(CALIBRATION_SEED, i) for i in range(CALIBRATION_FRAMES)], frames)
    config = load_model_config(folder / "model.yaml")
    report = run_calibration(config, FrameSource.from_images(frames, CALIBRATION_FRAMES), progress=False,
                             evaluate_images=EVAL_IMAGES)  # the default method
    return folder, report


def test_the_fixture_is_a_dynamic_ultralytics_style_export() -> None:
    model = onnx.load(str(FIXTURE / "model.onnx"))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Sigmoid"] >= 50 and ops["Mul"] >= 50  # SiLU as Sigmoid * Mul
    assert ops["Shape"] >= 3 and ops["Range"] >= 3 and ops["Softmax"] == 1  # anchors from shapes; DFL
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3]))  # batch, height and width symbolic
    assert (FIXTURE / "model.onnx").stat().st_size < 2.5e6


def test_the_head_walk_keeps_only_the_final_convs_and_the_dfl_float() -> None:
    model = prepare_model(FIXTURE / "model.onnx")
    ops = {n.name: n.op_type for n in model.graph.node}
    head = detection_head_nodes(model)
    weighted = {n for n in head if ops[n] in WEIGHTED_OPS}
    # the neck's last convs feed the anchors' Shape ops too; they stay quantized
    assert weighted == FINAL_CONVS | {"/dfl/conv/Conv"}
    assert LayerCount.of(model, plan_quantization(model, "onnxruntime")).describe() == (
        "kept float: 7 of 64 weighted layers (+ post-processing)")


def test_the_bundled_model_reports_its_weighted_layers() -> None:
    model = prepare_model(ROOT / "engines" / "shapes" / "model.onnx")
    assert LayerCount.of(model, plan_quantization(model, "onnxruntime")).describe() == (
        "kept float: 6 of 46 weighted layers (+ post-processing)")


def test_the_default_calibration_meets_the_bar_on_held_out_scenes(calibrated: tuple[Path, CalibrationReport]
                                                                  ) -> None:
    _, report = calibrated
    e = report.evaluation
    assert e is not None and e.images == EVAL_IMAGES
    assert e.map50_95_fp32 > 0.3  # a trained detector, not noise
    assert e.map50_95_fp32 - e.map50_95_int8 <= 0.010, e  # at most 1.0 point of mAP50-95
    assert e.agreement_f1 >= 0.95, e
    choice = report.method_choice
    assert report.method == "auto" and choice is not None
    assert choice["chosen"] in choice["agreement"] and choice["reason"]  # type: ignore[operator]
    extra = choice["auto_exclude"]["excluded"] if choice["auto_exclude"] else []  # type: ignore[index]
    assert f"kept float: {7 + len(extra)} of 64 weighted layers (+ post-processing)" in report.summary()
    assert f"auto -> {choice['chosen']}" in report.summary()
    written = report.as_dict()
    assert written["method_choice"]["chosen"] == choice["chosen"]
    layers = written["weighted_layers"]
    assert layers["total"] == 64 and layers["quantized"] + layers["kept_float"] == 64 and layers["kept_float"] >= 7


def test_every_silu_outside_the_head_runs_integer_on_onnx_runtime(calibrated: tuple[Path, CalibrationReport],
                                                                  tmp_path: Path) -> None:
    folder, report = calibrated
    layers = report.weighted_layers
    assert layers is not None
    model = prepare_model(folder / "model.onnx")
    excluded = set(report.excluded)
    quantized_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Conv" and n.name not in excluded}
    silus = [n for n in model.graph.node if n.op_type == "Sigmoid" and n.input[0] in quantized_outputs]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(folder / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    # every quantized layer became an integer convolution; the float ones (the head's final convs, the DFL) stay
    assert ops["QLinearConv"] == layers.quantized and ops["Conv"] == layers.kept_float
    # every SiLU of a quantized layer became QLinearSigmoid -> QLinearMul: no float Sigmoid / Mul pass is left
    # for them (the float Sigmoids left are the class scores' and those after layers kept float)
    assert len(silus) >= 50 and ops["QLinearSigmoid"] == len(silus) and ops["QLinearMul"] >= len(silus)
    float_sigmoids = ops["Sigmoid"] + ops["QuickGelu"]  # ORT fuses a float x * Sigmoid(x) into QuickGelu
    assert float_sigmoids == sum(1 for n in model.graph.node if n.op_type == "Sigmoid") - len(silus)
    # the TensorRT placement is unchanged: no Q/DQ on a Sigmoid output (TensorRT fuses the SiLU into the conv)
    trt = onnx.load(str(folder / "model.int8.tensorrt.onnx"))
    sigmoid_outputs = {o for n in trt.graph.node if n.op_type == "Sigmoid" for o in n.output}
    assert not [n for n in trt.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in sigmoid_outputs]
