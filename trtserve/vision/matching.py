"""Matching two sets of detections (greedy by score, same class, IoU threshold)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from trtserve.vision.nms import box_iou


@dataclass(frozen=True)
class MatchCounts:
    true_positives: int = 0
    false_positives: int = 0  # only in the candidate set
    false_negatives: int = 0  # only in the reference set
    iou_sum: float = 0.0

    @classmethod
    def from_pairs(cls, pairs: list[tuple[int, int, float]], candidates: int, references: int) -> MatchCounts:
        """Counts of :func:`match_pairs` output for ``candidates`` and ``references`` boxes."""
        tp = len(pairs)
        return cls(tp, candidates - tp, references - tp, sum(p[2] for p in pairs))

    @property
    def f1(self) -> float:
        denom = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 1.0 if denom == 0 else 2 * self.true_positives / denom

    @property
    def mean_iou(self) -> float:
        return self.iou_sum / self.true_positives if self.true_positives else 0.0

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(self.true_positives + other.true_positives, self.false_positives + other.false_positives,
                           self.false_negatives + other.false_negatives, self.iou_sum + other.iou_sum)


def match_pairs(candidate_boxes: NDArray[np.floating], candidate_scores: NDArray[np.floating],
                candidate_classes: NDArray[np.integer], reference_boxes: NDArray[np.floating],
                reference_classes: NDArray[np.integer], iou_threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedily match candidates (highest score first) to unmatched references of the same class.

    Returns ``(candidate index, reference index, IoU)`` per match.
    """
    ious = box_iou(candidate_boxes, reference_boxes)
    same = np.asarray(candidate_classes)[:, None] == np.asarray(reference_classes)[None, :]
    ious = np.where(same, ious, 0.0)
    taken = np.zeros(ious.shape[1], bool)
    pairs: list[tuple[int, int, float]] = []
    if ious.shape[1] == 0:
        return pairs
    for i in np.argsort(-np.asarray(candidate_scores), kind="stable"):
        row = np.where(taken, -1.0, ious[i])
        j = int(row.argmax())
        if row[j] >= iou_threshold:
            taken[j] = True
            pairs.append((int(i), j, float(row[j])))
    return pairs


def match(candidate_boxes: NDArray[np.floating], candidate_scores: NDArray[np.floating],
          candidate_classes: NDArray[np.integer], reference_boxes: NDArray[np.floating],
          reference_classes: NDArray[np.integer], iou_threshold: float = 0.5) -> MatchCounts:
    """Counts of :func:`match_pairs`: matched, only in the candidates, only in the references."""
    pairs = match_pairs(candidate_boxes, candidate_scores, candidate_classes, reference_boxes, reference_classes,
                        iou_threshold)
    return MatchCounts.from_pairs(pairs, len(candidate_boxes), len(reference_boxes))
