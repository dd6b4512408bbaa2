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
        out = single_output(outputs)  # [B, 4 + nc, N]
        best = out[:, 4:].max(axis=1)  # [B, N]: each anchor's best class score
        frames, anchors = np.nonzero(best > thresholds.score)  # the class argmax only where a box can survive
        class_ids = out[frames, 4:, anchors].argmax(axis=1)  # [K, nc] gathered for the K candidates
        boxes = cxcywh_to_xyxy(out[frames, :4, anchors])
        return self.finish_batch(frames, boxes, best[frames, anchors], class_ids, geometries, thresholds)
