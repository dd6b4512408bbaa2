"""The onnxruntime placement on SiLU graphs, the uint8 ranges, and the head walk through Shape ops (issue 19)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibrators.calibrate import calibrate, prepare_model
from calibrators.graph import detection_head_nodes, plan_quantization
from calibrators.qdq import activation_quantization, write_qdq
from calibrators.sensitivity import choose_ranges, cosine_agreement, minimum_of


def silu(nodes: list[onnx.NodeProto], x: str, name: str) -> str:
    nodes.append(helper.make_node("Sigmoid", [x], [f"{name}_sig"], name=f"{name}_sigmoid"))
    nodes.append(helper.make_node("Mul", [x, f"{name}_sig"], [f"{name}_out"], name=f"{name}_mul"))
    return f"{name}_out"


def silu_model(anchors_from_shape: bool) -> onnx.ModelProto:
    """conv -> SiLU -> split -> conv -> SiLU -> concat -> conv(neck) -> SiLU -> final conv -> output, and (when
    ``anchors_from_shape``) a second output computed from the neck's feature-map shape, as Ultralytics does."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, s).astype(np.float32), n) for n, s in (
        ("w1", (8, 3, 3, 3)), ("w2", (4, 4, 3, 3)), ("w3", (8, 8, 1, 1)), ("w4", (6, 8, 1, 1)))]
    inits.append(numpy_helper.from_array(np.array([4, 4], np.int64), "split_sizes"))
    nodes: list[onnx.NodeProto] = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    s1 = silu(nodes, "c1", "act1")
    nodes.append(helper.make_node("Split", [s1, "split_sizes"], ["a", "b"], name="split", axis=1))
    nodes.append(helper.make_node("Conv", ["b", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]))
    s2 = silu(nodes, "c2", "act2")
    nodes.append(helper.make_node("Concat", ["a", s2], ["cat"], name="concat", axis=1))
    nodes.append(helper.make_node("Conv", ["cat", "w3"], ["c3"], name="neck_conv"))
    s3 = silu(nodes, "c3", "neck_act")
    nodes.append(helper.make_node("Conv", [s3, "w4"], ["y"], name="final_conv"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8])]
    if anchors_from_shape:
        inits.append(numpy_helper.from_array(np.array([3], np.int64), "idx"))
        inits.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
        inits.append(numpy_helper.from_array(np.array(1, np.int64), "one"))
        nodes += [helper.make_node("Shape", [s3], ["shape"], name="feature_shape"),
                  helper.make_node("Gather", ["shape", "idx"], ["w_dim"], name="width", axis=0),
                  helper.make_node("Squeeze", ["w_dim"], ["w_scalar"], name="width_scalar"),
                  helper.make_node("Range", ["zero", "w_scalar", "one"], ["grid"], name="grid_x"),
                  helper.make_node("Cast", ["grid"], ["anchors"], name="anchors_float", to=TensorProto.FLOAT)]
        outputs.append(helper.make_tensor_value_info("anchors", TensorProto.FLOAT, [None]))
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def feeds(n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def test_a_shape_consumer_does_not_pull_its_producer_into_the_head() -> None:
    static = detection_head_nodes(silu_model(anchors_from_shape=False))
    dynamic = detection_head_nodes(silu_model(anchors_from_shape=True))
    assert [n for n in static if n.endswith("conv")] == ["final_conv"]
    # the anchors read the neck's shape only: the neck conv and its SiLU stay quantizable
    assert [n for n in dynamic if n.endswith("conv")] == ["final_conv"]
    assert not {"neck_conv", "neck_act_sigmoid", "neck_act_mul"} & set(dynamic)
    assert "feature_shape" in dynamic and "Shape" in dynamic["feature_shape"]
    plan = plan_quantization(silu_model(anchors_from_shape=True), "tensorrt")
    assert "neck_conv" in plan.weighted_nodes and "final_conv" not in plan.weighted_nodes


def test_every_silu_runs_integer_on_onnx_runtime(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = prepare_model(silu_model(anchors_from_shape=True))
    result = calibrate(model, feeds(), "entropy", profile="onnxruntime")
    plan = result.plan
    # the Sigmoid and Mul outputs of each quantized SiLU, the Split outputs and the Concat inputs get Q/DQ
    assert {"act1_sig", "act1_out", "act2_sig", "act2_out", "a", "b", "neck_act_sig", "neck_act_out"} <= set(
        plan.activations)
    qdq = write_qdq(model, plan, result.amax(), result.nonnegative(), minimum_of(result))
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    assert inits["act1_sig_scale"] == np.float32(1 / 255) and inits["act1_sig_zero_point"] == 0  # exactly (0, 1)
    for half in ("a", "b"):  # a Split output keeps its input's grid: uint8 in, uint8 out, no rounding
        assert inits[f"{half}_scale"] == inits["act1_out_scale"]
        assert inits[f"{half}_zero_point"] == inits["act1_out_zero_point"]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    session = ort.InferenceSession(qdq.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    # ONNX Runtime fused every SiLU into uint8 kernels: none of the float Sigmoid / Mul / DQ passes is left
    assert ops.count("QLinearSigmoid") == 3 and ops.count("QLinearMul") == 3 and ops.count("QLinearConv") == 3
    assert "Sigmoid" not in ops and "Mul" not in ops and "QLinearConcat" in ops
    fp32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = feeds(1)[0]
    got, want = session.run(None, batch)[0], fp32.run(None, batch)[0]
    assert cosine_agreement([want], [got]) > 0.98


def test_uint8_ranges_follow_the_values_seen() -> None:
    # a SiLU output never goes below -0.2785: its 256 levels span [-0.2785, amax], not [-amax, amax]
    scale, zero = activation_quantization(6.0, "onnxruntime", False, -0.2785)
    assert scale == pytest.approx((6.0 + 0.2785) / 255) and zero.dtype == np.uint8 and int(zero) == 11
    assert scale < 6.0 / 127 / 1.9  # about twice the resolution of the symmetric grid
    # never negative (ReLU): zero point 0, amax / 255, as before
    scale, zero = activation_quantization(6.0, "onnxruntime", True, 0.0)
    assert (scale, int(zero)) == (pytest.approx(6.0 / 255), 0)
    # a minimum below -amax is clipped to the symmetric grid; TensorRT's stays int8, zero point 0, amax / 127
    assert int(activation_quantization(6.0, "onnxruntime", False, -50.0)[1]) == 128
    scale, zero = activation_quantization(6.0, "tensorrt", False, -0.2785)
    assert scale == pytest.approx(6.0 / 127) and zero.dtype == np.int8 and int(zero) == 0


def test_auto_reports_every_candidate_and_falls_back_to_keeping_layers_float() -> None:
    model = prepare_model(silu_model(anchors_from_shape=False))
    batches = feeds()
    result = calibrate(model, batches, "auto", profile="onnxruntime")
    candidates = ["entropy", "percentile 99.99", "percentile 99.999", "minmax"]
    assert list(next(iter(result.alternatives.values()))) == candidates
    met = choose_ranges(model, result, batches, cosine_agreement, target=0.5)
    assert met.method == "entropy" and met.excluded == () and met.agreement["entropy"] >= 0.5
    assert list(met.agreement) == ["entropy"] and ">= target" in met.reason
    # an unreachable target: both candidates are measured, the better is kept and layers stay float
    strict = choose_ranges(model, result, batches, cosine_agreement, target=1.0)
    assert list(strict.agreement) == candidates
    assert strict.method == max(strict.agreement, key=lambda m: strict.agreement[m])
    assert strict.excluded and strict.reason.startswith("no method reached the target")
    assert strict.as_dict()["auto_exclude"] is not None
    with pytest.raises(ValueError, match="method 'auto'"):
        choose_ranges(model, calibrate(model, batches, "entropy", profile="onnxruntime"), batches,
                      cosine_agreement, 0.5)
