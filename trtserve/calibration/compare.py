"""FP32 against INT8 of one model: COCO mAP on the held-out synthetic set and detection agreement."""

from __future__ import annotations

from trtserve.calibration.report import PrecisionComparison
from trtserve.config import ModelConfig


def compare_precisions(config: ModelConfig, num_images: int) -> PrecisionComparison:
    """FP32 vs INT8 mAP on ``num_images`` held-out synthetic images and INT8's detection agreement with FP32.

    Needs both precisions in ``config`` (the FP32 model and its ``int8`` artifact).
    """
    from trtserve.calibration.evaluation import EvalResult, evaluate
    from trtserve.datasets.synthetic import evaluation_set
    from trtserve.detector import Detector, FrameResult
    from trtserve.vision.matching import MatchCounts, match

    scores: dict[str, EvalResult] = {}
    answers: dict[str, list[FrameResult]] = {}
    for precision in ("fp32", "int8"):
        with Detector.open(config, precision) as detector:
            scores[precision] = evaluate(detector, num_images)
            answers[precision] = detector.detect([s.image_bgr for s in evaluation_set(num_images)])
    total = MatchCounts()
    for a, b in zip(answers["int8"], answers["fp32"]):
        if a.detections is None or b.detections is None:
            continue
        total += match(a.detections.boxes_xyxy, a.detections.scores, a.detections.class_ids,
                       b.detections.boxes_xyxy, b.detections.class_ids)
    return PrecisionComparison(
        map50_fp32=scores["fp32"].map50, map50_95_fp32=scores["fp32"].map50_95,
        map50_int8=scores["int8"].map50, map50_95_int8=scores["int8"].map50_95,
        agreement_f1=round(total.f1, 4), agreement_mean_iou=round(total.mean_iou, 4), images=num_images)
