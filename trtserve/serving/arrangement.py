"""``batcher.instances: auto``: how many batches a model runs at once, and on how many threads each, measured at load.

A fixed default (two batches at once, cores / 2 threads each) is right for one engine time and wrong for another:
a slow engine (a 640x640 model) gains nothing from a second batch in flight and loses latency to it, and a fast one
(INT8) needs the second batch to keep the cores busy while the first one's detections are decoded. So at load the
server measures the engine itself: for each candidate ``k`` in 1..min(cores, 4) it opens the model with
``intra_op_threads`` (or, when that is 0, cores // k) threads per batch and runs ``k`` batches of the batcher's
``max_batch_size`` at once for :data:`SECONDS_PER_CANDIDATE`; the arrangement kept is **the fewest instances whose
throughput is within 5 % of the best** (fewer batches in flight: lower latency, more CPU left for decoding). The
measured figures are logged, and GetModel reports the instances chosen.

A model listing several GPUs (``device: [0, 1]`` in model.yaml) spreads its instances over them round-robin
(:func:`spread`); with ``auto`` the candidates are then multiples of the GPU count, so every GPU gets as many.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from trtserve.backends.devices import spread
from trtserve.detector import Detector

logger = logging.getLogger(__name__)

__all__ = ["Candidate", "candidates", "choose", "spread"]

SECONDS_PER_CANDIDATE = 0.5
WITHIN = 0.05  # of the best throughput: fewer instances win within this


@dataclass(frozen=True)
class Candidate:
    instances: int
    threads: int  # intra-op threads per batch
    fps: float  # frames per second of the engine alone, max_batch_size per call
    batch_ms: float  # one batch's time with ``instances`` at once


def _measure(detector: Detector, instances: int, seconds: float, batch: int | None = None) -> tuple[float, float]:
    h, w = detector.preprocessor.input_hw
    frame = np.full((h, w, 3), detector.config.input.pad_value, np.uint8)
    batch = batch or detector.config.max_batch_size
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


def candidates(cores: int, step: int = 1) -> list[int]:
    """The instance counts ``auto`` measures: 1..min(cores, 4), or with ``step`` GPUs the multiples of ``step`` up to
    that (at least ``step`` itself: one instance per GPU)."""
    top = min(cores, 4)
    return [k for k in range(step, max(step, top) + 1, step)]


def _rule(measured: list[Candidate]) -> int:
    """The index of the rule's choice among ``measured``: the fewest instances within WITHIN of the best."""
    best = max(c.fps for c in measured)
    return next(i for i, c in enumerate(measured) if c.fps >= (1 - WITHIN) * best)


def choose(open_detector: Callable[[int, int], Detector], intra_op_threads: int = 0, cores: int | None = None,
           seconds: float = SECONDS_PER_CANDIDATE, batch: int | None = None, step: int = 1
           ) -> tuple[Detector, Candidate, list[Candidate]]:
    """Open the model per candidate arrangement (``open_detector(instances, threads)``), measure each at ``batch``
    frames a call (the batcher's max_batch_size, which serving sends; None: the model's), keep the rule's choice
    (see the module) open; returns it, its figures and every candidate's.

    At most two candidates are open at once: the one being measured and the rule's choice so far — any other is
    closed once measured. The choice can move to a candidate measured earlier and already closed (its throughput
    is within 5 % of a new best that the previous choice is not): that one is opened again at the end. ``step``:
    the number of GPUs the model lists (candidates are its multiples, :func:`candidates`)."""
    cores = cores or os.cpu_count() or 1
    measured: list[Candidate] = []
    held: tuple[int, Detector] | None = None  # the rule's choice so far (index in measured) and its detector
    try:
        for k in candidates(cores, step):
            threads = intra_op_threads or max(1, cores // k)
            detector = open_detector(k, threads)
            try:
                fps, batch_ms = _measure(detector, k, seconds, batch)
            except BaseException:
                detector.close()
                raise
            measured.append(Candidate(k, threads, round(fps, 1), round(batch_ms, 2)))
            choice = _rule(measured)
            if held is not None and held[0] != choice:
                held[1].close()
                held = None
            if held is None and choice == len(measured) - 1:
                held = (choice, detector)
            else:
                detector.close()
        choice = _rule(measured)
        if held is None:  # the choice was measured, closed, then became the choice: open it again
            chosen = measured[choice]
            held = (choice, open_detector(chosen.instances, chosen.threads))
    except BaseException:
        if held is not None:
            held[1].close()
        raise
    chosen, kept = measured[held[0]], held[1]
    logger.info("model %s: instances auto: %d batch(es) at once on %d thread(s) each (engine alone, batch %d: %s)",
                kept.config.name, chosen.instances, chosen.threads, batch or kept.config.max_batch_size,
                ", ".join(f"{c.instances}x{c.threads} threads {c.fps} frames/s, {c.batch_ms} ms a batch"
                          for c in measured))
    return kept, chosen, measured
