"""YOLOv5 layout: one output ``[B, N, 5 + nc]`` (cx, cy, w, h, objectness, class probabilities)."""

from __future__ import annotations

import numpy as np

from trtserve.heads.base import Head, Thresholds, cxcywh_to_xyxy, dim_is, single_output
from trtserve.vision.detections import Detections, Outputs
from trtserve.vision.letterbox import Letterbox


class YoloV5Head(Head):
    type = "yolov5"

    @classmethod
    def accepts(cls, output_shapes: list[tuple[int | None, ...]], num_classes: int) -> bool:
        return len(output_shapes) == 1 and len(output_shapes[0]) == 3 and dim_is(output_shapes[0][2], 5 + num_classes)

    def decode(self, outputs: Outputs, geometries: list[Letterbox], thresholds: Thresholds) -> list[Detections]:
        out = single_output(outputs)  # [B, N, 5 + nc]
        objectness, cls_probs = out[..., 4], out[..., 5:]
        # confidence = objectness * class probability. Its best class per anchor without the [B, N, nc] product:
        # x -> objectness * x is monotonic (non-decreasing for objectness >= 0, in floating point too), so the best
        # product is objectness times the largest (or, for a negative objectness, the smallest) probability
        best = objectness * np.where(objectness >= 0, cls_probs.max(axis=-1), cls_probs.min(axis=-1))
        frames, anchors = np.nonzero(best > thresholds.score)  # products and argmax only where a box can survive
        candidates = out[frames, anchors]  # [K, 5 + nc]
        class_ids = (candidates[:, 5:] * candidates[:, 4:5]).argmax(axis=1)
        scores = candidates[np.arange(len(candidates)), 5 + class_ids] * candidates[:, 4]
        return self.finish_batch(frames, cxcywh_to_xyxy(candidates[:, :4]), scores, class_ids, geometries,
                                 thresholds)
