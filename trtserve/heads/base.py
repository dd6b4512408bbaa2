"""The detector-head seam: raw model outputs in, boxes in original-frame pixels out."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from trtserve.config import HeadSpec, ModelConfig
from trtserve.vision.detections import Detections, Outputs
from trtserve.vision.letterbox import Letterbox
from trtserve.vision.nms import nms
from trtserve.vision.nms_batch import nms_per_frame, split_by_frame

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

    def check_model(self, config: ModelConfig, where: str) -> None:
        """Refuse (ModelLoadError) a model this head cannot decode correctly for reasons its output shapes do not
        show; called once at load. Most heads have none."""
        return None

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

    def finish_batch(self, frame_ids: NDArray[np.integer], boxes_xyxy: NDArray[np.floating],
                     scores: NDArray[np.floating], class_ids: NDArray[np.integer], geometries: Sequence[Letterbox],
                     thresholds: Thresholds, suppress: bool = True) -> list[Detections]:
        """:meth:`finish` for the candidates of a whole batch at once (``frame_ids[i]``: candidate ``i``'s frame, in
        ``0 .. len(geometries) - 1``): the same detections per frame, with one NMS call and one un-letterbox for the
        batch instead of a Python round per frame (README, "Serving, measured")."""
        num_frames = len(geometries)
        frames = np.asarray(frame_ids, np.int64).reshape(-1)
        keep = np.nonzero(scores > thresholds.score)[0]
        counts = np.bincount(frames[keep], minlength=num_frames)
        if keep.size and int(counts.max()) > MAX_NMS_CANDIDATES:  # a frame's best MAX_NMS_CANDIDATES, as finish does
            parts = split_by_frame(frames, keep, num_frames)
            keep = np.sort(np.concatenate([p if p.size <= MAX_NMS_CANDIDATES else
                                           p[np.argsort(-scores[p], kind="stable")[:MAX_NMS_CANDIDATES]]
                                           for p in parts]))
        frames, boxes, sc, cls = frames[keep], boxes_xyxy[keep], scores[keep], class_ids[keep]
        if suppress:
            orders = nms_per_frame(boxes, sc, frames, num_frames, thresholds.iou,
                                   None if self.spec.class_agnostic_nms else cls, thresholds.max_detections)
        else:
            by_score = np.argsort(-np.asarray(sc, np.float64), kind="stable")
            orders = [o[: thresholds.max_detections] for o in split_by_frame(frames, by_score, num_frames)]
        order = np.concatenate(orders) if orders else np.zeros(0, np.int64)
        mapped = _to_original(boxes[order], frames[order], geometries)
        kept_scores, kept_classes = sc[order].astype(np.float32), cls[order].astype(np.int64)
        bounds = np.cumsum([len(o) for o in orders])[:-1]
        return [Detections(b, s, c) for b, s, c in zip(np.split(mapped, bounds), np.split(kept_scores, bounds),
                                                        np.split(kept_classes, bounds))]


def dim_is(dim: int | None, value: int) -> bool:
    """A dimension matches ``value`` when it equals it or is dynamic (``None``: known only at run time)."""
    return dim is None or dim == value


def single_output(outputs: Outputs) -> NDArray[np.float32]:
    (array,) = outputs.values()
    return np.asarray(array, dtype=np.float32)


def cxcywh_to_xyxy(b: NDArray[np.floating]) -> NDArray[np.float32]:
    half = b[:, 2:4] / 2
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1).astype(np.float32)


def _to_original(boxes_xyxy: NDArray[np.floating], frames: NDArray[np.int64], geometries: Sequence[Letterbox]
                 ) -> NDArray[np.float32]:
    """:meth:`Letterbox.to_original` (clipped) of boxes of several frames at once, each by its frame's geometry: the
    same float64 arithmetic, so the same float32 boxes."""
    geo = np.array([(g.pad_left_px, g.pad_top_px, g.scale_x, g.scale_y, g.original_width_px, g.original_height_px)
                    for g in geometries], np.float64).reshape(-1, 6)[frames]
    out = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - geo[:, 0:1]) / geo[:, 2:3]
    out[:, [1, 3]] = (out[:, [1, 3]] - geo[:, 1:2]) / geo[:, 3:4]
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0.0, geo[:, 4:5])
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0.0, geo[:, 5:6])
    return out.astype(np.float32)
