"""Pre-quantized (QAT-like) models of the bundled detector, made here as a QAT export would ship them.

ONNX Runtime's ``quantize_static`` in QDQ format with int8 symmetric activations (zero point 0, as ModelOpt and
pytorch-quantization export and TensorRT requires), per-channel int8 weights, the detection head kept float; or
in QOperator format (QLinearConv: integer-only operators, no float path). Made once per test session.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx

from trtserve.config import load_model_config
from trtserve.datasets.synthetic import CALIBRATION_SEED, render_scene
from trtserve.vision.preprocess import Preprocessor

from ..conftest import ENGINES

FP32 = ENGINES / "shapes" / "model.onnx"


def frames(count: int, seed: int = CALIBRATION_SEED) -> list[np.ndarray]:
    return [render_scene(seed, i).image_bgr for i in range(count)]


def preprocessed(count: int) -> np.ndarray:
    pre = Preprocessor(load_model_config(ENGINES / "shapes" / "model.yaml").input)
    return pre.batch(frames(count))[0]


@functools.lru_cache(maxsize=2)
def quantized_bytes(fmt: str = "QDQ") -> bytes:
    """The bundled model quantized by ONNX Runtime in ``fmt`` (QDQ | QOperator), as bytes."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from calibrators.graph import detection_head_nodes

    batch = preprocessed(16)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter([{"images": batch[i : i + 1]} for i in range(len(batch))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_static(str(FP32), str(out), Reader(), quant_format=getattr(QuantFormat, fmt), per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=list(detection_head_nodes(onnx.load(str(FP32)))),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        return out.read_bytes()


def write_qat_folder(repository: Path, name: str = "qat", fmt: str = "QDQ") -> Path:
    """A model folder as a QAT export ships: ``onnx:`` names the quantized model, no artifacts."""
    folder = repository / name
    folder.mkdir(parents=True)
    (folder / "model.qat.onnx").write_bytes(quantized_bytes(fmt))
    text = (ENGINES / "shapes" / "model.yaml").read_text().split("artifacts:")[0]
    text = text.replace("name: shapes", f"name: {name}").replace("onnx: model.onnx", "onnx: model.qat.onnx")
    (folder / "model.yaml").write_text(text)
    return folder
