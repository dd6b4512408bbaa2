"""Recalibrating on live traffic: the frames pulled from a server's calibration reservoir, calibrated on in a
staging folder, compared with the INT8 model serving now, and promoted into the model's folder if better.

The transport is the caller's (a ``fetch`` callable; the CLI's is gRPC), so this stays a library of the
calibration stage. What it guarantees:

* **A pull is resumable and never used half-done.** Frames land one file each (``<id>.png``, written atomically,
  its sha256 checked) in the pull folder beside ``pull.json`` (server, model, the reservoir's id, the snapshot's
  last id, the last id received, ``complete``). An interrupted pull raises; the next :func:`pull_reservoir` on
  the same folder resumes after the last id received, up to the same snapshot — of the same reservoir: frames
  from another one (another replica behind the same address, or the server restarted) are refused, never mixed
  in. :func:`pulled_frames` refuses a pull that is not complete.
* **Calibration never touches the serving files until it is judged.** :func:`recalibrate_staged` calibrates a
  copy of the model's folder (``<model>/.staging``: a dot-folder, which the repository poll ignores), then scores
  old and new INT8 against FP32 on the reservoir frames: detection agreement F1 (FP32 as reference) and mAP50-95
  against FP32's detections as pseudo-labels. :func:`promote` moves the new artifacts into the model's folder,
  each file atomically, model.yaml last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibrators.files import atomic_write_bytes
from trtserve.calibration.frames import IMAGE_SUFFIXES, FrameSource
from trtserve.config import ModelConfig, load_model_config
from trtserve.errors import CalibrationInputError
from trtserve.reports import JsonReport

logger = logging.getLogger(__name__)

STATE_FILE = "pull.json"
STAGING = ".staging"


@dataclass(frozen=True)
class PulledFrame:
    """One frame as the server sent it (the fields of trtserve.v1's PullCalibrationFramesResponse)."""

    id: int
    agreement: float
    png: bytes
    sha256: str
    snapshot_last_id: int
    remaining: int
    reservoir_id: str = ""  # the server's reservoir instance (empty from a server that does not say)


# (after_id, up_to_id) -> the frames of one bounded call, in id order; raises on a broken connection
Fetch = Callable[[int, int], Iterable[PulledFrame]]


@dataclass(frozen=True)
class PullResult(JsonReport):
    directory: str
    frames: int  # in the folder now
    received: int  # by this run (the rest were there from an interrupted run)
    resumed: bool
    complete: bool


def _state(directory: Path) -> dict[str, object]:
    try:
        loaded: dict[str, object] = json.loads((directory / STATE_FILE).read_text())
        return loaded
    except (OSError, ValueError):
        return {}


def pull_reservoir(directory: Path, server: str, model: str, fetch: Fetch) -> PullResult:
    """Pull ``model``'s reservoir into ``directory``, resuming an interrupted pull of the same server and model.

    Raises what ``fetch`` raises on a broken connection, with the progress saved; call again to resume.
    """
    directory.mkdir(parents=True, exist_ok=True)
    state = _state(directory)
    resumed = bool(state) and not state.get("complete") and state.get("server") == server \
        and state.get("model") == model
    if not resumed:  # a new pull: what an earlier one left is not today's reservoir
        for old in directory.glob("*.png"):
            old.unlink()
        state = {"server": server, "model": model, "reservoir_id": "", "snapshot_last_id": 0, "last_id": 0,
                 "complete": False}
    last, snapshot = int(state["last_id"]), int(state["snapshot_last_id"])  # type: ignore[call-overload]
    received = 0

    def save(complete: bool = False) -> None:
        state.update(last_id=last, snapshot_last_id=snapshot, complete=complete)
        atomic_write_bytes(directory / STATE_FILE, json.dumps(state, indent=2).encode())

    save()
    try:
        while True:
            got = 0
            finished = False
            for frame in fetch(last, snapshot):
                if state.get("reservoir_id") and frame.reservoir_id != state["reservoir_id"]:
                    raise CalibrationInputError(
                        f"the pull in {directory} started on reservoir {state['reservoir_id']} of {server}, but "
                        f"{server} now answers from reservoir {frame.reservoir_id or '(unnamed)'}: another replica "
                        "behind the address, or the server restarted; frames of two reservoirs are never mixed. "
                        f"Pull from one server (a pod's own address), or delete {directory / STATE_FILE} to start "
                        "the pull over")
                state["reservoir_id"] = frame.reservoir_id
                if hashlib.sha256(frame.png).hexdigest() != frame.sha256:
                    raise CalibrationInputError(f"frame {frame.id} from {server} arrived damaged (sha256 mismatch); "
                                                "run the command again to resume the pull")
                atomic_write_bytes(directory / f"{frame.id:012d}.png", frame.png)
                last, snapshot, got, received = frame.id, frame.snapshot_last_id, got + 1, received + 1
                finished = frame.remaining == 0
                if received % 32 == 0:
                    save()
            if got == 0 or finished:
                break
    finally:
        save()
    save(complete=True)
    frames = len(list(directory.glob("*.png")))
    logger.info("pulled %d frames of model %s from %s into %s (%d this run%s)", frames, model, server, directory,
                received, ", resumed" if resumed else "")
    return PullResult(str(directory), frames, received, resumed, True)


def pulled_frames(directory: Path) -> list[Path]:
    """The frames of a complete pull; CalibrationInputError for an interrupted or missing one."""
    state = _state(directory)
    if not state.get("complete"):
        raise CalibrationInputError(f"{directory}: the pull from the server is {'incomplete' if state else 'missing'}"
                                    "; run the same command again to resume it (a partial set is never used)")
    return sorted(directory.glob("*.png"))


@dataclass(frozen=True)
class INT8Score(JsonReport):
    """One INT8 model against FP32 on the reservoir frames."""

    agreement_f1: float  # detections at IoU 0.5, same class, FP32 as reference
    map50_95_vs_fp32: float  # COCO mAP50-95 with FP32's detections as pseudo-labels
    map50_vs_fp32: float


@dataclass(frozen=True)
class RecalibrationReport(JsonReport):
    model: str
    reservoir_frames: int
    image_frames: int  # from --images, mixed in
    old: INT8Score
    new: INT8Score
    better: bool  # new agreement exceeds old by more than min_gain
    min_gain: float
    staging: str
    calibration: JsonReport | None = None  # the staged calibration's report (calibration.report.json)


def _frame_paths(reservoir: list[Path], images: Path | None, num_images: int) -> list[Path]:
    paths = list(reservoir)
    if images is not None:
        extra = FrameSource.from_images(images, max(1, num_images))
        paths += (extra.paths or [])[:num_images]
    return paths


def score_int8(config: ModelConfig, int8: ModelConfig, frames: list[Path]) -> INT8Score:
    """``int8``'s INT8 model against ``config``'s FP32 model on ``frames`` (letterboxed images)."""
    import cv2

    from trtserve.calibration.evaluation import coco_map
    from trtserve.datasets.synthetic import Scene
    from trtserve.detector import Detector
    from trtserve.vision.matching import MatchCounts, match

    images = [np.asarray(img, np.uint8) for img in (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in frames)
              if img is not None]
    with Detector.open(config, "fp32") as fp32, Detector.open(int8, "int8") as q:
        reference = fp32.detect(images)
        low = q.with_thresholds(score=0.001)
        candidate = q.detect(images)
        scored = q.detect(images, low)
    total = MatchCounts()
    scenes, predictions = [], []
    for image, ref, cand, sc in zip(images, reference, candidate, scored):
        if ref.detections is None or cand.detections is None or sc.detections is None:
            continue
        total += match(cand.detections.boxes_xyxy, cand.detections.scores, cand.detections.class_ids,
                       ref.detections.boxes_xyxy, ref.detections.class_ids)
        scenes.append(Scene(image, ref.detections.boxes_xyxy.astype(np.float32),
                            ref.detections.class_ids.astype(np.int64)))
        predictions.append((sc.detections.boxes_xyxy, sc.detections.scores, sc.detections.class_ids))
    map50, map50_95 = coco_map(scenes, predictions, len(config.class_names)) if scenes else (0.0, 0.0)
    return INT8Score(round(total.f1, 4), round(map50_95, 4), round(map50, 4))


def stage(config: ModelConfig) -> ModelConfig:
    """A copy of the model's folder (its files, not subfolders) in ``<model>/.staging``, as a config to calibrate."""
    from trtserve.calibration.run import copy_model_folder

    staging = config.directory / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    return copy_model_folder(config, staging, [])  # hard links where possible; model.yaml copied


def recalibrate_staged(config: ModelConfig, reservoir: list[Path], images: Path | None = None,
                       num_images: int = 0, method: str = "entropy", trt_versions: tuple[str, ...] = (),
                       min_gain: float = 0.0, progress: bool = False, batch: int | None = None,
                       percentile: float = 99.99, auto_exclude_target: float | None = None) -> RecalibrationReport:
    """Calibrate a staged copy of ``config`` on the reservoir frames (and ``num_images`` of ``images``), and score
    old and new INT8 against FP32 on the reservoir frames. The model's own files are not touched. ``batch``,
    ``percentile`` and ``auto_exclude_target`` are :func:`~trtserve.calibration.run.run_calibration`'s."""
    from trtserve.calibration.run import run_calibration

    if not reservoir:
        raise CalibrationInputError("the pulled reservoir has no frames: let the server's drift shadow compare some "
                                    "traffic first (calibration_reservoir and drift enabled)")
    # the TensorRT calibration caches the model has are rewritten too (run_calibration's planned_caches: the staged
    # copy lists them): a cache left from the old calibration would key a TensorRT 8.x engine as unchanged, and a
    # reload on that host would go on serving the old ranges
    staged = stage(config)
    paths = _frame_paths(reservoir, images, num_images)
    source = FrameSource(paths=paths, limit=len(paths))
    calibration = run_calibration(staged, source, method, batch, percentile, trt_versions, progress=progress,
                                  auto_exclude_target=auto_exclude_target, overwrite=True)  # a staged copy
    staged = load_model_config(staged.source_file or Path())
    old, new = score_int8(config, config, reservoir), score_int8(config, staged, reservoir)
    report = RecalibrationReport(config.name, len(reservoir), len(paths) - len(reservoir), old, new,
                                 new.agreement_f1 > old.agreement_f1 + min_gain, min_gain, str(staged.directory),
                                 calibration)
    logger.info("model %s: INT8 agreement with FP32 on %d reservoir frames: serving %.4f, recalibrated %.4f",
                config.name, len(reservoir), old.agreement_f1, new.agreement_f1)
    return report



def promote(config: ModelConfig) -> list[str]:
    """Move the staged artifacts into the model's folder (each file atomically, model.yaml last); their names."""
    staging = config.directory / STAGING
    staged = load_model_config(staging / (config.source_file.name if config.source_file else "model.yaml"))
    moved = []
    reports = {"calibration.report.json", "calibration.report.html"}
    for name in sorted({p.name for p in staged.artifacts.values()} | reports):
        if (staging / name).is_file():
            os.replace(staging / name, config.directory / name)
            moved.append(name)
    if config.source_file is not None:
        os.replace(staged.source_file or Path(), config.source_file)
        moved.append(config.source_file.name)
        load_model_config(config.source_file)  # must validate
    shutil.rmtree(staging, ignore_errors=True)
    return moved


def png_paths(directory: Path) -> Iterator[Path]:
    """Image files of a folder (what ``--images`` reads)."""
    return (p for p in sorted(directory.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
