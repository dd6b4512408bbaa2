"""The detector-head seam: raw model outputs in, boxes in original-frame pixels out."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from trtserve.config import HeadSpec
from trtserve.vision.detections import Detections, Outputs
from trtserve.vision.letterbox import Letterbox
from trtserve.vision.nms import nms

MAX_NMS_CANDIDATES = 30000


@dataclass(frozen=True)
class Thresholds:
    score: float
    iou: float
    max_detections: int

    @classmethod
    def from_spec(cls, spec: HeadSpec) -> Thresholds:
        return cls(spec.score_threshold, spec.iou_threshold, spec.max_detections)


class Head(abc.ABC):
    """Decodes one batch of outputs. Subclasses say which output shapes they accept and decode them."""

    type: ClassVar[str]
    auto_detect: ClassVar[bool] = True  # ``head.type: auto`` may pick it from the output shapes

    def __init__(self, spec: HeadSpec, num_classes: int) -> None:
        self.spec = spec
        self.num_classes = num_classes

    @classmethod
    @abc.abstractmethod
    def accepts(cls, output_shapes: list[tuple[int | None, ...]], num_classes: int) -> bool:
        """Whether outputs of these shapes (``None``: dynamic) have this head's layout."""

    @abc.abstractmethod
    def decode(self, outputs: Outputs, geometries: list[Letterbox], thresholds: Thresholds) -> list[Detections]:
        """One :class:`Detections` per frame of the batch, in batch order."""

    def decode_each(self, outputs: Outputs, geometries: Sequence[Letterbox], thresholds: Sequence[Thresholds]
                    ) -> list[Detections]:
        """:meth:`decode` with thresholds per frame (one batched call when they are all the same)."""
        if all(t == thresholds[0] for t in thresholds):
            return self.decode(outputs, list(geometries), thresholds[0])
        return [self.decode({k: v[i : i + 1] for k, v in outputs.items()}, [geo], t)[0]
                for i, (geo, t) in enumerate(zip(geometries, thresholds))]

    def finish(self, boxes_xyxy: NDArray[np.floating], scores: NDArray[np.floating],
               class_ids: NDArray[np.integer], geometry: Letterbox, thresholds: Thresholds,
               suppress: bool = True) -> Detections:
        """Score threshold, NMS (class-aware unless configured otherwise), top-k, un-letterbox."""
        keep = np.nonzero(scores > thresholds.score)[0]
        if keep.size > MAX_NMS_CANDIDATES:
            keep = keep[np.argsort(-scores[keep], kind="stable")[:MAX_NMS_CANDIDATES]]
        boxes, sc, cls = boxes_xyxy[keep], scores[keep], class_ids[keep]
        if suppress:
            order = nms(boxes, sc, thresholds.iou, None if self.spec.class_agnostic_nms else cls,
                        thresholds.max_detections)
        else:
            order = np.argsort(-sc, kind="stable")[: thresholds.max_detections]
        return Detections(geometry.to_original(boxes[order]), sc[order].astype(np.float32),
                          cls[order].astype(np.int64))


def dim_is(dim: int | None, value: int) -> bool:
    """A dimension matches ``value`` when it equals it or is dynamic (``None``: known only at run time)."""
    return dim is None or dim == value


def single_output(outputs: Outputs) -> NDArray[np.float32]:
    (array,) = outputs.values()
    return np.asarray(array, dtype=np.float32)


def cxcywh_to_xyxy(b: NDArray[np.floating]) -> NDArray[np.float32]:
    half = b[:, 2:4] / 2
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1).astype(np.float32)
