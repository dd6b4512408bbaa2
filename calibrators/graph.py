"""Which tensors of an ONNX graph get quantized, per target runtime, and which nodes stay in float.

Placement profiles:

* ``tensorrt`` — TensorRT's rules for explicit quantization: the inputs of weighted ops (Conv,
  ConvTranspose, Gemm, MatMul) — activations per tensor, weights per channel — and both inputs of
  residual Adds (the skip input; an input straight out of a conv is fused into it by TensorRT);
  never the outputs of weighted ops.
* ``onnxruntime`` — the same, plus the outputs of the quantized weighted ops (after a directly
  following Relu, which ORT folds in), because ONNX Runtime's CPU provider turns DQ -> Conv -> Q
  into an integer convolution only when the output is quantized too. Where such an output feeds a
  float head conv, that conv reads the dequantized tensor: its weights and arithmetic stay float.

By default the detection head stays in float: walking back from each graph output through
non-weighted ops (Sigmoid, Concat, Reshape, Softmax, DFL decode), every weighted op met is a final
output conv and is excluded, as are the nodes walked through. A ``Shape`` (or ``Size``) node is walked into but
not through: it reads only its input's shape, so the layer whose shape it reads (in a dynamic Ultralytics
export, the neck's last convs, whose feature-map sizes give the anchors) is not part of the head.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# ops that read only their input's shape: walking back through one does not make the producer of that input
# part of the head (Ultralytics computes anchors from the feature maps' shapes in a dynamic export)
SHAPE_OPS = ("Shape", "Size")
PROFILES = ("tensorrt", "onnxruntime")


@dataclass(frozen=True)
class Plan:
    """What to quantize: activation tensors (per tensor) and weighted nodes (weights per channel)."""

    profile: str
    activations: tuple[str, ...]
    weighted_nodes: tuple[str, ...]
    excluded_nodes: tuple[str, ...]
    reasons: dict[str, str] = field(default_factory=dict)  # excluded node -> why


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def detection_head_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Nodes of the detection head (node name -> reason), found by walking back from the outputs."""
    graph = model.graph
    producers = _producers(graph)
    initializers = {i.name for i in graph.initializer}
    head: dict[str, str] = {}
    stack = [o.name for o in graph.output]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        node = producers.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in SHAPE_OPS:
            head[node.name] = f"detection head post-processing ({node.op_type}, shape only)"
            continue
        if node.op_type in WEIGHTED_OPS:
            weight = _initializer_dims(model, node.input[1]) if len(node.input) > 1 else None
            if weight is not None and len(weight) == 4 and weight[0] == 1:
                head[node.name] = "box decode (DFL-style single-output conv)"
                stack.extend(i for i in node.input if i not in initializers)
                continue
            head[node.name] = "final output conv of the detection head"
            continue
        head[node.name] = f"detection head post-processing ({node.op_type})"
        stack.extend(i for i in node.input if i not in initializers)
    return head


def _initializer_dims(model: onnx.ModelProto, name: str) -> list[int] | None:
    for init in model.graph.initializer:
        if init.name == name:
            return list(init.dims)
    return None


def plan_quantization(model: onnx.ModelProto, profile: str = "tensorrt", keep_head_float: bool = True,
                      exclude_nodes: Iterable[str] = (), exclude_op_types: Iterable[str] = ()) -> Plan:
    """Decide which activations and weighted nodes to quantize. Unknown names raise ValueError."""
    if profile not in PROFILES:
        raise ValueError(f"unknown placement profile {profile!r}; expected one of {list(PROFILES)}")
    graph = model.graph
    names = {n.name for n in graph.node}
    unknown = sorted(set(exclude_nodes) - names)
    if unknown:
        raise ValueError(f"excluded nodes {unknown} are not in the model; node names look like "
                         f"{sorted(names)[:3]}")
    initializers = {i.name for i in graph.initializer}
    excluded: dict[str, str] = detection_head_nodes(model) if keep_head_float else {}
    excluded.update({n: "excluded by configuration" for n in exclude_nodes})
    op_types = set(exclude_op_types)
    excluded.update({n.name: f"op type {n.op_type} excluded by configuration"
                     for n in graph.node if n.op_type in op_types})
    producers = _producers(graph)
    consumers = _consumers(graph)
    activations: list[str] = []
    weighted: list[str] = []

    def add(tensor: str) -> None:
        if tensor not in activations and tensor not in initializers:
            activations.append(tensor)

    for node in graph.node:
        if node.name in excluded:
            continue
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in initializers:
            weighted.append(node.name)
            add(node.input[0])
            if profile == "onnxruntime":
                out = node.output[0]
                nxt = consumers.get(out, [])
                if len(nxt) == 1 and nxt[0].op_type == "Relu" and nxt[0].name not in excluded:
                    out = nxt[0].output[0]
                add(out)
        elif node.op_type == "Add" and all(i not in initializers and i in producers for i in node.input):
            # A residual Add: its inputs, so it runs in INT8 -- except an input straight out of a
            # weighted op, which TensorRT fuses into that conv (no Q/DQ on weighted-op outputs).
            for i in node.input:
                if profile == "onnxruntime" or producers[i].op_type not in WEIGHTED_OPS:
                    add(i)
    if profile == "onnxruntime":  # SiLU, data movement, Concat and Add in uint8 (see calibrators.ort_placement)
        from calibrators.ort_placement import integer_paths

        activations = integer_paths(graph, activations, excluded, initializers)
    graph_outputs = {o.name for o in graph.output}
    activations = [a for a in activations if a not in graph_outputs]
    return Plan(profile, tuple(activations), tuple(weighted), tuple(sorted(excluded)), excluded)
