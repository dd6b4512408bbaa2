"""Real exporters' quirks: nodes without names, weights stored as Constant nodes (no initializers at all)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from calibrators.calibrate import calibrate, prepare_model
from calibrators.graph import plan_quantization
from calibrators.names import unique_node_names
from calibrators.qdq import write_qdq
from trtserve.config import load_model_config
from trtserve.datasets.synthetic import CALIBRATION_SEED, render_scene
from trtserve.vision.preprocess import Preprocessor

from ...conftest import ENGINES

MODEL = ENGINES / "shapes" / "model.onnx"


def frames_batches(count: int = 8, batch: int = 4) -> list[dict[str, np.ndarray]]:
    pre = Preprocessor(load_model_config(ENGINES / "shapes" / "model.yaml").input)
    images = [render_scene(CALIBRATION_SEED, i).image_bgr for i in range(count)]
    return [{"images": pre.batch(images[i : i + batch])[0]} for i in range(0, count, batch)]


def unnamed(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto.FromString(model.SerializeToString())
    for node in out.graph.node:
        node.name = ""
    return out


def constant_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same network with every initializer turned into a Constant node (as some exporters write it)."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    constants = [helper.make_node("Constant", [], [i.name], name=f"const_{k}", value=i)
                 for k, i in enumerate(out.graph.initializer)]
    nodes = [*constants, *out.graph.node]
    del out.graph.initializer[:]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def qdq_counts(model: onnx.ModelProto) -> tuple[int, int]:
    """(activation QuantizeLinear nodes, weight DequantizeLinear nodes reading int8 initializers)."""
    inits = {i.name for i in model.graph.initializer}
    acts = sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
    weights = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                  and any(a.name == "axis" for a in n.attribute))
    return acts, weights


def run(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [session.run(None, f)[0] for f in feeds]


def int8_model(source: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> tuple[onnx.ModelProto, object]:
    proto = prepare_model(source)
    result = calibrate(proto, feeds, "entropy", profile="onnxruntime")
    plan = plan_quantization(proto, "onnxruntime")
    return write_qdq(proto, plan, result.amax(), result.nonnegative()), result


def test_unnamed_nodes_get_stable_unique_names() -> None:
    model = unnamed(onnx.load(str(MODEL)))
    clash = f"{model.graph.node[1].op_type}_1"
    model.graph.node[3].name = clash  # the name the scheme would give node 1: must not collide
    first, second = onnx.ModelProto.FromString(model.SerializeToString()), onnx.ModelProto.FromString(
        model.SerializeToString())
    changed = unique_node_names(first)
    unique_node_names(second)
    names = [n.name for n in first.graph.node]
    assert changed == len(names) - 1 and all(names) and len(set(names)) == len(names)
    assert names == [n.name for n in second.graph.node]  # deterministic
    assert names[3] == clash and names[1] == f"{clash}_1"  # an existing name is kept; the new one steps aside
    assert unique_node_names(first) == 0  # already unique: left as it is
    dup = onnx.ModelProto.FromString(MODEL.read_bytes())
    dup.graph.node[5].name = dup.graph.node[4].name  # repeated names are made unique too
    unique_node_names(dup)
    assert len({n.name for n in dup.graph.node}) == len(dup.graph.node)


def test_a_model_with_unnamed_nodes_is_quantized_like_the_named_one() -> None:
    feeds = frames_batches()
    named_q, named = int8_model(onnx.load(str(MODEL)), feeds)
    unnamed_q, result = int8_model(unnamed(onnx.load(str(MODEL))), feeds)
    assert len(result.ranges) == len(named.ranges) > 0  # type: ignore[attr-defined]
    assert len(result.plan.weighted_nodes) == len(named.plan.weighted_nodes) >= 40  # type: ignore[attr-defined]
    assert qdq_counts(unnamed_q) == qdq_counts(named_q) and qdq_counts(unnamed_q)[1] >= 40
    a, b = run(named_q, feeds), run(unnamed_q, feeds)
    assert all(np.allclose(x, y, atol=1e-5) for x, y in zip(a, b))  # the same quantized network


def test_constant_weights_are_quantized_like_initializers() -> None:
    feeds = frames_batches()
    normal = onnx.load(str(MODEL))
    as_constants = constant_weights(normal)
    assert len(as_constants.graph.initializer) == 0
    fp32 = run(normal, feeds)
    assert all(np.array_equal(x, y) for x, y in zip(fp32, run(as_constants, feeds)))  # the same network
    normal_q, normal_result = int8_model(normal, feeds)
    const_q, const_result = int8_model(as_constants, feeds)
    acts, weights = qdq_counts(const_q)
    assert weights == len(const_result.plan.weighted_nodes) == qdq_counts(normal_q)[1] >= 40  # type: ignore[attr-defined]
    assert acts == qdq_counts(normal_q)[0]
    assert const_result.amax() == normal_result.amax()  # type: ignore[attr-defined]
    int8_normal, int8_const = run(normal_q, feeds), run(const_q, feeds)
    for x, y, ref in zip(int8_normal, int8_const, fp32):
        assert np.allclose(x, y, atol=1e-5)  # the same detections as the normal path
        cosine = float((y * ref).sum() / (np.linalg.norm(y) * np.linalg.norm(ref)))
        assert cosine > 0.99  # and INT8 still agrees with FP32


def test_constant_nodes_of_every_kind_become_initializers() -> None:
    from calibrators.fold import constants_to_initializers

    nodes = [helper.make_node("Constant", [], ["a"], value=numpy_helper.from_array(np.ones((2, 2), np.float32))),
             helper.make_node("Constant", [], ["b"], value_float=2.0),
             helper.make_node("Constant", [], ["c"], value_ints=[1, 2]),
             helper.make_node("Add", ["x", "a"], ["s"]), helper.make_node("Mul", ["s", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2]),
                               helper.make_tensor_value_info("c", onnx.TensorProto.INT64, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert constants_to_initializers(model) == 2  # 'c' is a graph output: it stays a node
    assert sorted(i.name for i in model.graph.initializer) == ["a", "b"]
    onnx.checker.check_model(model)
    y = run(model, [{"x": np.ones((2, 2), np.float32)}])[0]
    assert np.array_equal(y, np.full((2, 2), 4.0, np.float32))
