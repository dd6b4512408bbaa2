"""A phone photo stored sideways with EXIF Orientation 6 is detected on upright, and its boxes are in the upright
frame's pixels; ``input.exif_orientation: false`` in model.yaml detects on the stored pixels instead."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.unit.vision.test_exif_orientation import exif_app1, with_segment
from trtserve.config import load_model_config
from trtserve.datasets.synthetic import render_scene
from trtserve.detector import Detector
from trtserve.errors import ConfigError
from trtserve.repository import ModelRepository


def encoded(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def test_boxes_are_in_the_upright_frame(shapes: Detector) -> None:
    upright = render_scene(11, 2).image_bgr
    sideways = np.ascontiguousarray(np.rot90(upright, 1))  # what a phone held upright stores: turn it clockwise
    photo = with_segment(encoded(sideways), exif_app1(6))
    want, got = shapes.detect([encoded(upright), photo])
    assert want.detections is not None and got.detections is not None and len(want.detections) > 0
    np.testing.assert_array_equal(got.detections.class_ids, want.detections.class_ids)
    np.testing.assert_allclose(got.detections.boxes_xyxy, want.detections.boxes_xyxy, atol=2.0)  # JPEG's loss


def test_model_yaml_can_turn_exif_orientation_off(repository: ModelRepository, tmp_path: Path) -> None:
    folder = tmp_path / "shapes"
    shutil.copytree(repository.get("shapes").directory, folder)
    text = (folder / "model.yaml").read_text()
    off = text.replace("  pad_value: 114\n", "  pad_value: 114\n  exif_orientation: false\n")
    (folder / "model.yaml").write_text(off)
    config = load_model_config(folder / "model.yaml")
    assert config.input.exif_orientation is False
    assert load_model_config(repository.get("shapes").source_file).input.exif_orientation is True  # the default
    upright = render_scene(11, 2).image_bgr
    sideways = np.ascontiguousarray(np.rot90(upright, 1))
    photo = with_segment(encoded(sideways), exif_app1(6))
    with Detector.open(config) as detector:
        stored, got = detector.detect([encoded(sideways), photo])
        assert detector.prepare(photo).shape == sideways.shape
    assert stored.detections is not None and got.detections is not None
    np.testing.assert_array_equal(got.detections.boxes_xyxy, stored.detections.boxes_xyxy)
    (folder / "model.yaml").write_text(text.replace("  pad_value: 114\n", "  pad_value: 114\n  exif_orientation: 1\n"))
    with pytest.raises(ConfigError, match=r"input.exif_orientation' has value 1; expected true or false"):
        load_model_config(folder / "model.yaml")


def test_over_grpc_the_boxes_are_in_the_upright_frame(shapes: Detector) -> None:
    """The server's own path (trtserve.v1 Detect of the encoded photo): the same boxes as the upright JPEG."""
    import asyncio

    import grpc

    from trtserve.serving.server import Server, ServerSettings
    from trtserve.v1 import detection_pb2 as pb
    from trtserve.v1 import detection_pb2_grpc as pb_grpc

    from .servers import with_server

    upright = render_scene(11, 2).image_bgr
    photo = with_segment(encoded(np.ascontiguousarray(np.rot90(upright, 1))), exif_app1(6))
    (want,) = shapes.detect([encoded(upright)])
    assert want.detections is not None and len(want.detections) > 0

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        reply = await pb_grpc.DetectionServiceStub(channel).Detect(pb.DetectRequest(image=pb.Image(encoded=photo)))
        boxes = [[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max] for d in reply.detections]
        assert [d.class_id for d in reply.detections] == want.detections.class_ids.tolist()
        np.testing.assert_allclose(boxes, want.detections.boxes_xyxy, atol=2.0)

    asyncio.run(with_server(ServerSettings(grpc_port=0, metrics_port=0, http_port=None), ModelRepository(
        shapes.config.directory.parent), test))
