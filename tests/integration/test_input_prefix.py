"""Normalization inside the model (trtserve.backends.input_prefix): the uint8-input path gives the detections the
float path gives, on the bundled detector at FP32 and INT8, and the FP32 drift shadow is fed what it expects.
Real ONNX Runtime, real models."""

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from trtserve.backends.input_prefix import InputPrefix, with_uint8_input
from trtserve.config import DriftSpec, InputSpec
from trtserve.datasets.synthetic import evaluation_set, video_frames
from trtserve.detector import Detector
from trtserve.monitoring.drift import DriftMonitor
from trtserve.monitoring.metrics import Metrics
from trtserve.repository import ModelRepository
from trtserve.vision.preprocess import Preprocessor

from ..conftest import ENGINES


def _frames() -> list[np.ndarray]:
    return [s.image_bgr for s in video_frames(6)] + [s.image_bgr for s in evaluation_set(6)]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_uint8_input_path_gives_the_float_paths_detections(precision: str) -> None:
    config = ModelRepository(ENGINES).get("shapes")
    frames = _frames()
    with Detector.open(config, precision) as floating, \
            Detector.open(config, precision, normalize_in_model=True) as folded:
        info = folded.backend.inputs[0]
        assert info.name == floating.input_name and info.dtype == np.uint8 and info.shape == (None, 256, 256, 3)
        assert not floating.preprocessor.in_model and folded.preprocessor.in_model
        expected, got = floating.detect(frames), folded.detect(frames)
        images, _ = floating.preprocessor.batch(frames[:8])
        raw_float = floating.infer_tensor(images)
        staged, _ = folded.preprocessor.letterbox_batch(frames[:8])
        raw_uint8 = folded.infer_tensor(folded.preprocessor.to_input(staged))
    for name, value in raw_float.items():
        np.testing.assert_allclose(raw_uint8[name], value, rtol=0, atol=1e-4)
    assert sum(len(r.detections or ()) for r in expected) > 20  # the comparison compares something
    for a, b in zip(expected, got):
        assert a.detections is not None and b.detections is not None
        np.testing.assert_array_equal(b.detections.class_ids, a.detections.class_ids)
        np.testing.assert_allclose(b.detections.boxes_xyxy, a.detections.boxes_xyxy, rtol=0, atol=1e-3)
        np.testing.assert_allclose(b.detections.scores, a.detections.scores, rtol=0, atol=1e-5)


def _identity_model(layout: str, h: int = 8, w: int = 10, opset: int = 17) -> onnx.ModelProto:
    shape = ["batch", 3, h, w] if layout == "nchw" else ["batch", h, w, 3]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("color_order", ["rgb", "bgr"])
@pytest.mark.parametrize("normalization", ["yolo", "imagenet"])
@pytest.mark.parametrize("dequantize", [True, False])
def test_every_prefix_computes_what_the_preprocessor_computes(layout: str, color_order: str, normalization: str,
                                                              dequantize: bool) -> None:
    spec = InputSpec(name=None, layout=layout, height_px=8, width_px=10, color_order=color_order,
                     scale=1 / 255, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pad_value=114)
    if normalization == "imagenet":  # a mean no DequantizeLinear zero point can hold: the Conv / MatMul prefix
        spec = replace(spec, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    prefix = InputPrefix.from_spec(spec)
    assert (prefix.dequantize_zero_points() is not None) == (normalization == "yolo")
    model = with_uint8_input(_identity_model(layout), "x", prefix, dequantize=dequantize)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert ("DequantizeLinear" in ops) == (dequantize and normalization == "yolo")
    frames = np.random.default_rng(7).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": frames})[0]
    np.testing.assert_allclose(got, Preprocessor(spec).to_tensor(frames), rtol=1e-6, atol=1e-5)


def test_a_model_whose_input_cannot_take_the_prefix_is_refused_by_the_rewrite() -> None:
    spec = InputSpec(name=None, layout="nchw", height_px=8, width_px=10, color_order="rgb", scale=1 / 255,
                     mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pad_value=114)
    model = _identity_model("nchw")
    model.graph.input[0].type.tensor_type.shape.dim[2].ClearField("dim_value")
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    with pytest.raises(ValueError, match="dynamic height or width"):
        with_uint8_input(model, "x", InputPrefix.from_spec(spec))
    with pytest.raises(ValueError, match="no input"):
        with_uint8_input(_identity_model("nchw"), "images", InputPrefix.from_spec(spec))


def test_the_fp32_shadow_of_a_uint8_input_int8_model_agrees_as_with_float_input() -> None:
    config = ModelRepository(ENGINES).get("shapes")
    spec = DriftSpec(enabled=True, sample_rate=1.0, max_pending=8, min_window_frames=8)
    with Detector.open(config, "int8", normalize_in_model=True) as detector:
        prepared = [detector.prepare_letterboxed(f) for f in _frames()[:8]]
        images, geometries = [p[0] for p in prepared], [p[1] for p in prepared]
        thresholds = [detector.thresholds] * len(images)
        run = detector.run_batch(images, geometries, thresholds)
        assert run.tensor.dtype == np.uint8  # what the shadow receives
        monitor = DriftMonitor.open(detector, spec, Metrics(process=False))
        try:
            assert monitor.offer(run, geometries, thresholds)
            assert monitor.wait_idle(60)
            summary = monitor.summary()
        finally:
            monitor.close()
    assert summary.samples == 8 and summary.errors == 0
    assert summary.agreement_f1 > 0.9  # INT8 against FP32 on the same frames (0.98 on the held-out set)
    assert summary.out_of_range_ratio < 0.01  # the shadow's input is the normalized float tensor again
