"""An Ultralytics ``nms=True`` export traced for batch 1 (its ONNX metadata says so) is refused at load when
``max_batch_size`` is larger, naming the model, its batch and both fixes; the same model with ``max_batch_size: 1``,
and an end-to-end model exported without ``nms=True`` (YOLOv10's own head), load."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtserve.config import load_model_config
from trtserve.detector import Detector
from trtserve.errors import ModelLoadError
from trtserve.heads.end2end import nms_export_batch


def end2end_model(path: Path, metadata: dict[str, str]) -> None:
    """[B, 3, 32, 32] -> [B, 512, 6] (a Reshape), with a dynamic batch dim and ``metadata`` as metadata_props."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [0, -1, 6])
    graph = helper.make_graph([helper.make_node("Reshape", ["images", "shape"], ["output0"])], "e2e",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 512, 6])],
                              [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def folder(tmp_path: Path, metadata: dict[str, str], max_batch: int) -> Path:
    d = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    end2end_model(d / "model.onnx", metadata)
    (d / "model.yaml").write_text(f"name: exported\nonnx: model.onnx\ninput: {{height_px: 32, width_px: 32}}\n"
                                  f"head: {{type: auto}}\nclasses: [a, b]\nmax_batch_size: {max_batch}\n")
    return d / "model.yaml"


ULTRALYTICS_NMS = {"author": "Ultralytics", "batch": "1", "task": "detect",
                   "args": "{'batch': 1, 'half': False, 'dynamic': True, 'simplify': False, 'nms': True}"}


def test_an_nms_export_traced_for_one_frame_is_refused_above_batch_1(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model 'exported' is an Ultralytics nms=True export traced for batch 1 "
                                             r".*first 1 frame\(s\) of each batch, but max_batch_size is 8; re-export "
                                             r"with `yolo export ... nms=True batch=8` or set max_batch_size: 1"):
        Detector.open(load_model_config(folder(tmp_path, ULTRALYTICS_NMS, 8)))
    with Detector.open(load_model_config(folder(tmp_path, ULTRALYTICS_NMS, 1))) as detector:
        assert detector.head.type == "end2end"
        assert detector.detect([np.zeros((32, 32, 3), np.uint8)])[0].ok


def test_end_to_end_models_that_decode_every_frame_load(tmp_path: Path) -> None:
    batched = {**ULTRALYTICS_NMS, "batch": "8", "args": ULTRALYTICS_NMS["args"].replace("'batch': 1", "'batch': 8")}
    v10 = {**ULTRALYTICS_NMS, "args": "{'batch': 1, 'dynamic': True, 'nms': False}"}
    for metadata in (batched, v10, {}, {"args": "not a literal {"}):
        with Detector.open(load_model_config(folder(tmp_path, metadata, 8))) as detector:
            assert detector.head.type == "end2end"
    assert nms_export_batch(folder(tmp_path, batched, 8).parent / "model.onnx") == 8
    assert nms_export_batch(folder(tmp_path, v10, 8).parent / "model.onnx") is None
