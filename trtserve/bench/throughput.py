"""In-process throughput benchmark: raw backend and end-to-end detection, side by side in one run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trtserve.datasets.synthetic import render_scene
from trtserve.detector import Detector


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


def throughput(detector: Detector, batch_sizes: list[int], repeats: int = 20) -> list[dict[str, Any]]:
    """Frames/s of ``backend.infer`` alone and of ``detect`` (decode-free: arrays in) per batch size."""
    frames = [render_scene(99, i, (640, 480)).image_bgr for i in range(max(batch_sizes))]
    rows = []
    for batch in batch_sizes:
        tensor, _ = detector.preprocessor.batch(frames[:batch])
        feeds: dict[str, NDArray[np.generic]] = {detector.input_name: tensor}
        chunk = frames[:batch]
        raw_s = median_seconds(partial(detector.backend.infer, feeds), repeats)
        e2e_s = median_seconds(partial(detector.detect, chunk), repeats)
        rows.append({"batch": batch, "raw_backend_fps": round(batch / raw_s, 1),
                     "end_to_end_fps": round(batch / e2e_s, 1),
                     "efficiency": round(raw_s / e2e_s, 3),
                     "median_batch_ms": round(e2e_s * 1000, 2)})
    base = rows[0]["end_to_end_fps"]
    for row in rows:
        row["speedup_vs_first"] = round(row["end_to_end_fps"] / base, 2) if base else float(np.nan)
    return rows
