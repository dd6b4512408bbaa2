"""Annotation drawing for demos and the ``detect --out`` option."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.vision.detections import Detections


def _color(class_id: int) -> tuple[int, int, int]:
    hue = (class_id * 47) % 180
    bgr = cv2.cvtColor(np.array([[[hue, 220, 255]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return (int(bgr[0]), int(bgr[1]), int(bgr[2]))


def annotate(frame: NDArray[np.uint8], detections: Detections, class_names: tuple[str, ...]) -> NDArray[np.uint8]:
    """A copy of ``frame`` with boxes and ``label score`` drawn on it."""
    out = frame.copy()
    for box, score, cls in zip(detections.boxes_xyxy, detections.scores, detections.class_ids):
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        color = _color(int(cls))
        cv2.rectangle(out, (x0, y0), (x1, y1), color, 2)
        label = f"{class_names[int(cls)] if int(cls) < len(class_names) else int(cls)} {float(score):.2f}"
        cv2.putText(out, label, (x0, max(10, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
    return out
