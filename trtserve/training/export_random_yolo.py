"""A detector of real size for benchmarks: an Ultralytics-YOLOv8n-layout SiLU network at 640x640, random weights.

No pretrained weights can be downloaded on the project's machines, and throughput does not depend on what the
weights learnt, so this writes the network with ``onnx.helper`` directly (no PyTorch needed): a YOLOv8n-sized
backbone (widths 16-32-64-128-256, stride-2 3x3 convs, residual bottleneck blocks, SiLU as ``x * Sigmoid(x)``
as Ultralytics exports it), an SPPF, a top-down neck to strides 8/16/32, and a decoupled head per stride
(box branch: 4 x 16 DFL bins decoded by a softmax expectation; class branch: 80 sigmoid scores) — output
``[B, 84, 8400]``, the Ultralytics layout ``trtserve``'s ``yolov8`` head reads. The class biases are set very
negative so that random weights give (almost) no box above the score threshold, as in a quiet scene, rather than
thousands of boxes for NMS. YOLOv8n's widths and depth at 640x640.

Usage (the files are large and generated on demand, never committed)::

    python -m trtserve.training.export_random_yolo --out build/engines    # writes build/engines/yolo640/
    trtserve --repository build/engines bench --model yolo640 --frames-per-stream 12
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

NAME = "yolo640"
SIZE = 640
NUM_CLASSES = 80
REG_MAX = 16

MODEL_YAML = f"""# An Ultralytics-layout SiLU detector with random weights, for benchmarks only
# (written by python -m trtserve.training.export_random_yolo).
name: {NAME}
onnx: model.onnx
input:
  name: images
  layout: nchw
  height_px: {SIZE}
  width_px: {SIZE}
  color_order: rgb
  scale: 0.00392156862745098
  mean: [0.0, 0.0, 0.0]
  std: [1.0, 1.0, 1.0]
  pad_value: 114
head:
  type: yolov8
  score_threshold: 0.25
  iou_threshold: 0.5
  max_detections: 100
classes: [{", ".join(f"class{i}" for i in range(NUM_CLASSES))}]
max_batch_size: 8
max_frame_pixels: 8294400
"""


class _Graph:
    """Nodes and initializers of the network being written; names are made unique by a counter."""

    def __init__(self, seed: int) -> None:
        self.nodes: list = []  # type: ignore[type-arg]
        self.inits: list = []  # type: ignore[type-arg]
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def const(self, value: np.ndarray, kind: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(kind)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        from onnx import helper

        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, s: int = 1, act: bool = True, bias: float = 0.0) -> str:
        w = (self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = np.full(cout, bias, np.float32)
        y = self.node("Conv", [x, self.const(w, "w"), self.const(b, "b")], kernel_shape=[k, k], strides=[s, s],
                      pads=[k // 2] * 4)
        return self.node("Mul", [y, self.node("Sigmoid", [y])]) if act else y  # SiLU, as Ultralytics exports it

    def bottleneck(self, x: str, c: int, n: int) -> str:
        """A C2f-like block: a 1x1 in, ``n`` residual 3x3 pairs on half the channels, concat, a 1x1 out."""
        y = self.conv(x, c, c, 1)
        half = c // 2
        a = self.node("Slice", [y, self.const(np.array([0], np.int64)), self.const(np.array([half], np.int64)),
                                self.const(np.array([1], np.int64))])
        b = self.node("Slice", [y, self.const(np.array([half], np.int64)), self.const(np.array([c], np.int64)),
                                self.const(np.array([1], np.int64))])
        parts = [a, b]
        for _ in range(n):
            b = self.node("Add", [b, self.conv(self.conv(b, half, half), half, half)])
            parts.append(b)
        return self.conv(self.node("Concat", parts, axis=1), half * len(parts), c, 1)


def build(seed: int = 0):  # type: ignore[no-untyped-def]
    """The network (an ``onnx.ModelProto``, opset 17, dynamic batch)."""
    from onnx import TensorProto, helper

    g = _Graph(seed)
    x = g.conv("images", 3, 16, 3, 2)  # 320
    x = g.conv(x, 16, 32, 3, 2)  # 160
    x = g.bottleneck(x, 32, 1)
    x = g.conv(x, 32, 64, 3, 2)  # 80
    p3 = g.bottleneck(x, 64, 2)
    x = g.conv(p3, 64, 128, 3, 2)  # 40
    p4 = g.bottleneck(x, 128, 2)
    x = g.conv(p4, 128, 256, 3, 2)  # 20
    x = g.bottleneck(x, 256, 1)
    pool = x  # SPPF: three chained 5x5 max pools, concatenated
    pooled = [g.conv(x, 256, 128, 1)]
    for _ in range(3):
        pooled.append(g.node("MaxPool", [pooled[-1]], kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[1, 1]))
    p5 = g.conv(g.node("Concat", pooled, axis=1), 512, 256, 1)
    del pool
    scales = g.const(np.array([1, 1, 2, 2], np.float32))
    up = g.node("Resize", [p5, "", scales], mode="nearest")
    n4 = g.bottleneck(g.conv(g.node("Concat", [up, p4], axis=1), 384, 128, 1), 128, 1)
    up = g.node("Resize", [n4, "", scales], mode="nearest")
    n3 = g.bottleneck(g.conv(g.node("Concat", [up, p3], axis=1), 192, 64, 1), 64, 1)
    boxes, classes = [], []
    anchors, strides = [], []
    for feat, c, stride in ((n3, 64, 8), (n4, 128, 16), (p5, 256, 32)):
        side = SIZE // stride
        box = g.conv(g.conv(g.conv(feat, c, 64), 64, 64), 64, 4 * REG_MAX, 1, act=False)
        cls = g.conv(g.conv(g.conv(feat, c, 80), 80, 80), 80, NUM_CLASSES, 1, act=False, bias=-8.0)
        boxes.append(g.node("Reshape", [box, g.const(np.array([0, 4 * REG_MAX, -1], np.int64))]))
        classes.append(g.node("Reshape", [cls, g.const(np.array([0, NUM_CLASSES, -1], np.int64))]))
        ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
        anchors.append(np.stack([xs.ravel(), ys.ravel()]))
        strides.append(np.full(side * side, stride, np.float32))
    box = g.node("Concat", boxes, axis=2)  # [B, 64, 8400]
    cls = g.node("Sigmoid", [g.node("Concat", classes, axis=2)])  # [B, 80, 8400]
    # DFL: softmax over the 16 bins of each side, expectation by a 1x1 conv with weights 0..15
    bins = g.node("Softmax", [g.node("Reshape", [box, g.const(np.array([0, 4, REG_MAX, -1], np.int64))])], axis=2)
    weights = g.const(np.arange(REG_MAX, dtype=np.float32).reshape(1, 1, -1, 1))
    dist = g.node("ReduceSum", [g.node("Mul", [bins, weights]), g.const(np.array([2], np.int64))],
                  keepdims=0)  # [B, 4, N]: l, t, r, b
    anchor = g.const(np.concatenate(anchors, axis=1)[None])  # [1, 2, N]
    stride = g.const(np.concatenate(strides)[None, None])  # [1, 1, N]
    lt = g.node("Slice", [dist, g.const(np.array([0], np.int64)), g.const(np.array([2], np.int64)),
                          g.const(np.array([1], np.int64))])
    rb = g.node("Slice", [dist, g.const(np.array([2], np.int64)), g.const(np.array([4], np.int64)),
                          g.const(np.array([1], np.int64))])
    center = g.node("Add", [anchor, g.node("Mul", [g.node("Sub", [rb, lt]), g.const(np.array(0.5, np.float32))])])
    wh = g.node("Add", [lt, rb])
    xywh = g.node("Mul", [g.node("Concat", [center, wh], axis=1), stride])
    out = g.node("Concat", [xywh, cls], axis=1)
    g.nodes.append(helper.make_node("Identity", [out], ["output0"], name="output"))
    graph = helper.make_graph(
        g.nodes, NAME, [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + NUM_CLASSES, 8400])], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def export(repository: Path, seed: int = 0) -> Path:
    """Write ``<repository>/yolo640/{model.onnx, model.yaml}``; returns the folder."""
    import onnx

    folder = repository / NAME
    folder.mkdir(parents=True, exist_ok=True)
    model = build(seed)
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "model.yaml").write_text(MODEL_YAML, encoding="utf-8")
    logger.info("wrote %s (%.1f MB)", folder, (folder / "model.onnx").stat().st_size / 1e6)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("build/engines"),
                        help="model repository (default build/engines)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    export(args.out, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
