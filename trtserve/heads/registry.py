"""Detector heads by ``head.type``: model.yaml validation and :func:`trtserve.heads.factory.make_head` read this
table. A new output layout is one file in ``trtserve/heads/`` plus one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trtserve.registry import Registry

if TYPE_CHECKING:
    from trtserve.heads.base import Head

AUTO = "auto"  # not a head: pick the only registered head whose layout matches the outputs
NEEDS_CLASSES = "needs_classes"  # tag: the layout's width depends on the class count, so model.yaml must list them

HEADS: Registry[Head] = Registry("head type")
HEADS.register("yolov8", "trtserve.heads.yolov8:YoloV8Head", tags={NEEDS_CLASSES})
HEADS.register("yolov5", "trtserve.heads.yolov5:YoloV5Head", tags={NEEDS_CLASSES})
HEADS.register("end2end", "trtserve.heads.end2end:EndToEndHead")
HEADS.register("raw", "trtserve.heads.raw:RawHead")


def head_types() -> tuple[str, ...]:
    """What ``head.type`` may say: ``auto`` or a registered head."""
    return (AUTO, *HEADS.names())
