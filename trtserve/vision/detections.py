"""What a detector answers for one frame, as arrays: the type heads produce and clients, drawing and drift read."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Outputs = dict[str, NDArray[np.generic]]  # a model's raw outputs by tensor name


@dataclass(frozen=True)
class Detections:
    """Detections of one frame. Boxes are xyxy in original-frame pixels, clipped to the frame."""

    boxes_xyxy: NDArray[np.float32]
    scores: NDArray[np.float32]
    class_ids: NDArray[np.int64]
    raw: Outputs = field(default_factory=dict)  # the raw head's per-frame tensors

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
