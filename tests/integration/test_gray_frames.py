"""A grayscale or 16-bit raw frame (IR / night camera) is detected on, as the same frame in BGR uint8 is."""

import numpy as np

from trtserve.datasets.synthetic import render_scene
from trtserve.detector import Detector


def test_gray_and_16_bit_raw_frames_are_detected_like_bgr(shapes: Detector) -> None:
    gray = render_scene(3, 4).image_bgr.mean(axis=2).astype(np.uint8)
    bgr = np.dstack([gray] * 3)
    want, got_gray, got_1ch, got_deep = shapes.detect([bgr, gray, gray[..., None], gray.astype(np.uint16) * 257])
    assert want.detections is not None and len(want.detections) > 0
    for got in (got_gray, got_1ch, got_deep):
        assert got.ok and got.detections is not None
        np.testing.assert_allclose(got.detections.boxes_xyxy, want.detections.boxes_xyxy, atol=1e-4)
        np.testing.assert_array_equal(got.detections.class_ids, want.detections.class_ids)
