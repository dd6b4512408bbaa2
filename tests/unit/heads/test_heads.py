import numpy as np
import pytest

from trtserve.config import HeadSpec
from trtserve.errors import ModelLoadError
from trtserve.heads.base import Thresholds
from trtserve.heads.factory import make_head
from trtserve.vision.letterbox import Letterbox

SPEC = HeadSpec("auto", 0.25, 0.5, 100, False)
T = Thresholds(0.25, 0.5, 100)
# a 320x240 frame letterboxed into 256x256: scale 0.8, pad top 32
GEO = Letterbox.plan((240, 320), (256, 256))


def spec(kind: str) -> HeadSpec:
    return HeadSpec(kind, 0.25, 0.5, 100, False)


def test_geometry_assumed_by_these_tests() -> None:
    assert (GEO.scale_x, GEO.scale_y, GEO.pad_left_px, GEO.pad_top_px) == (0.8, 0.8, 0, 32)


def test_yolov8_layout_decodes_known_boxes() -> None:
    nc, n = 3, 5
    out = np.zeros((1, 4 + nc, n), np.float32)
    # anchor 0: class 1, 0.9, box cx=40 cy=72 w=16 h=8 (input px) -> xyxy 32,68,48,76 -> orig 40,45,60,55
    out[0, :4, 0] = [40, 72, 16, 8]
    out[0, 4 + 1, 0] = 0.9
    # anchor 1: duplicate of 0 of the same class, lower score: suppressed
    out[0, :4, 1] = [41, 72, 16, 8]
    out[0, 4 + 1, 1] = 0.8
    # anchor 2: same place, other class: kept (class-aware NMS)
    out[0, :4, 2] = [40, 72, 16, 8]
    out[0, 4 + 2, 2] = 0.6
    # anchor 3: below threshold
    out[0, :4, 3] = [100, 100, 10, 10]
    out[0, 4 + 0, 3] = 0.2
    head = make_head(SPEC, nc, [(None, 4 + nc, None)])
    assert head.type == "yolov8"
    (det,) = head.decode({"o": out}, [GEO], T)
    assert det.class_ids.tolist() == [1, 2]
    np.testing.assert_allclose(det.scores, [0.9, 0.6])
    np.testing.assert_allclose(det.boxes_xyxy, [[40, 45, 60, 55], [40, 45, 60, 55]], atol=1e-4)


def test_yolov5_layout_multiplies_objectness() -> None:
    nc = 2
    out = np.zeros((2, 4, 5 + nc), np.float32)
    out[0, 0] = [40, 72, 16, 8, 0.5, 0.9, 0.1]  # score 0.45 class 0
    out[0, 1] = [200, 100, 20, 20, 0.4, 0.1, 0.5]  # 0.2: below threshold
    out[1, 2] = [160, 160, 32, 32, 1.0, 0.0, 0.7]  # second frame: class 1, 0.7
    head = make_head(SPEC, nc, [(None, None, 5 + nc)])
    assert head.type == "yolov5"
    d0, d1 = head.decode({"o": out}, [GEO, GEO], T)
    assert d0.class_ids.tolist() == [0] and d1.class_ids.tolist() == [1]
    np.testing.assert_allclose(d0.scores, [0.45], rtol=1e-6)
    np.testing.assert_allclose(d1.boxes_xyxy, [[180, 140, 220, 180]], atol=1e-4)


def test_end2end_layout_keeps_overlaps_and_maps_back() -> None:
    out = np.zeros((1, 3, 6), np.float32)
    out[0, 0] = [32, 68, 48, 76, 0.9, 4]
    out[0, 1] = [33, 68, 48, 76, 0.8, 4]  # overlapping: an NMS-free model already decided
    out[0, 2] = [0, 0, 5, 5, 0.1, 1]
    head = make_head(spec("end2end"), 80, [(None, 300, 6)])
    (det,) = head.decode({"o": out}, [GEO], T)
    assert det.class_ids.tolist() == [4, 4]
    np.testing.assert_allclose(det.boxes_xyxy[0], [40, 45, 60, 55], atol=1e-4)


def test_boxes_are_clipped_to_the_frame() -> None:
    out = np.zeros((1, 4 + 1, 1), np.float32)
    out[0, :, 0] = [0, 128, 100, 400, 0.9]
    (det,) = make_head(spec("yolov8"), 1, [(1, 5, 1)]).decode({"o": out}, [GEO], T)
    np.testing.assert_allclose(det.boxes_xyxy, [[0, 0, 62.5, 240]], atol=1e-4)


def test_raw_passthrough_slices_per_frame() -> None:
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    head = make_head(spec("raw"), 0, [(None, 3, 4)])
    d0, d1 = head.decode({"x": a}, [GEO, GEO], T)
    np.testing.assert_array_equal(d1.raw["x"], a[1])
    assert len(d0) == 0


def test_max_detections_caps_output() -> None:
    n = 50
    out = np.zeros((1, 5, n), np.float32)
    out[0, 0] = np.arange(n) * 20 + 10
    out[0, 1] = 128
    out[0, 2:4] = 8
    out[0, 4] = np.linspace(0.3, 0.9, n)
    (det,) = make_head(spec("yolov8"), 1, [(None, 5, n)]).decode({"o": out}, [GEO], Thresholds(0.25, 0.5, 7))
    assert len(det) == 7 and det.scores[0] == pytest.approx(0.9)


def test_mismatched_head_type_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match=r"head.type 'yolov5' does not match output shapes"):
        make_head(spec("yolov5"), 6, [(None, 10, 1344)])


def test_auto_detection_refuses_ambiguity() -> None:
    # nc=1: [B, 6, 6] fits yolov5 (5+1), end2end (6) and not yolov8 (needs 5 rows); ambiguous
    with pytest.raises(ModelLoadError, match="cannot pick a head"):
        make_head(SPEC, 1, [(None, 6, 6)])
    with pytest.raises(ModelLoadError, match="matching head types: none"):
        make_head(SPEC, 3, [(None, 9, 9)])


def test_dynamic_output_dims_need_an_explicit_head_type() -> None:
    with pytest.raises(ModelLoadError, match="cannot pick a head"):
        make_head(SPEC, 6, [(None, None, None)])
    assert make_head(spec("yolov8"), 6, [(None, None, None)]).type == "yolov8"
