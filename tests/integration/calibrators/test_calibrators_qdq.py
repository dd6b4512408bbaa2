"""Calibrate the bundled detector on a few frames and check the Q/DQ models it writes (ONNX Runtime CPU)."""

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from calibrators.calibrate import CalibrationResult, calibrate, prepare_model
from calibrators.graph import WEIGHTED_OPS
from calibrators.qdq import write_qdq
from trtserve.datasets.synthetic import CALIBRATION_SEED, render_scene
from trtserve.vision.preprocess import Preprocessor

from ...conftest import ENGINES

MODEL = ENGINES / "shapes" / "model.onnx"


def feeds(preprocessor: Preprocessor, count: int = 16, batch: int = 4) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, count, batch):
        scenes = [render_scene(CALIBRATION_SEED, i) for i in range(start, start + batch)]
        tensor, _ = preprocessor.batch([s.image_bgr for s in scenes])
        yield {"images": tensor}


@pytest.fixture(scope="module")
def preprocessor(repository) -> Preprocessor:  # type: ignore[no-untyped-def]
    return Preprocessor(repository.get("shapes").input)


@pytest.fixture(scope="module")
def calibrated(preprocessor: Preprocessor) -> dict[str, CalibrationResult]:
    return {p: calibrate(MODEL, feeds(preprocessor), "entropy", profile=p) for p in ("tensorrt", "onnxruntime")}


def test_onnxruntime_profile_becomes_integer_kernels(calibrated: dict[str, CalibrationResult],
                                                     tmp_path: Path) -> None:
    result = calibrated["onnxruntime"]
    qdq = write_qdq(prepare_model(MODEL), result.plan, result.amax(), result.nonnegative())
    zero_points = {i.name: i for i in qdq.graph.initializer if i.name.endswith("_zero_point")
                   and not i.name.endswith("_weight_zero_point")}
    assert {z.data_type for z in zero_points.values()} == {onnx.TensorProto.UINT8}
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(qdq.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    # every quantized conv whose output is quantized too became an integer conv (the others feed the
    # float head convs, whose inputs stay float)
    consumers = {i: n for n in qdq.graph.node for i in n.input}
    activations = set(result.plan.activations)
    fused = [n for n in qdq.graph.node if n.name in result.plan.weighted_nodes
             and (n.output[0] in activations or consumers[n.output[0]].output[0] in activations)]
    assert len(fused) >= 30
    assert ops["QLinearConv"] == len(fused)
    assert ops["QLinearAdd"] > 0


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


@pytest.mark.parametrize("profile", ["tensorrt", "onnxruntime"])
def test_qdq_model_runs_and_agrees_with_fp32(calibrated: dict[str, CalibrationResult], profile: str,
                                             preprocessor: Preprocessor) -> None:
    result = calibrated[profile]
    fp32 = prepare_model(MODEL)
    qdq = write_qdq(fp32, result.plan, result.amax(), result.nonnegative())
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("QuantizeLinear") == len(result.plan.activations)
    assert ops.count("DequantizeLinear") == len(result.plan.activations) + len(result.plan.weighted_nodes)
    assert result.samples == 16 and result.batches == 4
    x = next(feeds(preprocessor, 8, 8))["images"]
    a, b = run(fp32, x), run(qdq, x)
    cosine = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert cosine > 0.99
    # class scores stay close (16 calibration frames only; held-out accuracy is checked in test_cli)
    assert np.abs(a[:, 4:] - b[:, 4:]).max() < 0.35


def test_tensorrt_profile_follows_tensorrt_rules(calibrated: dict[str, CalibrationResult]) -> None:
    result = calibrated["tensorrt"]
    qdq = write_qdq(prepare_model(MODEL), result.plan, result.amax())
    producers = {o: n for n in qdq.graph.node for o in n.output}
    for node in qdq.graph.node:
        if node.op_type == "QuantizeLinear":  # never the output of a weighted op
            assert producers.get(node.input[0]) is None or producers[node.input[0]].op_type not in WEIGHTED_OPS
        if node.name in result.plan.weighted_nodes:
            assert producers[node.input[0]].op_type == "DequantizeLinear"
            assert producers[node.input[1]].op_type == "DequantizeLinear"
    head_convs = [n for n, why in result.plan.reasons.items() if why.startswith("final output conv")]
    assert len(head_convs) == 6  # box and class output convs of three levels stay float
    for node in qdq.graph.node:
        if node.name in head_convs:
            assert producers[node.input[0]].op_type != "DequantizeLinear"
    weights = [i for i in qdq.graph.initializer if i.name.endswith("_weight_int8")]
    assert len(weights) == len(result.plan.weighted_nodes)
    assert all(w.data_type == onnx.TensorProto.INT8 for w in weights)


def test_empty_or_mismatched_feeds_are_rejected() -> None:
    with pytest.raises(ValueError, match="feeds were empty"):
        calibrate(MODEL, [])
    with pytest.raises(ValueError, match="the model expects"):
        calibrate(MODEL, [{"pixels": np.zeros((1, 3, 256, 256), np.float32)}])
