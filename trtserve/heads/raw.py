"""Raw passthrough: no decoding; each frame gets its slice of every output tensor."""

from __future__ import annotations

from trtserve.heads.base import Head, Thresholds
from trtserve.vision.detections import Detections, Outputs
from trtserve.vision.letterbox import Letterbox


class RawHead(Head):
    type = "raw"
    auto_detect = False  # it accepts any outputs

    @classmethod
    def accepts(cls, output_shapes: list[tuple[int | None, ...]], num_classes: int) -> bool:
        return True

    def decode(self, outputs: Outputs, geometries: list[Letterbox], thresholds: Thresholds) -> list[Detections]:
        empty = Detections.empty()
        return [Detections(empty.boxes_xyxy, empty.scores, empty.class_ids,
                           raw={k: v[i].copy() for k, v in outputs.items()}) for i in range(len(geometries))]
