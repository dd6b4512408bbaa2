"""Normalization inside the model: a prefix that takes letterboxed BGR uint8 frames, written into the ONNX at load.

The server letterboxes every frame into ``H x W x 3`` BGR uint8. Without a prefix it then converts each batch to
the model's float input (colour order, ``x * scale``, ``(x - mean) / std``, layout) on the CPU, per frame. With
:func:`with_uint8_input` the model itself does that: its input becomes ``uint8 [batch, H, W, 3]`` (the letterboxed
frames as they are, stacked) under the same name, and a small prefix computes what the original input was:

* where ``mean / scale`` is a whole number 0..255 per channel (``mean: 0``, as Ultralytics exports):
  ``Transpose(NHWC->NCHW)`` of the uint8 frames, ``Slice`` reversing the channels (BGR->RGB when ``color_order:
  rgb``) and one ``DequantizeLinear`` per channel, ``(x - mean/scale) * scale/std``: the cheapest measured on ONNX
  Runtime's CPU provider (0.15 ms per 256x256 frame alone, against 0.85-1.9 for Cast/Transpose/Conv or Mul/Add);
* otherwise (or for GPU providers: TensorRT takes no uint8 DequantizeLinear): ``Transpose`` of the uint8 frames,
  ``Cast(float)`` and a 1x1 ``Conv`` whose 3x3 weights hold the channel permutation times ``scale / std`` and whose
  bias is ``-mean / std`` (NHWC models: ``Cast -> MatMul -> Add``, no transpose).

A Q/DQ model gets the same prefix in float: its first QuantizeLinear then reads the prefix's output as it read the
float input before.

The rewrite is a pure function of the model and the input spec; the model file on disk is never changed.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

    from trtserve.config import InputSpec

#: suffix of the original input's name inside a prefixed model (what the prefix computes)
NORMALIZED_SUFFIX = "__trtserve_normalized"


@dataclass(frozen=True)
class InputPrefix:
    """What the prefix computes from a BGR uint8 pixel, per output channel ``c``:
    ``weights[c] . bgr + bias[c]`` (weights ``[3, 3]``: output channel x BGR input channel)."""

    layout: str  # the model's: nchw | nhwc
    weights: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float]

    @classmethod
    def from_spec(cls, spec: InputSpec) -> InputPrefix:
        """The prefix equivalent to :class:`trtserve.vision.preprocess.Preprocessor` for ``spec``."""
        inv_std = 1.0 / np.array(spec.std, np.float64)
        alpha = spec.scale * inv_std
        beta = np.array(spec.mean, np.float64) * inv_std
        order = (2, 1, 0) if spec.color_order == "rgb" else (0, 1, 2)  # model channel c reads BGR channel order[c]
        weights = np.zeros((3, 3))
        for c, src in enumerate(order):
            weights[c, src] = alpha[c]
        return cls(spec.layout, tuple(tuple(float(v) for v in row) for row in weights),  # type: ignore[misc]
                   (float(-beta[0]), float(-beta[1]), float(-beta[2])))

    def permutation_and_scales(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """For each model channel, the BGR channel it reads and its factor (weights is a scaled permutation)."""
        order = tuple(int(np.argmax(np.abs(row))) for row in self.weights)
        return order, tuple(self.weights[c][src] for c, src in enumerate(order))

    def dequantize_zero_points(self) -> tuple[int, ...] | None:
        """Zero points that make ``DequantizeLinear`` compute this prefix, ``(x - zp) * scale``: ``zp = -bias /
        scale`` must be a whole number in 0..255 for every channel (true for ``mean: 0``, the Ultralytics
        convention); None otherwise (then the Conv prefix is used)."""
        order, scales = self.permutation_and_scales()
        if order not in ((0, 1, 2), (2, 1, 0)):
            return None
        zero_points = []
        for c, scale in enumerate(scales):
            if scale <= 0:
                return None
            zp = -self.bias[c] / scale
            if abs(zp - round(zp)) > 1e-4 or not 0 <= round(zp) <= 255:
                return None
            zero_points.append(round(zp))
        return tuple(zero_points)


def with_uint8_input(model: onnx.ModelProto, input_name: str, prefix: InputPrefix, dequantize: bool = True
                     ) -> onnx.ModelProto:
    """A copy of ``model`` whose input ``input_name`` takes ``uint8 [batch, H, W, 3]`` BGR frames (see the module).

    Raises ValueError when the input is not a float32 rank-4 image batch of 3 channels in ``prefix.layout``:
    such a model is served with float input instead (the caller decides). ``dequantize``: use the
    DequantizeLinear prefix where the normalization allows it (ONNX Runtime's CPU provider; TensorRT takes no uint8
    DequantizeLinear, so GPU providers get the Conv prefix).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph_input = next((i for i in model.graph.input if i.name == input_name), None)
    if graph_input is None:
        raise ValueError(f"the model has no input {input_name!r}")
    tensor_type = graph_input.type.tensor_type
    if tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"input {input_name!r} is {TensorProto.DataType.Name(tensor_type.elem_type)}, not FLOAT")
    dims = list(tensor_type.shape.dim)
    if len(dims) != 4:
        raise ValueError(f"input {input_name!r} has rank {len(dims)}; expected 4")
    batch, hw = (dims[0], dims[2:4]) if prefix.layout == "nchw" else (dims[0], dims[1:3])
    channels = dims[1] if prefix.layout == "nchw" else dims[3]
    if channels.HasField("dim_value") and channels.dim_value != 3:
        raise ValueError(f"input {input_name!r} has {channels.dim_value} channels; expected 3")
    if not all(d.HasField("dim_value") for d in hw):
        raise ValueError(f"input {input_name!r} has a dynamic height or width")

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inner = input_name + NORMALIZED_SUFFIX
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == input_name:
                node.input[k] = inner
    for output in graph.output:  # a model that also returns its input (rare): keep returning the float tensor
        if output.name == input_name:
            output.name = inner
    new_input = next(i for i in graph.input if i.name == input_name)
    new_input.type.tensor_type.elem_type = TensorProto.UINT8
    shape = new_input.type.tensor_type.shape
    del shape.dim[:]
    for d in (batch, hw[0], hw[1]):
        shape.dim.add().CopyFrom(d)
    shape.dim.add().dim_value = 3

    p = input_name + "__trtserve_prefix"
    channel_axis = 1 if prefix.layout == "nchw" else 3
    nodes, initializers = [], []
    source = input_name
    if prefix.layout == "nchw":  # on the uint8 frames: a quarter of the bytes a float transpose moves
        nodes.append(helper.make_node("Transpose", [source], [p + "_nchw"], perm=[0, 3, 1, 2], name=p + "_transpose"))
        source = p + "_nchw"
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    # per-channel DequantizeLinear (its axis) needs opset 13
    zero_points = prefix.dequantize_zero_points() if dequantize and opset >= 13 else None
    if zero_points is not None:
        order, scales = prefix.permutation_and_scales()
        if order != (0, 1, 2):  # BGR -> RGB: the channel axis reversed (the only permutation from_spec makes)
            nodes.append(helper.make_node("Slice", [source, p + "_start", p + "_end", p + "_axis", p + "_step"],
                                          [p + "_rgb"], name=p + "_reverse"))
            initializers += [numpy_helper.from_array(np.array([v], np.int64), p + k) for k, v in
                             (("_start", 2), ("_end", -4), ("_axis", channel_axis), ("_step", -1))]
            source = p + "_rgb"
        nodes.append(helper.make_node("DequantizeLinear", [source, p + "_scale", p + "_zero"], [inner],
                                      axis=channel_axis, name=p + "_dequantize"))
        initializers += [numpy_helper.from_array(np.array(scales, np.float32), p + "_scale"),
                         numpy_helper.from_array(np.array(zero_points, np.uint8), p + "_zero")]
    else:
        weights = np.array(prefix.weights, np.float32)
        bias = np.array(prefix.bias, np.float32)
        nodes.append(helper.make_node("Cast", [source], [p + "_f32"], to=TensorProto.FLOAT, name=p + "_cast"))
        if prefix.layout == "nchw":
            nodes.append(helper.make_node("Conv", [p + "_f32", p + "_w", p + "_b"], [inner], kernel_shape=[1, 1],
                                          name=p + "_conv"))
            initializers += [numpy_helper.from_array(weights.reshape(3, 3, 1, 1), p + "_w"),
                             numpy_helper.from_array(bias, p + "_b")]
        else:
            nodes += [helper.make_node("MatMul", [p + "_f32", p + "_w"], [p + "_mm"], name=p + "_matmul"),
                      helper.make_node("Add", [p + "_mm", p + "_b"], [inner], name=p + "_add")]
            initializers += [numpy_helper.from_array(np.ascontiguousarray(weights.T), p + "_w"),
                             numpy_helper.from_array(bias, p + "_b")]
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)
    graph.initializer.extend(initializers)
    return out


class FoldsInput(abc.ABC):
    """A backend that can take letterboxed BGR uint8 frames and normalize inside the model.

    Call :meth:`fold_input` before ``load()``; after it, :attr:`input_folded` says whether the prefix was applied
    (a model whose input cannot take it is served with its float input, as without the call).
    """

    @abc.abstractmethod
    def fold_input(self, prefix: InputPrefix, input_name: str | None) -> None:
        """Ask for ``prefix`` on input ``input_name`` (None: the model's only input) at load."""

    @property
    @abc.abstractmethod
    def input_folded(self) -> bool:
        """True once loaded with the prefix: the input is ``uint8 [batch, H, W, 3]`` letterboxed BGR frames."""
