"""COCO mAP of a model on the held-out synthetic set (pycocotools' COCOeval)."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass

import numpy as np

from trtserve.datasets.synthetic import Scene, evaluation_set
from trtserve.detector import Detector
from trtserve.errors import ServerError
from trtserve.reports import JsonReport

logger = logging.getLogger(__name__)

EVAL_SCORE_THRESHOLD = 0.001  # mAP integrates over the whole precision/recall curve
EVAL_MAX_DETECTIONS = 100  # COCOeval summarizes AP at maxDets=100


@dataclass(frozen=True)
class EvalResult(JsonReport):
    """COCO mAP of one precision of a model on the held-out synthetic set (``trtserve eval``)."""

    map50: float
    map50_95: float
    images: int
    precision: str
    seconds: float  # detection and scoring, rounded to 0.01 s


def coco_map(scenes: list[Scene], predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
             num_classes: int) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) of per-scene (boxes_xyxy, scores, class_ids) against the scenes' truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    dets: list[dict[str, object]] = []
    for i, (scene, (boxes, scores, classes)) in enumerate(zip(scenes, predictions)):
        h, w = scene.image_bgr.shape[:2]
        images.append({"id": i, "width": w, "height": h})
        for b, c in zip(scene.boxes_xyxy.tolist(), scene.class_ids.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c),
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0})
        for b, s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist()):
            dets.append({"image_id": i, "category_id": int(c), "score": float(s),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": c} for c in range(num_classes)]}
        truth.createIndex()
        if not dets:
            return 0.0, 0.0
        found = truth.loadRes(dets)
        ev = COCOeval(truth, found, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])


def evaluate(detector: Detector, num_images: int = 300) -> EvalResult:
    """Detect on ``num_images`` held-out scenes and score them with COCO mAP."""
    t0 = time.monotonic()
    scenes = list(evaluation_set(num_images))
    thresholds = detector.with_thresholds(score=EVAL_SCORE_THRESHOLD, max_detections=EVAL_MAX_DETECTIONS)
    results = detector.detect([s.image_bgr for s in scenes], thresholds)
    preds = []
    for i, r in enumerate(results):
        if r.detections is None:  # held-out scenes are arrays the model takes: a failure is the model's
            raise ServerError(f"evaluation scene {i} failed: {r.error}") from r.error
        preds.append((r.detections.boxes_xyxy, r.detections.scores, r.detections.class_ids))
    map50, map50_95 = coco_map(scenes, preds, len(detector.config.class_names))
    result = EvalResult(map50, map50_95, len(scenes), detector.precision, round(time.monotonic() - t0, 2))
    logger.info("eval %s: mAP50 %.3f mAP50-95 %.3f on %d images", detector.precision, map50, map50_95, len(scenes))
    return result
