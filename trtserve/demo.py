"""The in-process demo: detect on the bundled sample video, write an annotated video and a JSON summary."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.detector import Detector
from trtserve.errors import InvalidFrameError
from trtserve.synthetic import video_frames, write_video
from trtserve.vision.draw import annotate
from trtserve.vision.matching import MatchCounts, match

logger = logging.getLogger(__name__)
SAMPLE_FRAMES = 300


@dataclass(frozen=True)
class DemoResult:
    summary: dict[str, Any]
    annotated_video: Path
    summary_json: Path


def sample_video(directory: Path) -> Path:
    """The deterministic sample video, written once into ``directory``."""
    path = directory / "sample.mp4"
    if not path.is_file():
        write_video(path, SAMPLE_FRAMES)
    return path


def run_demo(detector: Detector, out_dir: Path, video: Path | None = None, progress: bool = True) -> DemoResult:
    """Detect on every frame of ``video`` (default: the sample), batched at the model's max batch size."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    use_sample = video is None
    source = sample_video(out_dir) if video is None else video
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise InvalidFrameError(f"cannot open video {source}; is it a video file OpenCV can read?")
    fps = cap.get(cv2.CAP_PROP_FPS) or 15.0
    truth = video_frames(SAMPLE_FRAMES) if use_sample else None
    annotated_path = out_dir / "annotated.mp4"
    writer: cv2.VideoWriter | None = None
    per_class: Counter[str] = Counter()
    counts = MatchCounts(0, 0, 0, 0.0)
    frames = detections_total = 0
    compute_s = 0.0
    batch_size = detector.config.max_batch_size
    names = detector.config.class_names
    bar = tqdm(total=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None, unit="frame", disable=not progress)
    try:
        while True:
            batch: list[NDArray[np.uint8]] = []
            for _ in range(batch_size):
                ok, frame = cap.read()
                if not ok:
                    break
                batch.append(np.asarray(frame, np.uint8))
            if not batch:
                break
            t0 = time.perf_counter()
            results = detector.detect(batch)
            compute_s += time.perf_counter() - t0
            for frame, result in zip(batch, results):
                if result.detections is None:
                    raise RuntimeError(f"demo frame {frames} failed: {result.error}")
                det = result.detections
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = cv2.VideoWriter(str(annotated_path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
                writer.write(annotate(frame, det, names))
                per_class.update(names[int(c)] for c in det.class_ids)
                detections_total += len(det)
                if truth is not None:
                    gt = next(truth)
                    counts += match(det.boxes_xyxy, det.scores, det.class_ids, gt.boxes_xyxy, gt.class_ids)
                frames += 1
            bar.update(len(batch))
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    summary: dict[str, Any] = {
        "model": detector.config.name, "precision": detector.precision, "video": str(source),
        "frames": frames, "detections": detections_total, "detections_per_class": dict(sorted(per_class.items())),
        "fps": round(frames / compute_s, 1) if compute_s else 0.0, "batch_size": batch_size,
        "annotated_video": str(annotated_path),
    }
    if truth is not None:
        summary["ground_truth"] = {"f1_iou50": round(counts.f1, 4), "mean_iou": round(counts.mean_iou, 4),
                                   "missed": counts.false_negatives, "extra": counts.false_positives}
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return DemoResult(summary, annotated_path, summary_path)
