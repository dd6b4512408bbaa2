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
        out = single_output(outputs)
        result = []
        for pred, geometry in zip(out, geometries):
            cls_scores = pred[:, 5:] * pred[:, 4:5]  # confidence = objectness * class probability
            class_ids = cls_scores.argmax(1)
            scores = cls_scores[np.arange(len(pred)), class_ids]
            result.append(self.finish(cxcywh_to_xyxy(pred[:, :4]), scores, class_ids, geometry, thresholds))
        return result
