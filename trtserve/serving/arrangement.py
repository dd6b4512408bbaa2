"""``batcher.instances: auto``: how many batches a model runs at once, and on how many threads each, measured at load.

A fixed default (two batches at once, cores / 2 threads each) is right for one engine time and wrong for another:
a slow engine (a 640x640 model) gains nothing from a second batch in flight and loses latency to it, and a fast one
(INT8) needs the second batch to keep the cores busy while the first one's detections are decoded. So at load the
server measures the engine itself: for each candidate ``k`` in 1..min(cores, 4) it opens the model with
``intra_op_threads`` (or, when that is 0, cores // k) threads per batch and runs ``k`` batches of
``max_batch_size`` at once for :data:`SECONDS_PER_CANDIDATE`; the arrangement kept is **the fewest instances whose
throughput is within 5 % of the best** (fewer batches in flight: lower latency, more CPU left for decoding). The
measured figures are logged, and GetModel reports the instances chosen.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from trtserve.detector import Detector

logger = logging.getLogger(__name__)

SECONDS_PER_CANDIDATE = 0.5
WITHIN = 0.05  # of the best throughput: fewer instances win within this


@dataclass(frozen=True)
class Candidate:
    instances: int
    threads: int  # intra-op threads per batch
    fps: float  # frames per second of the engine alone, max_batch_size per call
    batch_ms: float  # one batch's time with ``instances`` at once


def _measure(detector: Detector, instances: int, seconds: float) -> tuple[float, float]:
    h, w = detector.preprocessor.input_hw
    frame = np.full((h, w, 3), detector.config.input.pad_value, np.uint8)
    batch = detector.config.max_batch_size
    tensor = detector.preprocessor.to_input([frame] * batch)

    def work(deadline: float) -> tuple[int, float]:
        calls, busy = 0, 0.0
        while True:
            t0 = time.perf_counter()
            detector.infer_tensor(tensor)
            busy += time.perf_counter() - t0
            calls += 1
            if t0 >= deadline:
                return calls, busy

    with ThreadPoolExecutor(instances) as pool:
        list(pool.map(work, [0.0] * instances))  # warm-up: one call each
        start = time.perf_counter()
        done = list(pool.map(work, [start + seconds] * instances))
        elapsed = time.perf_counter() - start
    calls = sum(c for c, _ in done)
    return calls * batch / elapsed, 1000 * sum(b for _, b in done) / calls


def choose(open_detector: Callable[[int, int], Detector], intra_op_threads: int = 0, cores: int | None = None,
           seconds: float = SECONDS_PER_CANDIDATE) -> tuple[Detector, Candidate, list[Candidate]]:
    """Open the model per candidate arrangement (``open_detector(instances, threads)``), measure each, keep the
    rule's choice (see the module) open and close the others; returns it, its figures and every candidate's."""
    cores = cores or os.cpu_count() or 1
    measured: list[tuple[Candidate, Detector]] = []
    try:
        for k in range(1, min(cores, 4) + 1):
            threads = intra_op_threads or max(1, cores // k)
            detector = open_detector(k, threads)
            measured.append((Candidate(k, threads, 0.0, 0.0), detector))
            fps, batch_ms = _measure(detector, k, seconds)
            measured[-1] = (Candidate(k, threads, round(fps, 1), round(batch_ms, 2)), detector)
        best = max(c.fps for c, _ in measured)
        chosen, kept = next((c, d) for c, d in measured if c.fps >= (1 - WITHIN) * best)
    except BaseException:
        for _, d in measured:
            d.close()
        raise
    for _, d in measured:
        if d is not kept:
            d.close()
    logger.info("model %s: instances auto: %d batch(es) at once on %d thread(s) each (engine alone, batch %d: %s)",
                kept.config.name, chosen.instances, chosen.threads, kept.config.max_batch_size,
                ", ".join(f"{c.instances}x{c.threads} threads {c.fps} frames/s, {c.batch_ms} ms a batch"
                          for c, _ in measured))
    return kept, chosen, [c for c, _ in measured]
