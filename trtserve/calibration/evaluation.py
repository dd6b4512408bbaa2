"""COCO mAP of a model on the held-out synthetic set (pycocotools' COCOeval)."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from trtserve.datasets.synthetic import Scene, evaluation_set
from trtserve.detector import Detector
from trtserve.errors import ServerError
from trtserve.reports import JsonReport

if TYPE_CHECKING:
    from trtserve.heads.base import Thresholds
    from trtserve.vision.detections import Detections
    from trtserve.vision.letterbox import Letterbox

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
    multi_label: bool = False  # every class above threshold per box (as Ultralytics val), not one per box


@dataclass(frozen=True)
class FrameTruth:
    """The ground truth of one frame for :func:`coco_scores`: boxes in frame pixels (xyxy) and model class ids.

    ``crowd`` marks COCO ``iscrowd`` regions (matched detections there are neither true nor false positives).
    """

    height_px: int
    width_px: int
    boxes_xyxy: NDArray[np.floating]  # [N, 4]
    class_ids: NDArray[np.integer]  # [N]
    crowd: NDArray[np.bool_] | None = None  # [N]; None: no crowd regions


@dataclass(frozen=True)
class CocoScores:
    """pycocotools' COCOeval summary: mAP over the classes that have ground truth, and AP per class id."""

    map50: float
    map50_95: float
    ap50: tuple[float | None, ...]  # per model class id; None where the class has no ground truth
    ap50_95: tuple[float | None, ...]


def coco_scores(truths: Sequence[FrameTruth], predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                num_classes: int) -> CocoScores:
    """COCO mAP@0.5, mAP@0.5:0.95 (area all, 100 detections) and per-class AP of per-frame
    ``(boxes_xyxy, scores, class_ids)`` against ``truths`` (same order and length)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    dets: list[dict[str, object]] = []
    has_truth = np.zeros(num_classes, bool)
    for i, (truth, (boxes, scores, classes)) in enumerate(zip(truths, predictions)):
        images.append({"id": i, "width": truth.width_px, "height": truth.height_px})
        crowd = truth.crowd if truth.crowd is not None else np.zeros(len(truth.class_ids), bool)
        for b, c, k in zip(np.asarray(truth.boxes_xyxy).tolist(), np.asarray(truth.class_ids).tolist(),
                           crowd.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c),
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": int(bool(k))})
            has_truth[int(c)] |= not k
        for b, s, c in zip(np.asarray(boxes).tolist(), np.asarray(scores).tolist(), np.asarray(classes).tolist()):
            dets.append({"image_id": i, "category_id": int(c), "score": float(s),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    if not dets:
        zeros = tuple(0.0 if t else None for t in has_truth)
        return CocoScores(0.0, 0.0, zeros, zeros)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth_set = COCO()
        truth_set.dataset = {"images": images, "annotations": annotations,
                             "categories": [{"id": c} for c in range(num_classes)]}
        truth_set.createIndex()
        found = truth_set.loadRes(dets)
        ev = COCOeval(truth_set, found, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]; -1: no truth

    def ap(p: NDArray[np.floating]) -> float | None:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else None

    ap50 = tuple(ap(precision[0, :, k, 0, -1]) for k in range(num_classes))
    ap50_95 = tuple(ap(precision[:, :, k, 0, -1]) for k in range(num_classes))
    return CocoScores(max(float(ev.stats[1]), 0.0), max(float(ev.stats[0]), 0.0), ap50, ap50_95)


def coco_map(scenes: list[Scene], predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
             num_classes: int) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) of per-scene (boxes_xyxy, scores, class_ids) against the scenes' truth."""
    truths = [FrameTruth(int(s.image_bgr.shape[0]), int(s.image_bgr.shape[1]), s.boxes_xyxy, s.class_ids)
              for s in scenes]
    scores = coco_scores(truths, predictions, num_classes)
    return scores.map50, scores.map50_95


def detect_letterboxed(detector: Detector, frames: Sequence[NDArray[np.uint8]], geometries: Sequence[Letterbox],
                       thresholds: Thresholds, multi_label: bool = False) -> list[Detections]:
    """Detections on letterboxed frames (at most max_batch_size): the model's own decode, or with ``multi_label`` a
    candidate per class above the threshold at each anchor (:func:`trtserve.heads.multilabel.decode_multi_label`,
    as Ultralytics ``val`` scores)."""
    if not multi_label:
        return detector.infer_letterboxed(frames, geometries, [thresholds] * len(frames))
    from trtserve.heads.multilabel import decode_multi_label

    outputs = detector.infer_tensor(detector.preprocessor.to_input(frames))
    return decode_multi_label(detector.head, outputs, list(geometries), thresholds)


def evaluate(detector: Detector, num_images: int = 300, multi_label: bool = False,
             iou_threshold: float | None = None) -> EvalResult:
    """Detect on ``num_images`` held-out scenes and score them with COCO mAP (``multi_label``: see
    :func:`detect_letterboxed`; ``iou_threshold``: the NMS IoU, default the model's)."""
    t0 = time.monotonic()
    scenes = list(evaluation_set(num_images))
    thresholds = detector.with_thresholds(score=EVAL_SCORE_THRESHOLD, iou=iou_threshold,
                                          max_detections=EVAL_MAX_DETECTIONS)
    preds = []
    if multi_label:
        from trtserve.heads.multilabel import require_multi_label

        require_multi_label(detector.head)
        step = detector.config.max_batch_size
        for start in range(0, len(scenes), step):
            boxed = [detector.letterbox(detector.prepare(s.image_bgr)) for s in scenes[start : start + step]]
            found = detect_letterboxed(detector, [b[0] for b in boxed], [b[1] for b in boxed], thresholds, True)
            preds += [(d.boxes_xyxy, d.scores, d.class_ids) for d in found]
    else:
        for i, r in enumerate(detector.detect([s.image_bgr for s in scenes], thresholds)):
            if r.detections is None:  # held-out scenes are arrays the model takes: a failure is the model's
                raise ServerError(f"evaluation scene {i} failed: {r.error}") from r.error
            preds.append((r.detections.boxes_xyxy, r.detections.scores, r.detections.class_ids))
    map50, map50_95 = coco_map(scenes, preds, len(detector.config.class_names))
    result = EvalResult(map50, map50_95, len(scenes), detector.precision, round(time.monotonic() - t0, 2),
                        multi_label)
    logger.info("eval %s: mAP50 %.3f mAP50-95 %.3f on %d images", detector.precision, map50, map50_95, len(scenes))
    return result
