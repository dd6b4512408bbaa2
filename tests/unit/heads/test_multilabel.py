"""Multi-label decoding (``eval --multi-label``): every class above threshold at an anchor is a candidate, as
Ultralytics val scores; checked against a plain per-(anchor, class) loop, and refused for heads with one class
per box."""

import numpy as np
import pytest

from trtserve.config import HeadSpec
from trtserve.errors import UsageError
from trtserve.heads.base import Thresholds
from trtserve.heads.factory import make_head
from trtserve.heads.multilabel import decode_multi_label
from trtserve.vision.letterbox import Letterbox
from trtserve.vision.nms import nms

GEO = Letterbox.plan((256, 256), (256, 256))  # identity geometry: boxes stay in input pixels
T = Thresholds(0.25, 0.5, 100)


def spec(kind: str) -> HeadSpec:
    return HeadSpec(kind, 0.25, 0.5, 100, False)


def yolov8_output() -> np.ndarray:
    nc, n = 3, 4
    out = np.zeros((1, 4 + nc, n), np.float32)
    out[0, :4, 0] = [40, 72, 16, 8]
    out[0, 4:, 0] = [0.1, 0.9, 0.6]  # two classes above 0.25 at one anchor: single-label keeps only class 1
    out[0, :4, 1] = [41, 72, 16, 8]
    out[0, 4:, 1] = [0.0, 0.8, 0.0]  # a duplicate of anchor 0's class 1: suppressed
    out[0, :4, 2] = [150, 150, 20, 20]
    out[0, 4:, 2] = [0.3, 0.0, 0.28]
    out[0, :4, 3] = [200, 200, 10, 10]
    out[0, 4:, 3] = [0.2, 0.1, 0.0]  # below threshold
    return out


def reference(boxes_xyxy: np.ndarray, scores: np.ndarray, t: Thresholds) -> set[tuple]:
    """Every (anchor, class) above the threshold, class-aware NMS: a loop, independent of the head's code."""
    cand = [(a, c) for a in range(scores.shape[0]) for c in range(scores.shape[1]) if scores[a, c] > t.score]
    b = np.array([boxes_xyxy[a] for a, _ in cand], np.float32).reshape(-1, 4)
    s = np.array([scores[a, c] for a, c in cand], np.float32)
    c = np.array([k for _, k in cand], np.int64)
    keep = nms(b, s, t.iou, c, t.max_detections)
    return {(int(c[k]), round(float(s[k]), 4), tuple(np.round(b[k], 2))) for k in keep}


def found(d) -> set[tuple]:
    return {(int(c), round(float(s), 4), tuple(np.round(b, 2))) for b, s, c in zip(d.boxes_xyxy, d.scores, d.class_ids)}


def test_yolov8_every_class_above_threshold_is_a_candidate() -> None:
    out = yolov8_output()
    head = make_head(spec("yolov8"), 3, [out.shape])
    (single,) = head.decode({"o": out}, [GEO], T)
    (multi,) = decode_multi_label(head, {"o": out}, [GEO], T)
    assert sorted(single.class_ids.tolist()) == [0, 1]  # anchor 0 as class 1, anchor 2 as class 0
    assert sorted(multi.class_ids.tolist()) == [0, 1, 2, 2]  # + anchor 0 as class 2, anchor 2 as class 2
    pred = out[0]
    cx, cy, w, h = pred[:4]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    assert found(multi) == reference(xyxy, pred[4:].T, T)


def test_yolov5_multi_label_uses_objectness_times_class() -> None:
    nc, n = 2, 3
    out = np.zeros((1, n, 5 + nc), np.float32)
    out[0, 0] = [50, 50, 20, 20, 0.9, 0.8, 0.5]  # 0.72 and 0.45: both kept with multi-label
    out[0, 1] = [120, 120, 20, 20, 0.5, 0.9, 0.4]  # 0.45 and 0.2
    out[0, 2] = [200, 200, 20, 20, 0.2, 0.9, 0.9]  # 0.18: none
    head = make_head(spec("yolov5"), nc, [out.shape])
    (multi,) = decode_multi_label(head, {"o": out}, [GEO], T)
    (single,) = head.decode({"o": out}, [GEO], T)
    assert len(single) == 2 and len(multi) == 3
    cx, cy, w, h = out[0, :, 0], out[0, :, 1], out[0, :, 2], out[0, :, 3]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    assert found(multi) == reference(xyxy, out[0, :, 5:] * out[0, :, 4:5], T)


def test_heads_with_one_class_per_box_are_refused() -> None:
    out = np.zeros((1, 10, 6), np.float32)
    head = make_head(spec("end2end"), 3, [out.shape])
    with pytest.raises(UsageError, match=r"--multi-label needs per-class scores .* head is 'end2end'"):
        decode_multi_label(head, {"o": out}, [GEO], T)
