"""Calibration on small hand-built ONNX graphs with the quirks of real exports."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibrators.calibrate import calibrate, prepare_model
from calibrators.qdq import write_qdq


def residual_model(opset: int = 11, batch: int | str = "N", nhwc: bool = False,
                   initializers_as_inputs: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w2")
    w3 = numpy_helper.from_array(rng.normal(0, 0.3, (2, 4, 1, 1)).astype(np.float32), "w3")
    nodes = []
    shape = [batch, 8, 8, 3] if nhwc else [batch, 3, 8, 8]
    x = "x"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes += [
        helper.make_node("Conv", [x, "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["r1", "c2"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="head_conv"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    if initializers_as_inputs:
        inputs += [helper.make_tensor_value_info(w.name, TensorProto.FLOAT, list(w.dims)) for w in (w1, w2, w3)]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2, 8, 8])
    graph = helper.make_graph(nodes, "g", inputs, [output], [w1, w2, w3])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def feeds(n: int, batch: int, nhwc: bool = False):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    for _ in range(n):
        x = rng.uniform(0, 1, (batch, 8, 8, 3) if nhwc else (batch, 3, 8, 8)).astype(np.float32)
        yield {"x": x}


@pytest.mark.parametrize("kwargs", [
    {"opset": 11},
    {"opset": 13, "batch": 1},
    {"opset": 17, "nhwc": True},
    {"opset": 12, "initializers_as_inputs": True},
])
def test_quirky_models_calibrate_and_run(kwargs: dict) -> None:
    model = residual_model(**kwargs)
    batch = 1 if kwargs.get("batch") == 1 else 2
    result = calibrate(model, feeds(3, batch, kwargs.get("nhwc", False)), "entropy")
    assert set(result.plan.weighted_nodes) == {"conv1", "conv2"}  # head_conv feeds the output: float
    assert result.plan.reasons["head_conv"] == "final output conv of the detection head"
    # TensorRT rules: conv inputs and the residual's skip input; not conv2's output
    assert set(result.plan.activations) == {"x_nchw" if kwargs.get("nhwc") else "x", "r1"}
    prepared = prepare_model(model)
    qdq = write_qdq(prepared, result.plan, result.amax())
    assert max(o.version for o in qdq.opset_import if o.domain in ("", "ai.onnx")) >= 13
    x = next(feeds(1, batch, kwargs.get("nhwc", False)))
    ref = ort.InferenceSession(prepared.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    got = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    cosine = float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref))
    assert cosine > 0.99 and np.abs(got - ref).max() < 0.15 * np.abs(ref).max()
    axes = {n.name: [a.i for a in n.attribute if a.name == "axis"] for n in qdq.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0].endswith("_weight_int8")}
    assert sorted(axes.values()) == [[0], [0]]  # per output channel for Conv


def test_nan_in_an_activation_names_the_tensor() -> None:
    bad = ({"x": np.full((1, 3, 8, 8), np.nan, np.float32)} for _ in range(1))
    with pytest.raises(ValueError, match="tensor 'x' in calibration batch 1: tensor contains NaN or infinity"):
        calibrate(residual_model(13), bad)


def test_unknown_excluded_node_is_named() -> None:
    with pytest.raises(ValueError, match=r"excluded nodes \['conv9'\] are not in the model"):
        calibrate(residual_model(13), feeds(1, 1), exclude_nodes=["conv9"])


def test_auto_exclude_keeps_the_most_sensitive_layers_float() -> None:
    from calibrators.sensitivity import auto_exclude, cosine_agreement

    model = prepare_model(residual_model(13))
    result = calibrate(model, feeds(4, 2), "entropy", profile="onnxruntime")
    batches = list(feeds(2, 2))
    met = auto_exclude(model, result, batches, cosine_agreement, target=0.5)
    assert met.excluded == () and met.agreement_after == met.agreement_before >= 0.5
    strict = auto_exclude(model, result, batches, cosine_agreement, target=1.0)
    assert set(strict.excluded) <= {"conv1", "conv2"} and strict.excluded  # it tried, most sensitive first
    assert set(strict.sensitivity) == {"conv1", "conv2"}
    first = strict.excluded[0]
    assert strict.sensitivity[first] == max(strict.sensitivity.values())
    with pytest.raises(ValueError, match="outside"):
        auto_exclude(model, result, batches, cosine_agreement, target=0.0)
