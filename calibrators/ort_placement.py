"""The ``onnxruntime`` placement's integer paths: where extra Q/DQ lets ONNX Runtime run a whole stretch in uint8.

ONNX Runtime's CPU provider fuses a node into its integer kernel only when every input comes out of a
DequantizeLinear and its output goes into a QuantizeLinear (a "node unit"): DQ -> Conv -> Q becomes
``QLinearConv``, DQ -> Sigmoid -> Q ``QLinearSigmoid`` (a 256-entry lookup table), DQ, DQ -> Mul -> Q
``QLinearMul``, DQ... -> Concat -> Q ``QLinearConcat``, DQ, DQ -> Add -> Q ``QLinearAdd``; data-movement ops
(Split, Slice, MaxPool, Resize, Reshape, Transpose, ...) run on uint8 as they are when their input and output
carry the same scale and zero point. A node left between a DQ and a Q runs in float, and costs a
dequantize, its float pass and a quantize.

A SiLU exported as ``x * Sigmoid(x)`` is the case that matters: with only the conv output and the SiLU's
output quantized, ONNX Runtime gives the Sigmoid and the Mul a DequantizeLinear each (one per node unit) and
runs both in float -- four float passes per activation, which made INT8 slower than FP32 on SiLU models.
With the Sigmoid's output quantized too (its range is exactly (0, 1): no calibration needed), the SiLU
becomes ``QLinearSigmoid`` -> ``QLinearMul``, two uint8 passes.

:func:`integer_paths` extends a plan's activations, to a fixed point, with:

* the Sigmoid output and the Mul output of every SiLU whose input is quantized;
* the outputs of data-movement ops whose data input is quantized (the Q/DQ writer gives them the input's
  scale and zero point, so they cost no accuracy);
* every input of a Concat whose output is quantized, and the output of an Add whose inputs all are (after
  a directly following Relu, which ONNX Runtime folds into the quantization).

Excluded nodes (the float head, configured exclusions) are never made integer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx

# ops whose output values are a subset (or a reshuffle, or a convex mix for linear Resize) of their first input's:
# the output takes the input's scale and zero point, exactly
SCALE_PRESERVING_OPS = ("Split", "Slice", "MaxPool", "Resize", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                        "Flatten", "Identity")


def silu_sigmoid(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> onnx.NodeProto | None:
    """For a Sigmoid node s of a SiLU ``x * s(x)``: that Mul; None for any other Sigmoid."""
    if node.op_type != "Sigmoid" or not node.input:
        return None
    users = consumers.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Mul" and set(users[0].input) == {node.input[0], node.output[0]}:
        return users[0]
    return None


def integer_paths(graph: onnx.GraphProto, activations: Sequence[str], excluded: Iterable[str],
                  initializers: Iterable[str]) -> list[str]:
    """``activations`` extended with the tensors that make SiLUs, data movement, Concats and Adds run in uint8."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    produced: set[str] = set()
    for node in graph.node:
        produced.update(node.output)
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    skip = set(excluded)
    constants = set(initializers)
    found = list(activations)
    have = set(found)

    def add(tensor: str) -> bool:
        if tensor and tensor not in have and tensor not in constants and tensor in produced:
            found.append(tensor)
            have.add(tensor)
            return True
        return False

    nodes = [n for n in graph.node if n.name not in skip]
    changed = True
    while changed:
        changed = False
        for node in nodes:
            op = node.op_type
            if op == "Sigmoid" and node.input[0] in have:
                mul = silu_sigmoid(node, consumers)
                if mul is not None and mul.name not in skip:
                    changed |= add(node.output[0])
                    changed |= add(mul.output[0])
            elif op in SCALE_PRESERVING_OPS and node.input and node.input[0] in have:
                for out in node.output:
                    changed |= add(out)
            elif op == "Concat" and node.output[0] in have:
                for name in node.input:
                    changed |= add(name)
            elif op == "Add" and len(node.input) == 2 and all(i in have for i in node.input):
                users = consumers.get(node.output[0], [])
                if len(users) == 1 and users[0].op_type == "Relu" and users[0].name not in skip:
                    changed |= add(users[0].output[0])  # Add -> Relu -> Q: ONNX Runtime drops the Relu
                else:
                    changed |= add(node.output[0])
    return found
