"""Ultralytics YOLOv8 / YOLO11 layout: one output ``[B, 4 + nc, N]`` (cx, cy, w, h, class scores)."""

from __future__ import annotations

import numpy as np

from trtserve.heads.base import Head, Thresholds, cxcywh_to_xyxy, dim_is, single_output
from trtserve.vision.detections import Detections, Outputs
from trtserve.vision.letterbox import Letterbox


class YoloV8Head(Head):
    type = "yolov8"

    @classmethod
    def accepts(cls, output_shapes: list[tuple[int | None, ...]], num_classes: int) -> bool:
        return len(output_shapes) == 1 and len(output_shapes[0]) == 3 and dim_is(output_shapes[0][1], 4 + num_classes)

    def decode(self, outputs: Outputs, geometries: list[Letterbox], thresholds: Thresholds) -> list[Detections]:
        out = single_output(outputs)
        result = []
        for pred, geometry in zip(out, geometries):  # pred: [4 + nc, N]
            cls_scores = pred[4:]
            best = cls_scores.max(0)
            keep = np.nonzero(best > thresholds.score)[0]  # the class argmax only where a box can survive
            class_ids = cls_scores[:, keep].argmax(0)
            result.append(self.finish(cxcywh_to_xyxy(pred[:4, keep].T), best[keep], class_ids, geometry,
                                      thresholds))
        return result
