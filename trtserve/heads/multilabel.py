"""Multi-label decoding, for evaluation only (``trtserve eval --multi-label``): every class above the score threshold
at an anchor is a candidate box, not only the best one — what Ultralytics ``val`` does (``multi_label=True`` in its
NMS), so that an anchor whose box is both a plausible "car" and "truck" counts for both classes.

It raises mAP (more recall for the second-best class of a box) and so is the number Ultralytics prints; serving
keeps one label per box (:meth:`Head.decode`), which is what pycocotools scores on single-label predictions and
what a client wants. Only the layouts that keep a score per class reach here: ``yolov8`` and ``yolov5``;
``end2end`` exports chose one class per box inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trtserve.errors import UsageError
from trtserve.heads.base import Head, Thresholds, cxcywh_to_xyxy, single_output
from trtserve.vision.detections import Detections, Outputs
from trtserve.vision.letterbox import Letterbox

MULTI_LABEL_HEADS = ("yolov8", "yolov5")


def require_multi_label(head: Head) -> None:
    """UsageError unless ``head``'s outputs keep a score per class (what multi-label decoding needs)."""
    if head.type not in MULTI_LABEL_HEADS:
        raise UsageError(f"--multi-label needs per-class scores (head types {list(MULTI_LABEL_HEADS)}); this model's "
                         f"head is '{head.type}', which gives one class per box: evaluate it without --multi-label")


def decode_multi_label(head: Head, outputs: Outputs, geometries: Sequence[Letterbox], thresholds: Thresholds
                       ) -> list[Detections]:
    """One :class:`Detections` per frame with a candidate per (anchor, class) whose score is above
    ``thresholds.score``, then the head's own NMS (class-aware unless ``class_agnostic_nms``) and top-k.

    UsageError for a head whose outputs keep no score per class (``end2end``, ``raw``)."""
    require_multi_label(head)
    out = single_output(outputs)
    result = []
    for pred, geometry in zip(out, geometries):
        if head.type == "yolov8":  # [4 + nc, N]
            scores = pred[4:]
            cls, anchor = np.nonzero(scores > thresholds.score)
            boxes = cxcywh_to_xyxy(pred[:4, anchor].T)
        else:  # yolov5: [N, 5 + nc], confidence = objectness * class probability
            scores = (pred[:, 5:] * pred[:, 4:5]).T
            cls, anchor = np.nonzero(scores > thresholds.score)
            boxes = cxcywh_to_xyxy(pred[anchor, :4])
        result.append(head.finish(boxes, scores[cls, anchor], cls.astype(np.int64), geometry, thresholds))
    return result
