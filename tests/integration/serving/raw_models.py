"""A tiny ``head: raw`` model with two named outputs, made on the fly, for the raw-tensor tests.

``twins``: input ``images`` FP32 ``[N, 3, 32, 32]``; outputs ``pooled`` (an 8x8 average pool, ``[N, 3, 4, 4]``) and
``features`` (an 8x8 stride-8 convolution to 4 channels, ``[N, 4, 4, 4]``). Its "int8" artifact is the same network
with ``pooled`` unchanged and ``features``' weights perturbed: a stand-in for one badly quantized output (the drift
monitor must see that output, and only it, disagree with the FP32 shadow).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE_PX = 32
OUTPUTS = ("pooled", "features")


def _network(weights: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
         helper.make_node("Conv", ["images", "w"], ["features"], kernel_shape=[8, 8], strides=[8, 8])],
        "twins", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE_PX, SIZE_PX])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 3, 4, 4]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4, 4, 4])],
        [numpy_helper.from_array(weights, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def make_twins(repository: Path, noise: float = 1.0) -> Path:
    """Write the ``twins`` model folder (FP32 and the perturbed "int8" artifact) under ``repository``."""
    folder = repository / "twins"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    weights = rng.normal(0.0, 1.0, (4, 3, 8, 8)).astype(np.float32)
    onnx.save(_network(weights), str(folder / "model.onnx"))
    perturbed = weights + rng.normal(0.0, noise, weights.shape).astype(np.float32)
    onnx.save(_network(perturbed), str(folder / "model.int8.onnx"))
    (folder / "model.yaml").write_text(
        f"name: twins\nonnx: model.onnx\ninput: {{name: images, height_px: {SIZE_PX}, width_px: {SIZE_PX}}}\n"
        "head: {type: raw}\nmax_batch_size: 8\nartifacts: {int8: model.int8.onnx}\n")
    return folder


def tensors(count: int, seed: int = 0) -> np.ndarray:
    """``count`` frames of the model's input (values like normalized pixels, 0..1)."""
    return np.random.default_rng(seed).random((count, 3, SIZE_PX, SIZE_PX), dtype=np.float32)


def run(model_path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    """The model's outputs, by ONNX Runtime directly (what the server must agree with)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"images": batch})))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
