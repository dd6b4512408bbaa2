"""The batched yolov8 / yolov5 decode (one NMS call per batch) gives exactly what the per-frame decode gave.

The reference below is the decode as it was before it was batched (a Python round per frame through
``Head.finish``), kept here to pin the detections: same boxes, scores and classes, bit for bit, on outputs of the
640x640 Ultralytics layout ([B, 84, 8400]) with planted overlapping boxes, and on the corner cases.
"""

from __future__ import annotations

import numpy as np
import pytest

import trtserve.heads.base as base
from trtserve.config import HeadSpec
from trtserve.heads.base import Head, Thresholds, cxcywh_to_xyxy
from trtserve.heads.yolov5 import YoloV5Head
from trtserve.heads.yolov8 import YoloV8Head
from trtserve.vision.detections import Detections
from trtserve.vision.letterbox import Letterbox
from trtserve.vision.nms import nms
from trtserve.vision.nms_batch import nms_per_frame


def reference_v8(head: Head, out: np.ndarray, geometries: list[Letterbox], t: Thresholds) -> list[Detections]:
    result = []
    for pred, geometry in zip(out.astype(np.float32), geometries):
        cls_scores = pred[4:]
        best = cls_scores.max(0)
        keep = np.nonzero(best > t.score)[0]
        class_ids = cls_scores[:, keep].argmax(0)
        result.append(head.finish(cxcywh_to_xyxy(pred[:4, keep].T), best[keep], class_ids, geometry, t))
    return result


def reference_v5(head: Head, out: np.ndarray, geometries: list[Letterbox], t: Thresholds) -> list[Detections]:
    result = []
    for pred, geometry in zip(out.astype(np.float32), geometries):
        cls_scores = pred[:, 5:] * pred[:, 4:5]
        class_ids = cls_scores.argmax(1)
        scores = cls_scores[np.arange(len(pred)), class_ids]
        result.append(head.finish(cxcywh_to_xyxy(pred[:, :4]), scores, class_ids, geometry, t))
    return result


def assert_same(got: list[Detections], want: list[Detections]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.boxes_xyxy.dtype == np.float32 and g.scores.dtype == np.float32 and g.class_ids.dtype == np.int64
        assert g.boxes_xyxy.shape == w.boxes_xyxy.shape
        np.testing.assert_array_equal(g.boxes_xyxy, w.boxes_xyxy)
        np.testing.assert_array_equal(g.scores, w.scores)
        np.testing.assert_array_equal(g.class_ids, w.class_ids)


def v8_output(rng: np.random.Generator, frames: int, nc: int = 80, anchors: int = 8400, size: int = 640,
              objects: int = 40) -> np.ndarray:
    """[B, 4 + nc, N]: low random scores everywhere (as random or quiet models give), and per frame ``objects``
    clusters of overlapping boxes of a few classes, some of them above the threshold."""
    out = np.zeros((frames, 4 + nc, anchors), np.float32)
    out[:, 0:2] = rng.uniform(0, size, (frames, 2, anchors))
    out[:, 2:4] = rng.uniform(2, 120, (frames, 2, anchors))
    out[:, 4:] = rng.uniform(0, 0.2, (frames, nc, anchors))
    for f in range(frames - 1):  # the last frame keeps no box above the threshold
        for _ in range(objects):
            centre, wh = rng.uniform(0, size, 2), rng.uniform(8, 200, 2)
            members = rng.choice(anchors, int(rng.integers(1, 12)), replace=False)
            out[f, 0:2, members] = centre + rng.normal(0, 4, (members.size, 2))
            out[f, 2:4, members] = wh * rng.uniform(0.8, 1.2, (members.size, 2))
            for c in rng.choice(nc, int(rng.integers(1, 3)), replace=False):
                out[f, 4 + c, members] = rng.uniform(0.1, 0.99, members.size)
    return out


GEOMETRIES = [Letterbox.plan((360, 480), (640, 640)), Letterbox.plan((1080, 1920), (640, 640)),
              Letterbox.plan((640, 640), (640, 640)), Letterbox.plan((480, 200), (640, 640))]


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("max_detections", [100, 3])
def test_yolov8_640_layout_same_detections_as_per_frame(agnostic: bool, max_detections: int) -> None:
    rng = np.random.default_rng(640)
    out = v8_output(rng, len(GEOMETRIES))
    head = YoloV8Head(HeadSpec("yolov8", 0.25, 0.5, max_detections, agnostic), 80)
    t = Thresholds(0.25, 0.5, max_detections)
    want = reference_v8(head, out, GEOMETRIES, t)
    assert [len(d) for d in want][:-1] and all(len(d) for d in want[:-1]) and len(want[-1]) == 0  # the test bites
    if max_detections == 100:
        assert sum(len(d) for d in want) > 60  # many boxes survive, many are suppressed
    assert_same(head.decode({"output0": out}, GEOMETRIES, t), want)


def test_yolov8_nan_inf_and_degenerate_boxes() -> None:
    rng = np.random.default_rng(1)
    out = v8_output(rng, 3, nc=6, anchors=500, size=256, objects=10)
    out[0, 4:, :50] = np.nan  # NaN scores: never a detection
    out[1, 2, :40] = 0.0  # zero-width boxes: dropped by NMS
    out[1, 0, 40:60] = np.inf
    geos = [Letterbox.plan((240, 320), (256, 256))] * 3
    head = YoloV8Head(HeadSpec("yolov8", 0.25, 0.45, 100, False), 6)
    t = Thresholds(0.25, 0.45, 100)
    assert_same(head.decode({"o": out}, geos, t), reference_v8(head, out, geos, t))


def test_yolov8_frame_cap_on_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "MAX_NMS_CANDIDATES", 25)  # finish and finish_batch both read it
    rng = np.random.default_rng(2)
    out = v8_output(rng, 3, nc=4, anchors=400, size=256, objects=30)
    out[0, 4, ::3] = 0.5  # ties at the cap: the lower anchor first, in both
    geos = [Letterbox.plan((256, 256), (256, 256))] * 3
    head = YoloV8Head(HeadSpec("yolov8", 0.25, 0.5, 100, False), 4)
    t = Thresholds(0.25, 0.5, 100)
    want = reference_v8(head, out, geos, t)
    assert_same(head.decode({"o": out}, geos, t), want)


def test_yolov5_same_detections_as_per_frame() -> None:
    rng = np.random.default_rng(5)
    v8 = v8_output(rng, 4, nc=20, anchors=3000, size=640, objects=25)
    out = np.ascontiguousarray(np.concatenate([v8[:, :4], rng.uniform(0, 1, (4, 1, 3000)).astype(np.float32),
                                               v8[:, 4:] * 1.3], axis=1).transpose(0, 2, 1))  # [B, N, 5 + nc]
    out[0, :30, 4] = -0.5  # a negative objectness (not a sigmoid): the smallest probability gives the best product
    out[0, :30, 5:] = rng.uniform(-1, 0, (30, 20))
    out[1, :10, 4] = np.inf  # inf x 0 = NaN products: dropped in both
    out[1, :10, 5] = 0.0
    out[2, :5, 5:] = np.nan
    head = YoloV5Head(HeadSpec("yolov5", 0.25, 0.5, 100, False), 20)
    t = Thresholds(0.25, 0.5, 100)
    with np.errstate(invalid="ignore"):  # inf x 0
        want = reference_v5(head, out, GEOMETRIES, t)
        got = head.decode({"o": out}, GEOMETRIES, t)
    assert sum(len(d) for d in want) > 20
    assert_same(got, want)


def test_nms_per_frame_is_nms_of_each_frame() -> None:
    rng = np.random.default_rng(9)
    n = 600
    xy = rng.uniform(0, 300, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(-5, 60, (n, 2))], axis=1)  # some without area
    scores = rng.uniform(0, 1, n).round(2)  # ties
    classes = rng.integers(0, 3, n)
    frames = rng.integers(0, 5, n)  # frame 5 of 6 gets none
    for cls in (classes, None):
        got = nms_per_frame(boxes, scores, frames, 6, 0.4, cls, 7)
        assert len(got) == 6 and got[5].size == 0
        for f in range(6):
            idx = np.nonzero(frames == f)[0]
            want = idx[nms(boxes[idx], scores[idx], 0.4, None if cls is None else cls[idx], 7)]
            np.testing.assert_array_equal(got[f], want)
    assert all(k.size == 0 for k in nms_per_frame(boxes, scores, frames, 6, 0.4, classes, 0))
    assert [k.size for k in nms_per_frame(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 2, 0.5)] == [0, 0]
