"""The bundled detector re-exported with every output dim symbolic (as Ultralytics' ``dynamic=True,
simplify=False`` exports are) loads with ``head: auto``, resolves to yolov8 and detects what the original does."""

import shutil
from pathlib import Path

import numpy as np
import onnx

from trtserve.datasets.synthetic import render_scene
from trtserve.detector import Detector
from trtserve.repository import ModelRepository

from ..conftest import ENGINES


def test_auto_head_on_all_symbolic_outputs(tmp_path: Path) -> None:
    folder = tmp_path / "symbolic"
    shutil.copytree(ENGINES / "shapes", folder, ignore=shutil.ignore_patterns("*.int8*", "calibration*"))
    model = onnx.load(str(folder / "model.onnx"))
    for output in model.graph.output:
        for i, dim in enumerate(output.type.tensor_type.shape.dim):
            dim.Clear()
            dim.dim_param = f"{output.name}_dim{i}"
    del model.graph.value_info[:]
    onnx.save(model, str(folder / "model.onnx"))
    text = (folder / "model.yaml").read_text().split("artifacts:")[0]
    (folder / "model.yaml").write_text(text.replace("name: shapes", "name: symbolic").replace("type: yolov8",
                                                                                              "type: auto"))
    config = ModelRepository(tmp_path).get("symbolic")
    frame = render_scene(3, 1).image_bgr
    with Detector.open(config) as detector:
        assert all(d is None for t in detector.backend.outputs for d in t.shape)
        assert detector.head.type == "yolov8"
        got = detector.detect([frame])[0].detections
    with Detector.open(ModelRepository(ENGINES).get("shapes")) as original:
        want = original.detect([frame])[0].detections
    assert got is not None and want is not None and len(want) > 0
    np.testing.assert_allclose(got.boxes_xyxy, want.boxes_xyxy, atol=1e-3)
    np.testing.assert_array_equal(got.class_ids, want.class_ids)
