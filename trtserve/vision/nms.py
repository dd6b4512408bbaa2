"""Greedy non-maximum suppression in NumPy, class-aware by coordinate offset."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def box_iou(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    """Pairwise IoU of xyxy boxes: ``[N, 4] x [M, 4] -> [N, M]``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(
    boxes_xyxy: NDArray[np.floating],
    scores: NDArray[np.floating],
    iou_threshold: float,
    class_ids: NDArray[np.integer] | None = None,
    max_detections: int | None = None,
) -> NDArray[np.int64]:
    """Indices of the kept boxes, highest score first.

    A box is suppressed by a higher-scoring kept box whose IoU with it is strictly above
    ``iou_threshold``; with ``class_ids`` only boxes of the same class suppress each other.
    Ties in score keep the lower index first (stable sort).
    """
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return np.zeros(0, np.int64)
    if class_ids is not None:
        # shift each class into its own region so boxes of different classes never overlap
        span = float(np.abs(boxes).max()) * 2 + 1.0
        boxes = boxes + (np.asarray(class_ids, np.float64) * span)[:, None]
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    limit = max_detections if max_detections is not None else len(order)
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        ious = box_iou(boxes[i : i + 1], boxes[rest])[0]
        order = rest[ious <= iou_threshold]
    return np.array(keep, np.int64)
