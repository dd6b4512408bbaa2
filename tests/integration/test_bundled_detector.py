"""The bundled detector end to end on ONNX Runtime CPU: real model, real frames, real errors."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from trtserve.config import load_model_config
from trtserve.datasets.synthetic import evaluation_set, render_scene
from trtserve.detector import Detector
from trtserve.errors import InvalidFrameError, ModelLoadError
from trtserve.vision.matching import MatchCounts, match

from ..conftest import ENGINES


def test_finds_the_objects_of_held_out_scenes(shapes: Detector) -> None:
    scenes = list(evaluation_set(40))
    results = shapes.detect([s.image_bgr for s in scenes])
    total = MatchCounts()
    for scene, result in zip(scenes, results):
        assert result.detections is not None
        d = result.detections
        total += match(d.boxes_xyxy, d.scores, d.class_ids, scene.boxes_xyxy, scene.class_ids)
    assert total.f1 > 0.85, total
    assert total.mean_iou > 0.8, total


def test_a_bad_frame_fails_alone(shapes: Detector) -> None:
    good = next(s for s in evaluation_set(20) if len(s.class_ids) >= 3).image_bgr
    _ok, png = cv2.imencode(".png", good)
    frames = [good, b"\xff\xd8\xff garbage", np.zeros((32, 32, 3), np.float32), png.tobytes(),
              np.zeros((0, 5, 3), np.uint8)]  # (grayscale frames are converted now: tests/unit/vision)
    results = shapes.detect(frames)
    assert [r.ok for r in results] == [True, False, False, True, False]
    assert all(isinstance(r.error, InvalidFrameError) for r in results if not r.ok)
    a, b = results[0].detections, results[3].detections
    assert a is not None and b is not None and len(a) > 0
    np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-3)


def test_uneven_batches_give_the_same_answers_as_single_frames(shapes: Detector) -> None:
    frames = [render_scene(11, i).image_bgr for i in range(19)]  # 8 + 8 + 3 with max batch 8
    batched = shapes.detect(frames)
    assert len(batched) == 19
    for frame, result in zip(frames[::6], batched[::6]):
        (single,) = shapes.detect([frame])
        assert single.detections is not None and result.detections is not None
        np.testing.assert_allclose(single.detections.boxes_xyxy, result.detections.boxes_xyxy, atol=1e-2)
        np.testing.assert_array_equal(single.detections.class_ids, result.detections.class_ids)


def _copy_model(tmp_path: Path, patch: dict | None = None, onnx_bytes: bytes | None = None) -> Path:
    folder = tmp_path / "shapes"
    folder.mkdir()
    doc = yaml.safe_load((ENGINES / "shapes" / "model.yaml").read_text())
    for key, value in (patch or {}).items():
        parent, _, leaf = key.rpartition(".")
        (doc[parent] if parent else doc)[leaf] = value
    (folder / "model.yaml").write_text(yaml.safe_dump(doc))
    if onnx_bytes is None:
        shutil.copy(ENGINES / "shapes" / "model.onnx", folder / "model.onnx")
    else:
        (folder / "model.onnx").write_bytes(onnx_bytes)
    return folder / "model.yaml"


@pytest.mark.parametrize("patch, onnx_bytes, message", [
    ({}, b"this is not an onnx file", "ONNX Runtime cannot load"),
    ({"onnx": "missing.onnx"}, None, "does not exist"),
    ({"head.type": "yolov5"}, None, "head.type 'yolov5' does not match output shapes"),
    ({"classes": ["a", "b"]}, None, "does not match output shapes"),
    ({"input.height_px": 320}, None, "fix input.height_px/width_px"),
    ({"input.name": "pixels"}, None, "key 'input.name' is 'pixels'"),
    ({"input.layout": "nhwc"}, None, "does not have 3 channels"),
])
def test_model_that_does_not_fit_its_config(tmp_path: Path, patch: dict, onnx_bytes: bytes | None,
                                            message: str) -> None:
    config = load_model_config(_copy_model(tmp_path, patch, onnx_bytes))
    with pytest.raises(ModelLoadError, match=message):
        Detector.open(config)


def test_auto_head_picks_yolov8_for_the_bundled_model(tmp_path: Path) -> None:
    config = load_model_config(_copy_model(tmp_path, {"head.type": "auto"}))
    with Detector.open(config) as detector:
        assert detector.head.type == "yolov8"


def test_large_jpegs_decoded_downscaled_give_the_same_detections(shapes: Detector) -> None:
    """A 1080p JPEG decoded at 1/4 in libjpeg: same geometry, same objects as decoding it whole."""
    same = truth_full = truth_fast = MatchCounts()
    for i in range(12):
        scene = render_scene(77, i, (1920, 1080))
        data = cv2.imencode(".jpg", scene.image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        full, geometry_full = shapes.letterbox(shapes.prepare(data))
        fast, geometry_fast = shapes.prepare_letterboxed(data)
        assert geometry_fast == geometry_full  # boxes map back to the 1920x1080 frame
        a, b = (shapes.infer_letterboxed([x], [geometry_full], [shapes.thresholds])[0] for x in (full, fast))
        same += match(b.boxes_xyxy, b.scores, b.class_ids, a.boxes_xyxy, a.class_ids)
        truth_full += match(a.boxes_xyxy, a.scores, a.class_ids, scene.boxes_xyxy, scene.class_ids)
        truth_fast += match(b.boxes_xyxy, b.scores, b.class_ids, scene.boxes_xyxy, scene.class_ids)
    assert same.f1 >= 0.95
    assert truth_fast.f1 >= truth_full.f1 - 0.02


def test_batches_on_several_threads_at_once_keep_their_own_inputs(shapes: Detector) -> None:
    """The server runs batches on several threads at once (batcher.instances): none sees another's frames."""
    from concurrent.futures import ThreadPoolExecutor

    scenes = list(evaluation_set(24))
    boxed = [shapes.letterbox(s.image_bgr) for s in scenes]
    batches = [boxed[i : i + 3] for i in range(0, len(boxed), 3)]

    def run(batch: list) -> list:  # type: ignore[type-arg]
        images, geometries = [b[0] for b in batch], [b[1] for b in batch]
        return shapes.run_batch(images, geometries, [shapes.thresholds] * len(batch)).detections

    expected = [run(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(run, batches))
            for want, have in zip(expected, got):
                for a, b in zip(want, have):
                    np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-3)
                    assert a.class_ids.tolist() == b.class_ids.tolist()
