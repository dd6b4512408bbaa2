"""Detector heads by type, and auto-detection of the head from output shapes."""

from __future__ import annotations

from trtserve.config import HeadSpec
from trtserve.errors import ModelLoadError
from trtserve.heads.base import Detections, Head, Thresholds
from trtserve.heads.end2end import EndToEndHead
from trtserve.heads.raw import RawHead
from trtserve.heads.yolov5 import YoloV5Head
from trtserve.heads.yolov8 import YoloV8Head

HEADS: dict[str, type[Head]] = {h.type: h for h in (YoloV8Head, YoloV5Head, EndToEndHead, RawHead)}
_DETECTING = [h for h in HEADS.values() if h is not RawHead]


def make_head(spec: HeadSpec, num_classes: int, output_shapes: list[tuple[int | None, ...]],
              where: str = "model") -> Head:
    """Build the configured head, checking it against the outputs; ``auto`` picks the only matching one."""
    shapes = [tuple(s) for s in output_shapes]
    if spec.type == "auto":
        # only dims known now count: a dynamic dim would let every layout "fit"
        known: list[tuple[int | None, ...]] = [tuple(-1 if d is None else d for d in s) for s in shapes]
        matching = [h for h in _DETECTING if h.accepts(known, num_classes)]
        if len(matching) != 1:
            found = [h.type for h in matching] or "none"
            raise ModelLoadError(
                f"{where}: cannot pick a head from output shapes {shapes} with {num_classes} classes "
                f"(matching head types: {found}); set head.type to one of {sorted(HEADS)} in model.yaml")
        return matching[0](spec, num_classes)
    head_cls = HEADS[spec.type]
    if not head_cls.accepts(shapes, num_classes):
        raise ModelLoadError(f"{where}: head.type '{spec.type}' does not match output shapes {shapes} with "
                             f"{num_classes} classes; fix head.type or classes in model.yaml (or use 'raw')")
    return head_cls(spec, num_classes)


__all__ = ["HEADS", "Detections", "Head", "Thresholds", "make_head"]
