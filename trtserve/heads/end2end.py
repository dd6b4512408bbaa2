"""End-to-end (NMS-free) layout of YOLOv10 and NMS-embedded exports: ``[B, N, 6]`` = x1, y1, x2, y2, score, class."""

from __future__ import annotations

from trtserve.heads.base import Head, Thresholds, dim_is, single_output
from trtserve.vision.detections import Detections, Outputs
from trtserve.vision.letterbox import Letterbox


class EndToEndHead(Head):
    type = "end2end"

    @classmethod
    def accepts(cls, output_shapes: list[tuple[int | None, ...]], num_classes: int) -> bool:
        return len(output_shapes) == 1 and len(output_shapes[0]) == 3 and dim_is(output_shapes[0][2], 6)

    def decode(self, outputs: Outputs, geometries: list[Letterbox], thresholds: Thresholds) -> list[Detections]:
        out = single_output(outputs)
        return [self.finish(pred[:, :4], pred[:, 4], pred[:, 5].round().astype("int64"), geometry, thresholds,
                            suppress=False)  # the model already suppressed duplicates
                for pred, geometry in zip(out, geometries)]
