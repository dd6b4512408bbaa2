"""The demo: the bundled detector on the sample video, annotated video plus JSON summary.

:func:`run_demo_over_grpc` (what ``make demo`` runs) starts a real ``trtserve serve`` process on a free
loopback port, streams the video through ``StreamDetect`` and stops the server with SIGTERM;
:func:`run_demo` does the same detection in-process. Both share the writing and the summary.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.datasets.synthetic import video_frames, write_video
from trtserve.detector import Detector
from trtserve.errors import RemoteCallError, ServerError
from trtserve.reports import OMIT_WHEN_NONE, JsonReport
from trtserve.serving.process import start_server_process, stop_server_process
from trtserve.vision.detections import Detections
from trtserve.vision.draw import annotate
from trtserve.vision.matching import MatchCounts, match
from trtserve.vision.video import Video

SAMPLE_FRAMES = 300


@dataclass(frozen=True)
class GroundTruthAgreement(JsonReport):
    """The demo's detections against the bundled sample's ground truth (IoU 0.5, same class)."""

    f1_iou50: float
    mean_iou: float  # of the matched pairs
    missed: int  # ground-truth boxes no detection matched
    extra: int  # detections that matched no ground-truth box


@dataclass(frozen=True)
class DemoDrift(JsonReport):
    """The server's drift window after a demo over gRPC: the served precision against its FP32 shadow."""

    shadow_precision: str
    samples: int  # frames compared
    skipped: int  # sampled batches skipped while the shadow was busy
    agreement_f1: float  # served vs shadow detections at IoU 0.5
    mean_iou: float
    out_of_range_ratio: float  # activations outside the calibrated range
    below_threshold: bool  # agreement_f1 under the model's drift agreement_threshold, on a full enough window


@dataclass(frozen=True, kw_only=True)
class DemoSummary(JsonReport):
    """The demo's summary (``summary.json``, ``--json``); the fields that do not apply to a run are None.

    ``server``, ``mean_batch_size`` and ``server_exit_code`` are set over gRPC only, ``drift`` too when the
    server ran the shadow; ``batch_size`` in-process only; ``ground_truth`` on the bundled sample only.
    """

    mode: str  # grpc | in-process
    server: str | None = field(default=None, metadata=OMIT_WHEN_NONE)  # the server's address
    model: str
    precision: str
    video: str
    batch_size: int | None = field(default=None, metadata=OMIT_WHEN_NONE)  # frames per Detector.detect call
    frames: int
    detections: int
    detections_per_class: Mapping[str, int]  # class name -> detections, by name
    fps: float  # frames detected, annotated and written per second
    annotated_video: str
    ground_truth: GroundTruthAgreement | None = field(default=None, metadata=OMIT_WHEN_NONE)
    mean_batch_size: float | None = field(default=None, metadata=OMIT_WHEN_NONE)  # the server's, since it started
    drift: DemoDrift | None = field(default=None, metadata=OMIT_WHEN_NONE)
    # after SIGTERM; 0 when the server drained and stopped cleanly
    server_exit_code: int | None = field(default=None, metadata=OMIT_WHEN_NONE)


@dataclass(frozen=True)
class DemoResult:
    summary: DemoSummary
    annotated_video: Path
    summary_json: Path


def sample_video(directory: Path) -> Path:
    """The deterministic sample video, written once into ``directory``."""
    path = directory / "sample.mp4"
    if not path.is_file():
        write_video(path, SAMPLE_FRAMES)
    return path


def _write_summary(summary: DemoSummary, path: Path) -> None:
    path.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")


def _write_and_summarize(pairs: Iterator[tuple[NDArray[np.uint8], Detections]], out_dir: Path, fps: float,
                         class_names: tuple[str, ...], with_truth: bool, progress_total: int,
                         progress: bool, header: Callable[..., DemoSummary]) -> DemoResult:
    """Annotate and tally ``pairs`` into ``out_dir``; ``header`` is :class:`DemoSummary` with the run's own
    fields bound (mode, model, precision, video, and server or batch_size), to which this adds the tally."""
    from tqdm import tqdm

    truth = video_frames(SAMPLE_FRAMES) if with_truth else None
    annotated_path = out_dir / "annotated.mp4"
    writer: cv2.VideoWriter | None = None
    per_class: Counter[str] = Counter()
    counts = MatchCounts()
    frames = detections_total = 0
    t0 = time.perf_counter()
    with tqdm(total=progress_total or None, unit="frame", disable=not progress) as bar:
        try:
            for frame, det in pairs:
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = cv2.VideoWriter(str(annotated_path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
                writer.write(annotate(frame, det, class_names))
                per_class.update(class_names[int(c)] for c in det.class_ids)
                detections_total += len(det)
                if truth is not None:
                    gt = next(truth)
                    counts += match(det.boxes_xyxy, det.scores, det.class_ids, gt.boxes_xyxy, gt.class_ids)
                frames += 1
                bar.update(1)
        finally:
            if writer is not None:
                writer.release()
    elapsed = time.perf_counter() - t0
    ground_truth = None if truth is None else GroundTruthAgreement(
        f1_iou50=round(counts.f1, 4), mean_iou=round(counts.mean_iou, 4), missed=counts.false_negatives,
        extra=counts.false_positives)
    summary = header(frames=frames, detections=detections_total, detections_per_class=dict(sorted(per_class.items())),
                     fps=round(frames / elapsed, 1) if elapsed else 0.0, annotated_video=str(annotated_path),
                     ground_truth=ground_truth)
    summary_path = out_dir / "summary.json"
    _write_summary(summary, summary_path)
    return DemoResult(summary, annotated_path, summary_path)


def run_demo(detector: Detector, out_dir: Path, video: Path | None = None, progress: bool = True) -> DemoResult:
    """Detect in-process on every frame of ``video`` (default: the sample), in batches of max_batch_size."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source = sample_video(out_dir) if video is None else video
    reader = Video(source)
    frames, fps, count = reader.frames(), reader.fps, reader.frame_count
    batch_size = detector.config.max_batch_size

    def pairs() -> Iterator[tuple[NDArray[np.uint8], Detections]]:
        done = 0
        while batch := [f for _, f in zip(range(batch_size), frames)]:
            for frame, result in zip(batch, detector.detect(batch)):
                if result.detections is None:
                    raise ServerError(f"{source}: frame {done} failed: {result.error}") from result.error
                done += 1
                yield frame, result.detections

    header = partial(DemoSummary, mode="in-process", model=detector.config.name, precision=detector.precision,
                     video=str(source), batch_size=batch_size)
    return _write_and_summarize(pairs(), out_dir, fps, detector.config.class_names, video is None, count,
                                progress, header)


def run_demo_over_grpc(repository: Path | None, model: str, precision: str, out_dir: Path,
                       video: Path | None = None, progress: bool = True, startup_timeout_s: float = 120.0,
                       shadow_rate: float = 0.0) -> DemoResult:
    """Start ``trtserve serve`` on a free port, stream the video through it, stop it with SIGTERM.

    With ``shadow_rate`` > 0 the server compares that fraction of batches with the FP32 shadow; the
    summary then carries the drift window (``drift``).
    """
    from trtserve.client import DetectionClient, detections_of
    from trtserve.v1 import detection_pb2 as pb

    out_dir.mkdir(parents=True, exist_ok=True)
    source = sample_video(out_dir) if video is None else video
    server, address = start_server_process(repository, model, precision, out_dir / "server.log", startup_timeout_s,
                                           extra_args=["--shadow-rate", str(shadow_rate)])
    try:
        with DetectionClient(address, model) as client:
            names = tuple(client.model_info(model).classes)
            reader = Video(source)
            frames, fps, count = reader.frames(), reader.fps, reader.frame_count

            def pairs() -> Iterator[tuple[NDArray[np.uint8], Detections]]:
                for frame, answer in client.stream_frames(frames, "demo"):
                    if answer.status != pb.STATUS_OK:
                        raise RemoteCallError(f"server {address}: frame {answer.sequence}: {answer.error_code} "
                                              f"{answer.reason}")
                    yield frame, detections_of(answer)

            header = partial(DemoSummary, mode="grpc", server=address, model=model, precision=precision,
                             video=str(source))
            result = _write_and_summarize(pairs(), out_dir, fps, names, video is None, count, progress, header)
            info = client.model_info(model)
            for _ in range(20):  # let the shadow finish the samples still in flight (it runs at idle priority)
                if not info.HasField("drift"):
                    break
                time.sleep(0.2)
                settled, info = info, client.model_info(model)
                if info.drift.samples == settled.drift.samples:
                    break
            mean_batch_size = round(info.stats.mean_batch_size, 2)
            drift: DemoDrift | None = None
            if info.HasField("drift"):
                d = info.drift
                drift = DemoDrift(
                    shadow_precision=d.shadow_precision, samples=d.samples, skipped=d.skipped,
                    agreement_f1=round(d.agreement_f1, 4), mean_iou=round(d.mean_iou, 4),
                    out_of_range_ratio=round(d.out_of_range_ratio, 6), below_threshold=d.below_threshold)
    finally:
        exit_code = stop_server_process(server)
    summary = replace(result.summary, mean_batch_size=mean_batch_size, drift=drift, server_exit_code=exit_code)
    _write_summary(summary, result.summary_json)
    return replace(result, summary=summary)
