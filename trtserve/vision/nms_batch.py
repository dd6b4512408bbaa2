"""Non-maximum suppression for a whole batch: what :func:`trtserve.vision.nms.nms` gives frame by frame, with the
arrays OpenCV needs prepared once for the batch and one ``cv2.dnn.NMSBoxesBatched`` call per frame on slices of them.

Scores become their rank over the batch: a frame's boxes keep the order they have among themselves (stable, ties
to the lower index, NaN last), which is all the greedy loop reads; classes are OpenCV's groups, numbered densely.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray


def split_by_frame(frame_ids: NDArray[np.integer], indices: NDArray[np.int64], num_frames: int
                   ) -> list[NDArray[np.int64]]:
    """``indices`` (already in the order wanted) split into one array per frame, each keeping that order."""
    frames = np.asarray(frame_ids, np.int64)[indices]
    grouped = indices[np.argsort(frames, kind="stable")]
    bounds = np.cumsum(np.bincount(frames, minlength=num_frames))[:-1]
    return list(np.split(grouped, bounds)) if num_frames else []


def nms_per_frame(boxes_xyxy: NDArray[np.floating], scores: NDArray[np.floating], frame_ids: NDArray[np.integer],
                  num_frames: int, iou_threshold: float, class_ids: NDArray[np.integer] | None = None,
                  max_detections: int | None = None) -> list[NDArray[np.int64]]:
    """For each frame ``0 .. num_frames - 1``: the indices (into these arrays) of its kept boxes, highest score first.

    The same rules as :func:`~trtserve.vision.nms.nms` applied to each frame's boxes alone (``frame_ids[i]`` is box
    ``i``'s frame): suppressed by a higher-scoring kept box of the same frame (and class, with ``class_ids``) whose
    IoU with it is above ``iou_threshold``; boxes without area dropped; at most ``max_detections`` per frame.
    """
    empty = [np.zeros(0, np.int64) for _ in range(num_frames)]
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    if max_detections is not None and max_detections <= 0:
        return empty
    valid = np.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[0]
    if valid.size == 0:
        return empty
    boxes = boxes[valid]
    corner = boxes[:, :2].min(axis=0)  # no negative coordinate: OpenCV's group offset assumes that
    xywh = np.concatenate([boxes[:, :2] - corner, boxes[:, 2:] - boxes[:, :2]], axis=1)
    n = valid.size
    by_score = np.argsort(-np.asarray(scores, np.float64).reshape(-1)[valid], kind="stable")  # NaN last
    rank = np.empty(n, np.float32)
    rank[by_score] = np.arange(n, 0, -1, dtype=np.float32)  # n .. 1: distinct, positive, exact in float32
    frames = np.asarray(frame_ids, np.int64).reshape(-1)[valid]
    if class_ids is None:
        groups = np.zeros(n, np.int32)
    else:  # classes numbered densely: small offsets between OpenCV's groups
        groups = np.unique(np.asarray(class_ids).reshape(-1)[valid], return_inverse=True)[1].astype(np.int32)
        groups = groups.reshape(-1)
    # one OpenCV call per frame on slices of the arrays prepared once: its greedy loop compares a box with every box
    # kept so far in the call, so one call for the whole batch would compare across frames (2x slower with 40
    # objects a frame) for nothing
    by_frame = np.argsort(frames, kind="stable")
    bounds = np.searchsorted(frames[by_frame], np.arange(num_frames + 1))
    result = []
    for f in range(num_frames):
        idx = by_frame[bounds[f] : bounds[f + 1]]
        if idx.size == 0:
            result.append(np.zeros(0, np.int64))
            continue
        # arrays where OpenCV's stubs say sequences: the bindings take both, arrays without a per-box conversion
        kept = cv2.dnn.NMSBoxesBatched(xywh[idx], rank[idx], groups[idx], 0.0, float(iou_threshold))  # type: ignore[arg-type]
        order = valid[idx[np.asarray(kept, np.int64).reshape(-1)]]  # highest score first
        result.append(order if max_detections is None else order[:max_detections])
    return result
