"""Write an explicitly quantized (Q/DQ) ONNX model: symmetric int8, zero point 0, opset >= 13.

Activations: QuantizeLinear -> DequantizeLinear per tensor, scale = amax / 127. Weights: stored as
int8 per output channel (round half to even, clipped to [-127, 127]) behind a DequantizeLinear with
the channel axis (0 for Conv and Gemm with transB, 1 for ConvTranspose, Gemm without transB and
MatMul). Biases stay float. Runs on ONNX Runtime's CPU provider and builds on TensorRT 10/11.

The ``onnxruntime`` placement stores activations as uint8 over the range each tensor actually takes: from the
smallest value seen (never below -amax) to amax, so a SiLU output (never below -0.28) or a ReLU output (never
below 0) spends all 256 levels where its values are. A Sigmoid's output takes its exact range (0, 1); the
output of a data-movement op (Split, MaxPool, Resize, ...) takes its input's scale and zero point, so that
ONNX Runtime runs it on uint8 with no rounding (:mod:`calibrators.ort_placement`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from calibrators.graph import Plan
from calibrators.ort_placement import SCALE_PRESERVING_OPS

INT8_MAX = 127.0


def weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a weighted node's weight."""
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return 1
    return 0


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 weights and their float32 scales."""
    moved = np.moveaxis(w.astype(np.float64), axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(moved).max(axis=1)
    scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)  # half to even
    return q, scale


def activation_quantization(amax: float, profile: str, nonnegative: bool,
                            minimum: float | None = None) -> tuple[float, np.ndarray]:
    """Scale and zero point (as a 0-d array of the quantized type) of one activation tensor.

    ``tensorrt``: int8, zero point 0, scale amax/127 (TensorRT accepts nothing else). ``onnxruntime``:
    uint8, the type ONNX Runtime's x86 integer kernels are fastest with, over ``[lo, amax]`` where ``lo`` is
    ``minimum`` (the smallest value seen) clipped to ``[-amax, 0]``: a tensor never negative (a ReLU output)
    gets zero point 0 and scale amax/255 -- which also lets ORT drop the Relu and fuse DQ -> Conv -> Relu -> Q
    into one integer convolution --, a SiLU output about twice the resolution of a symmetric grid. Without
    ``minimum``: ``[-amax, amax]`` (zero point 128, the symmetric int8 grid shifted) unless ``nonnegative``.
    """
    if profile == "tensorrt":
        return amax / INT8_MAX, np.array(0, np.int8)
    lo = 0.0 if nonnegative else -amax if minimum is None else min(0.0, max(float(minimum), -amax))
    if lo == -amax:
        return amax / INT8_MAX, np.array(128, np.uint8)
    scale = (amax - lo) / 255.0
    return scale, np.array(int(np.clip(np.round(-lo / scale), 0, 255)), np.uint8)


def write_qdq(model: onnx.ModelProto, plan: Plan, amax: Mapping[str, float],
              nonnegative: frozenset[str] = frozenset(), minimum: Mapping[str, float] | None = None
              ) -> onnx.ModelProto:
    """A new model with Q/DQ inserted as ``plan`` says; ``amax`` must cover ``plan.activations``.

    ``nonnegative`` names tensors never negative on the calibration set, ``minimum`` gives each tensor's
    smallest value seen (both used by the onnxruntime profile only; see :func:`activation_quantization`).
    """
    missing = [t for t in plan.activations if t not in amax]
    if missing:
        raise ValueError(f"no calibrated range for tensors {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                         "calibrate with the same placement profile and exclusions")
    out = onnx.ModelProto.FromString(model.SerializeToString())
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    weighted = set(plan.weighted_nodes)
    excluded = set(plan.excluded_nodes)
    quantized_inputs = set(plan.activations)
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []

    producers = {name: node for node in graph.node for name in node.output}
    params: dict[str, tuple[float, np.ndarray]] = {}

    def quantization_of(tensor: str) -> tuple[float, np.ndarray]:
        if tensor in params:
            return params[tensor]
        node = producers.get(tensor)
        if plan.profile == "onnxruntime" and node is not None and node.op_type == "Sigmoid":
            found = (1.0 / 255.0, np.array(0, np.uint8))  # the exact range (0, 1) of a sigmoid
        elif (plan.profile == "onnxruntime" and node is not None and node.op_type in SCALE_PRESERVING_OPS
              and node.input and node.input[0] in quantized_inputs):
            found = quantization_of(node.input[0])  # same values as its input: same grid, run on uint8
        else:
            low = None if minimum is None else minimum.get(tensor)
            found = activation_quantization(amax[tensor], plan.profile, tensor in nonnegative, low)
        params[tensor] = found
        return found

    def activation_qdq(tensor: str) -> str:
        base = tensor.replace("/", "_").strip("_")
        scale_value, zero_point = quantization_of(tensor)
        scale = numpy_helper.from_array(np.array(scale_value, np.float32), f"{base}_scale")
        zero = numpy_helper.from_array(zero_point, f"{base}_zero_point")
        new_inits.extend([scale, zero])
        new_nodes.append(helper.make_node("QuantizeLinear", [tensor, scale.name, zero.name], [f"{base}_q"],
                                          name=f"{base}_QuantizeLinear"))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_q", scale.name, zero.name],
                                          [f"{base}_dq"], name=f"{base}_DequantizeLinear"))
        return f"{base}_dq"

    dq_of = {t: activation_qdq(t) for t in plan.activations}
    for node in graph.node:
        # onnxruntime: every consumer (excluded ones too) reads the Q/DQ copy; tensorrt: only the layers it runs
        # quantized (weighted ones, and an Add of two quantized activations), and none that is excluded
        if plan.profile != "onnxruntime" and (node.name in excluded or not (node.name in weighted or (
                node.op_type == "Add" and all(i not in inits for i in node.input)
                and any(i in quantized_inputs for i in node.input)))):
            continue
        for k, name in enumerate(node.input):
            if name in dq_of and not (node.name in weighted and k > 0):
                node.input[k] = dq_of[name]
        if node.name in weighted:
            w_name = node.input[1]
            w = numpy_helper.to_array(inits[w_name])
            axis = weight_axis(node)
            q, scale = quantize_weight(w, axis)
            base = f"{node.name.replace('/', '_').strip('_')}_weight"
            new_inits += [numpy_helper.from_array(q, f"{base}_int8"),
                          numpy_helper.from_array(scale, f"{base}_scale"),
                          numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point")]
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_int8", f"{base}_scale",
                                                                   f"{base}_zero_point"], [f"{base}_dq"],
                                              name=f"{base}_DequantizeLinear", axis=axis))
            node.input[1] = f"{base}_dq"
    # the float weights that were replaced are no longer used
    used = {i for n in list(graph.node) + new_nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    # Q/DQ nodes first keeps a valid topological order only after sorting; place each before its consumers
    ordered = _toposort(list(graph.node) + new_nodes, {i.name for i in graph.input} | {i.name for i in kept}
                        | {i.name for i in new_inits})
    del graph.node[:]
    graph.node.extend(ordered)
    for opset in out.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 13:
            opset.version = 13
    onnx.checker.check_model(out)
    return out


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    ready = set(available) | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progressed = []
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                progressed.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if not progressed:
            raise ValueError(f"graph has a cycle or missing inputs near {rest[0].name!r}")
        ordered += progressed
        pending = rest
    return ordered
