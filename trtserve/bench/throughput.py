"""In-process throughput benchmark: raw backend and end-to-end detection, side by side in one run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from numpy.typing import NDArray

from trtserve.datasets.synthetic import render_scene
from trtserve.detector import Detector
from trtserve.reports import JsonReport


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


@dataclass(frozen=True)
class ThroughputRow(JsonReport):
    """One batch size of :func:`throughput`: frames/s of the backend alone and end to end, rounded as printed."""

    batch: int
    raw_backend_fps: float  # backend.infer alone on the preprocessed batch
    end_to_end_fps: float  # Detector.detect: preprocessing, inference, decoding
    efficiency: float  # end_to_end_fps / raw_backend_fps
    median_batch_ms: float  # one detect call
    speedup_vs_first: float  # end_to_end_fps against the first batch size's (NaN when that one is 0)


def throughput(detector: Detector, batch_sizes: list[int], repeats: int = 20) -> list[ThroughputRow]:
    """Frames/s of ``backend.infer`` alone and of ``detect`` (decode-free: arrays in) per batch size.

    One row per entry of ``batch_sizes``, in that order; each figure is the median of ``repeats`` calls.
    """
    frames = [render_scene(99, i, (640, 480)).image_bgr for i in range(max(batch_sizes))]
    measured = []  # (batch, raw_s, e2e_s, end_to_end_fps)
    for batch in batch_sizes:
        tensor, _ = detector.preprocessor.batch(frames[:batch])
        feeds: dict[str, NDArray[np.generic]] = {detector.input_name: tensor}
        chunk = frames[:batch]
        raw_s = median_seconds(partial(detector.backend.infer, feeds), repeats)
        e2e_s = median_seconds(partial(detector.detect, chunk), repeats)
        measured.append((batch, raw_s, e2e_s, round(batch / e2e_s, 1)))
    base = measured[0][3]
    return [ThroughputRow(batch=batch, raw_backend_fps=round(batch / raw_s, 1), end_to_end_fps=fps,
                          efficiency=round(raw_s / e2e_s, 3), median_batch_ms=round(e2e_s * 1000, 2),
                          speedup_vs_first=round(fps / base, 2) if base else float(np.nan))
            for batch, raw_s, e2e_s, fps in measured]
