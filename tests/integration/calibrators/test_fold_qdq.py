"""Folding a pre-quantized (Q/DQ) model back to FP32: what the drift shadow of a QAT model runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibrators.fold import NoFloatPathError, count_qdq, fold_qdq

from ..qat_models import FP32, preprocessed, quantized_bytes


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_an_onnxruntime_qdq_model_folds_back_to_its_fp32_network() -> None:
    qdq = onnx.ModelProto.FromString(quantized_bytes("QDQ"))
    result = fold_qdq(qdq, "model.qat.onnx")
    folded = result.model
    assert count_qdq(qdq) > 200 and count_qdq(folded) == 0
    assert result.weights_folded == 80 and result.activation_pairs_removed > 40  # 40 convs: weight and bias each
    # every tensor the quantized model quantizes is computed, under its name, by the folded model
    computed = {o for n in folded.graph.node for o in n.output} | {i.name for i in folded.graph.input}
    quantized = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"} - {
        i.name for i in qdq.graph.initializer}
    assert quantized and quantized <= computed
    batch = {"images": preprocessed(4)}
    fp32, int8, shadow = run(onnx.load(str(FP32)), batch)[0], run(qdq, batch)[0], run(folded, batch)[0]
    assert cosine(shadow, fp32) > 0.9999  # the FP32 network with the int8 grid's weights
    assert cosine(shadow, fp32) > cosine(int8, fp32)


def fake_quant_model(activation_qdq: bool) -> onnx.ModelProto:
    """ModelOpt / Brevitas style: float weights behind QuantizeLinear -> DequantizeLinear (one with a QCDQ Clip),
    activations Q/DQ'd, the graph output itself a DequantizeLinear's output."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array((np.abs(w1).reshape(4, -1).max(1) / 127).astype(np.float32), "w1_s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w1_z"),
             numpy_helper.from_array(np.float32(np.abs(w2).max() / 127), "w2_s"),
             numpy_helper.from_array(np.int8(0), "z"), numpy_helper.from_array(np.float32(1 / 127), "x_s"),
             numpy_helper.from_array(np.float32(4 / 127), "y_s"),
             numpy_helper.from_array(np.int8(-90), "lo"), numpy_helper.from_array(np.int8(90), "hi")]
    nodes = [helper.make_node("QuantizeLinear", ["w1", "w1_s", "w1_z"], ["w1_q"], name="w1_Q", axis=0),
             helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1_dq"], name="w1_DQ", axis=0),
             helper.make_node("QuantizeLinear", ["w2", "w2_s", "z"], ["w2_q"], name="w2_Q"),
             helper.make_node("Clip", ["w2_q", "lo", "hi"], ["w2_c"], name="w2_Clip"),
             helper.make_node("DequantizeLinear", ["w2_c", "w2_s", "z"], ["w2_dq"], name="w2_DQ")]
    x = "x"
    if activation_qdq:
        nodes += [helper.make_node("QuantizeLinear", ["x", "x_s", "z"], ["x_q"], name="x_Q"),
                  helper.make_node("DequantizeLinear", ["x_q", "x_s", "z"], ["x_dq"], name="x_DQ")]
        x = "x_dq"
    nodes += [helper.make_node("Conv", [x, "w1_dq"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
              helper.make_node("Conv", ["r1", "w2_dq"], ["y_pre" if activation_qdq else "y"], name="conv2")]
    if activation_qdq:
        nodes += [helper.make_node("QuantizeLinear", ["y_pre", "y_s", "z"], ["y_q"], name="y_Q"),
                  helper.make_node("DequantizeLinear", ["y_q", "y_s", "z"], ["y"], name="y_DQ")]
    graph = helper.make_graph(nodes, "fq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_float_weights_behind_q_dq_and_a_qcdq_clip_fold_to_what_the_runtime_computes() -> None:
    folded = fold_qdq(fake_quant_model(activation_qdq=True)).model
    assert count_qdq(folded) == 0 and not any(n.op_type == "Clip" for n in folded.graph.node)
    assert [o.name for o in folded.graph.output] == ["y"]  # the output keeps its name (an Identity now)
    weights_only = fake_quant_model(activation_qdq=False)  # ONNX Runtime evaluates the weights' Q(/Clip)/DQ itself
    x = {"x": np.random.default_rng(1).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)}
    assert np.allclose(run(folded, x)[0], run(weights_only, x)[0], atol=1e-6)
    w2 = next(numpy_helper.to_array(i) for i in folded.graph.initializer if i.name == "w2_dq")
    scale = np.abs(numpy_helper.to_array(next(i for i in weights_only.graph.initializer if i.name == "w2"))).max() / 127
    assert np.abs(w2).max() <= 90 * scale * (1 + 1e-6)  # the Clip's narrower integer range is kept


def test_integer_only_operators_have_no_float_path() -> None:
    qop = onnx.ModelProto.FromString(quantized_bytes("QOperator"))
    with pytest.raises(NoFloatPathError, match=r"^m\.onnx: node '.*' is QLinearConv, an integer-only operator.*"
                                               r"export the model in QDQ format.*point 'onnx:' at its FP32 export"):
        fold_qdq(qop, "m.onnx")


def test_integers_that_feed_anything_but_a_dequantize_have_no_float_path() -> None:
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="x_Q"),
             helper.make_node("Cast", ["q"], ["y"], name="to_float", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(NoFloatPathError, match=r"QuantizeLinear 'x_Q' feeds \['Cast'\] with integers"):
        fold_qdq(model, "m.onnx")
