"""Folding a graph back to plain float: Constant weights into initializers, and Q/DQ pairs away.

* :func:`constants_to_initializers` — weights stored as ``Constant`` nodes (some exporters write no
  initializers at all) become initializers, so calibration sees them as the weights they are.
* :func:`fold_qdq` — the FP32 model of an already quantized (QAT / pre-quantized) Q/DQ model: every weight
  ``DequantizeLinear(w_int)`` or ``DequantizeLinear(QuantizeLinear(w))`` (a Brevitas ``Clip`` between them
  included) is computed once into a float initializer holding exactly the values the quantized model
  computes with, and every activation ``QuantizeLinear -> DequantizeLinear`` pair is removed (its consumers
  read the float tensor). Tensor names are kept, so the folded model computes every tensor the quantized
  model quantizes, under the same name (what the drift shadow measures coverage on).

A model whose quantized part has no float path — integer-only operators (``QLinearConv``, ``ConvInteger``,
``QGemm``, dynamic quantization...), or a ``QuantizeLinear`` whose integers feed anything but a
``DequantizeLinear`` — raises :class:`NoFloatPathError` naming the node.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_INTEGER_ONLY = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QGemm",
                 "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul", "MatMulIntegerToFloat",
                 "MatMulNBits", "DynamicQuantizeLSTM"}


class NoFloatPathError(ValueError):
    """The quantized model cannot be folded back to float; the message names the node and why."""


def _ai_onnx(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx", "com.microsoft")


def is_qdq_node(node: onnx.NodeProto) -> bool:
    return node.op_type in QDQ_OPS and _ai_onnx(node)


def integer_only_nodes(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes that compute in integers (QOperator format, dynamic quantization): they have no float path here."""
    return [n for n in nodes if n.op_type.startswith("QLinear") or n.op_type in _INTEGER_ONLY]


def count_qdq(model: onnx.ModelProto) -> int:
    """QuantizeLinear and DequantizeLinear nodes in the main graph."""
    return sum(1 for n in model.graph.node if is_qdq_node(n))


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node, or None for one this module does not turn into an initializer."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), np.int64)
    return None  # sparse_value, string values: left as Constant nodes


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn the main graph's Constant nodes into initializers of the same name (in place); how many.

    A Constant whose output is a graph output stays a node (an initializer cannot be a graph output on
    every runtime).
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    moved = 0
    for node in graph.node:
        value = _constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if value is None or node.output[0] in outputs:
            kept.append(node)
            continue
        tensor = numpy_helper.from_array(value, node.output[0])
        graph.initializer.append(tensor)
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(kept)
    return moved


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _broadcast(param: np.ndarray, x: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """A scale or zero point shaped to broadcast against ``x`` (per tensor or per ``axis``)."""
    if _attr(node, "block_size", 0):
        raise NoFloatPathError(f"node {node.name!r} ({node.op_type}) uses blocked quantization, which is not "
                               "folded here")
    if param.size == 1:
        return param.reshape(())
    axis = _attr(node, "axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    shape = [1] * x.ndim
    shape[axis] = -1
    return param.reshape(shape)


def _quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, node: onnx.NodeProto) -> np.ndarray:
    dtype = zero.dtype if zero is not None else np.dtype(np.uint8)
    if dtype.kind not in "iu":
        raise NoFloatPathError(f"node {node.name!r} (QuantizeLinear) quantizes to {dtype}, which is not folded "
                               "here (int8/uint8/int16/uint16/int32 are)")
    info = np.iinfo(dtype)
    z = _broadcast(zero, x, node).astype(np.float64) if zero is not None else 0.0
    q = np.rint(x.astype(np.float64) / _broadcast(scale, x, node).astype(np.float64)) + z  # half to even
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, node: onnx.NodeProto) -> np.ndarray:
    z = _broadcast(zero, q, node).astype(np.float64) if zero is not None else 0.0
    s = _broadcast(scale, q, node)
    return ((q.astype(np.float64) - z) * s.astype(np.float64)).astype(scale.dtype)


@dataclass(frozen=True)
class FoldResult:
    model: onnx.ModelProto
    weights_folded: int  # DequantizeLinear nodes on constants turned into float initializers
    activation_pairs_removed: int  # QuantizeLinear -> DequantizeLinear pairs on computed tensors
    constants_moved: int  # Constant nodes turned into initializers first


def fold_qdq(model: onnx.ModelProto, source: str = "the model") -> FoldResult:
    """A new model with the Q/DQ nodes folded away (see the module's docstring); NoFloatPathError otherwise.

    ``source`` (a file name) starts every error message.
    """
    out = onnx.ModelProto.FromString(model.SerializeToString())
    graph = out.graph
    moved = constants_to_initializers(out)
    blocked = integer_only_nodes(graph.node)
    if blocked:
        node = blocked[0]
        raise NoFloatPathError(
            f"{source}: node {node.name or '(unnamed)'!r} is {node.op_type}, an integer-only operator "
            f"({len(blocked)} such nodes), so it has no float path to fold back to FP32; export the model in QDQ "
            "format (QuantizeLinear/DequantizeLinear around float operators: ModelOpt, pytorch-quantization, "
            "Brevitas QCDQ, onnxruntime quantize_static(quant_format=QuantFormat.QDQ)) or point 'onnx:' at its "
            "FP32 export")
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    graph_outputs = {o.name for o in graph.output}
    values: dict[str, np.ndarray] = {}

    def const(name: str) -> np.ndarray | None:
        if name == "":
            return None
        if name not in values and name in inits:
            values[name] = numpy_helper.to_array(inits[name])
        return values.get(name)

    def param(node: onnx.NodeProto, k: int) -> np.ndarray | None:
        if len(node.input) <= k or node.input[k] == "":
            return None
        value = const(node.input[k])
        if value is None:
            raise NoFloatPathError(f"{source}: node {node.name!r} ({node.op_type}) has a computed "
                                   f"{'scale' if k == 1 else 'zero point'} ({node.input[k]!r}); only constant "
                                   "scales and zero points are folded")
        return value

    removed: set[int] = set()  # ids of nodes dropped
    new_inits: list[onnx.TensorProto] = []
    rename: dict[str, str] = {}  # DequantizeLinear output -> the float tensor its consumers read instead
    identities: list[onnx.NodeProto] = []
    weights = pairs = 0
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or not _ai_onnx(dq):
            continue
        x = dq.input[0]
        chain = []  # Clip / QuantizeLinear nodes between the DQ and the float tensor
        producer = producers.get(x)
        if producer is not None and producer.op_type == "Clip" and x not in graph_outputs:
            chain.append(producer)
            producer = producers.get(producer.input[0])
        q = producer if producer is not None and producer.op_type == "QuantizeLinear" and _ai_onnx(producer) \
            else None
        integers = const(x)
        if integers is not None:  # int8 weights behind a DQ
            value = _dequantize(integers, param(dq, 1), param(dq, 2), dq)  # type: ignore[arg-type]
        elif q is not None:
            chain.append(q)
            float_in = q.input[0]
            w = const(float_in)
            if w is not None:  # float weights fake-quantized by Q -> DQ
                qv = _quantize(w, param(q, 1), param(q, 2), q)  # type: ignore[arg-type]
                for clip in chain[:-1]:
                    lo, hi = (const(clip.input[k]) if len(clip.input) > k else None for k in (1, 2))
                    qv = np.clip(qv, lo if lo is not None else qv.min(), hi if hi is not None else qv.max())
                value = _dequantize(qv, param(dq, 1), param(dq, 2), dq)  # type: ignore[arg-type]
            else:
                value = None
                rename[dq.output[0]] = float_in
                pairs += 1
        else:
            what = producer.op_type if producer is not None else "a graph input"
            raise NoFloatPathError(f"{source}: DequantizeLinear {dq.name!r} reads {x!r}, computed by {what} and not "
                                   "by a QuantizeLinear of a float tensor, so there is no float tensor to fold it "
                                   "back to; export the model in QDQ format or point 'onnx:' at its FP32 export")
        removed.add(id(dq))
        if value is not None:
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(value), dq.output[0]))
            weights += 1
    # follow renames (a DQ reading a Q of another DQ's output) to the float tensor
    def resolve(name: str) -> str:
        seen = set()
        while name in rename and name not in seen:
            seen.add(name)
            name = rename[name]
        return name

    for node in graph.node:
        if id(node) in removed:
            continue
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = resolve(name)
    for name in list(rename):
        if name in graph_outputs:
            identities.append(helper.make_node("Identity", [resolve(name)], [name], name=f"{name}_folded_qdq"))
    # drop Q (and Clip) nodes nothing reads any more, repeatedly
    kept = [n for n in graph.node if id(n) not in removed] + identities
    while True:
        read = {i for n in kept for i in n.input} | graph_outputs
        drop = [n for n in kept if n.op_type in ("QuantizeLinear", "Clip") and _ai_onnx(n)
                and all(o not in read for o in n.output)
                and (n.op_type == "QuantizeLinear" or _feeds_only_integers(n, kept))]
        if not drop:
            break
        ids = {id(n) for n in drop}
        kept = [n for n in kept if id(n) not in ids]
    left = [n for n in kept if is_qdq_node(n)]
    if left:
        node = left[0]
        readers = [n.op_type for n in kept if any(o in n.input for o in node.output)]
        raise NoFloatPathError(f"{source}: QuantizeLinear {node.name!r} feeds {readers or 'a graph output'} with "
                               "integers, not a DequantizeLinear, so that part of the graph has no float path; "
                               "export the model in QDQ format or point 'onnx:' at its FP32 export")
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input} | graph_outputs
    keep_inits = [i for i in graph.initializer if i.name in used] + [i for i in new_inits if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    # value_info of the removed integer tensors would now describe float tensors of other names: drop them all
    del graph.value_info[:]
    onnx.checker.check_model(out)
    return FoldResult(out, weights, pairs, moved)


def _feeds_only_integers(node: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> bool:
    """A Clip whose input is a QuantizeLinear's output (Brevitas QCDQ), i.e. one that clips integers."""
    producers = {o: n for n in nodes for o in n.output}
    producer = producers.get(node.input[0])
    return producer is None or producer.op_type == "QuantizeLinear"
