"""A model's accuracy on the user's own labelled frames, per precision side by side (``trtserve eval --data``,
``calibrate --eval-data``): COCO mAP50, mAP50-95 and AP per class (pycocotools, through
:func:`trtserve.calibration.evaluation.coco_scores`), INT8's detection agreement with FP32 and the frames where the
two disagree most.

One pass over the dataset: each image is read and decoded once (the header checks of
:mod:`trtserve.vision.frames` apply), letterboxed, and run through every precision's model. An image that cannot be
read or decoded is counted and listed, never fatal; one whose size contradicts its COCO annotations is (the labels
are for other images). mAP is scored on detections above :data:`EVAL_SCORE_THRESHOLD` (the whole precision/recall
curve); agreement on those above the model's own ``score_threshold``, what it serves — the same detections as a pass
at that threshold, since class-aware greedy NMS never lets a lower-scored box suppress a higher one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trtserve.backends.base import BackendOptions
from trtserve.calibration.evaluation import (
    EVAL_MAX_DETECTIONS,
    EVAL_SCORE_THRESHOLD,
    FrameTruth,
    coco_scores,
    detect_letterboxed,
)
from trtserve.config import ModelConfig
from trtserve.datasets.labelled import LabelledDataset, LabelledImage
from trtserve.errors import TrtserveError, UsageError
from trtserve.reports import OMIT_WHEN_NONE, JsonReport
from trtserve.vision.matching import MatchCounts, match

logger = logging.getLogger(__name__)

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes_xyxy [N, 4], scores [N], class ids [N]
WORST_FRAMES = 5
AGREEMENT_IOU = 0.5


@dataclass(frozen=True)
class ClassScores(JsonReport):
    """AP of one of the dataset's classes (None when the dataset has no object of it)."""

    name: str
    objects: int
    ap50: float | None
    ap50_95: float | None


@dataclass(frozen=True)
class PrecisionScores(JsonReport):
    """COCO mAP of one precision on the dataset, and AP per dataset class."""

    map50: float
    map50_95: float
    classes: tuple[ClassScores, ...]
    inference_seconds: float  # decode excluded, rounded to 0.01 s


@dataclass(frozen=True)
class UnreadableImage(JsonReport):
    image: str
    reason: str


@dataclass(frozen=True)
class FrameDisagreement(JsonReport):
    """A frame where INT8's detections differ from FP32's (at the model's score threshold, IoU 0.5)."""

    image: str
    f1: float
    only_int8: int
    only_fp32: int


@dataclass(frozen=True)
class DatasetEvaluation(JsonReport):
    """What :func:`evaluate_dataset` measured. Agreement fields are None (absent from JSON) without both
    fp32 and int8."""

    model: str
    data: str  # the annotations file or data.yaml
    layout: str  # coco | yolo
    images: int  # scored
    objects: int  # ground-truth objects on the scored images (crowd regions excluded)
    unreadable: tuple[UnreadableImage, ...]
    precisions: Mapping[str, PrecisionScores]
    seconds: float
    agreement_f1: float | None = field(default=None, metadata=OMIT_WHEN_NONE)
    agreement_mean_iou: float | None = field(default=None, metadata=OMIT_WHEN_NONE)
    disagreements: tuple[FrameDisagreement, ...] | None = field(default=None, metadata=OMIT_WHEN_NONE)
    multi_label: bool = False  # scored with every class above threshold per box (Ultralytics val), not one
    empty_label_files: int = 0  # YOLO: images labelled as without objects (an empty .txt)
    missing_label_files: int = 0  # YOLO: images with no label file, scored as without objects (see warnings)
    warnings: tuple[str, ...] = ()  # what the dataset reader noticed (one line each, naming files and what to do)

    def describe(self) -> str:
        """The evaluation as a few lines of text: the precisions side by side, then agreement and problems."""
        names = list(self.precisions)
        col = max(14, *(len(c.name) + 10 for c in next(iter(self.precisions.values())).classes))

        def cell(v: float | None) -> str:
            return f"{v:>9.4f}" if v is not None else f"{'-':>9}"

        lines = [f"{self.model} on {self.data} ({self.layout}): {self.images} images, {self.objects} objects, "
                 f"{len(self.unreadable)} unreadable" + (", multi-label" if self.multi_label else ""),
                 f"{'':<{col}}" + "".join(f"{n:>9}" for n in names),
                 f"{'mAP50':<{col}}" + "".join(cell(self.precisions[n].map50) for n in names),
                 f"{'mAP50-95':<{col}}" + "".join(cell(self.precisions[n].map50_95) for n in names)]
        first = self.precisions[names[0]].classes
        for k, c in enumerate(first):
            label = f"AP50-95 {c.name}"
            lines.append(f"{label:<{col}}" + "".join(cell(self.precisions[n].classes[k].ap50_95) for n in names)
                         + f"   ({c.objects} objects)")
        if self.agreement_f1 is not None:
            lines.append(f"INT8 agreement with FP32: F1 {self.agreement_f1:.4f}, mean IoU "
                         f"{self.agreement_mean_iou:.4f}")
            if self.disagreements:
                lines.append("frames that disagree most: " + ", ".join(
                    f"{d.image} (F1 {d.f1:.2f}: {d.only_int8} only in int8, {d.only_fp32} only in fp32)"
                    for d in self.disagreements))
        lines += [f"unreadable: {u.image}: {u.reason}" for u in self.unreadable]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def truth_of(image: LabelledImage, height_px: int, width_px: int) -> FrameTruth:
    """The ground truth of a decoded ``height_px`` x ``width_px`` frame of ``image``."""
    return FrameTruth(height_px, width_px, image.boxes_xyxy(height_px, width_px), image.class_ids, image.crowd)


def score(dataset: LabelledDataset, truths: Sequence[FrameTruth], predictions: Sequence[Prediction],
          model_names: Sequence[str], inference_seconds: float = 0.0) -> PrecisionScores:
    """COCO scores of ``predictions`` against ``truths`` (one per scored image, same order), with AP per dataset
    class (looked up by name in ``model_names``)."""
    s = coco_scores(truths, predictions, len(model_names))
    counts = np.zeros(len(model_names), np.int64)
    for t in truths:
        ids = np.asarray(t.class_ids)
        if t.crowd is not None:
            ids = ids[~t.crowd]
        np.add.at(counts, ids, 1)
    classes = []
    for name in dataset.class_names:
        k = list(model_names).index(name)
        classes.append(ClassScores(name, int(counts[k]), _round(s.ap50[k]), _round(s.ap50_95[k])))
    return PrecisionScores(round(s.map50, 4), round(s.map50_95, 4), tuple(classes), round(inference_seconds, 2))


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def evaluate_dataset(config: ModelConfig, dataset: LabelledDataset, precisions: Sequence[str] = ("fp32", "int8"),
                     progress: bool = False, options: BackendOptions | None = None, worst: int = WORST_FRAMES,
                     multi_label: bool = False, iou_threshold: float | None = None) -> DatasetEvaluation:
    """Run ``config``'s model in each of ``precisions`` over ``dataset`` and score it (see the module).

    ``multi_label``: every class above the threshold at an anchor is a candidate
    (:func:`trtserve.heads.multilabel.decode_multi_label`, as Ultralytics ``val`` scores); default one per box, as
    the model serves. ``iou_threshold``: the NMS IoU (default the model's ``head.iou_threshold``).

    Raises ModelLoadError/ConfigError when a precision cannot be opened, UsageError when a decoded image contradicts
    its annotations' size or when no image could be decoded. ``progress`` shows a bar (stderr) on passes longer than
    two seconds.
    """
    from tqdm import tqdm

    from trtserve.detector import Detector

    t0 = time.monotonic()
    logger.info("evaluating %s (%s) on %d images of %s", config.name, ",".join(precisions), len(dataset.images),
                dataset.source)
    detectors: dict[str, Detector] = {}
    try:
        for p in precisions:
            detectors[p] = Detector.open(config, p, options=options)
        first = detectors[precisions[0]]
        if multi_label:
            from trtserve.heads.multilabel import require_multi_label

            require_multi_label(first.head)
        thresholds = first.with_thresholds(score=EVAL_SCORE_THRESHOLD, iou=iou_threshold,
                                           max_detections=EVAL_MAX_DETECTIONS)
        predictions: dict[str, list[Prediction]] = {p: [] for p in precisions}
        seconds = dict.fromkeys(precisions, 0.0)
        truths: list[FrameTruth] = []
        scored: list[LabelledImage] = []
        unreadable: list[UnreadableImage] = []
        step = config.max_batch_size
        with tqdm(total=len(dataset.images), unit="image", desc=f"eval {config.name}", delay=2.0,
                  disable=not progress, leave=False) as bar:
            for start in range(0, len(dataset.images), step):
                chunk = dataset.images[start : start + step]
                frames, geometries = [], []
                for image in chunk:
                    try:
                        frame, geometry = first.prepare_letterboxed(image.path.read_bytes())
                    except OSError as exc:
                        unreadable.append(UnreadableImage(dataset.display_name(image),
                                                          f"cannot read the file: {exc.strerror or exc}"))
                        continue
                    except TrtserveError as exc:
                        unreadable.append(UnreadableImage(dataset.display_name(image), str(exc)))
                        continue
                    w, h = geometry.original_width_px, geometry.original_height_px
                    if image.size_wh is not None and image.size_wh != (w, h):
                        raise UsageError(f"{dataset.source} says {dataset.display_name(image)} is "
                                         f"{image.size_wh[0]}x{image.size_wh[1]} but the image is {w}x{h}; the "
                                         "annotations do not match the images (check --data and --annotations)")
                    frames.append(frame)
                    geometries.append(geometry)
                    truths.append(truth_of(image, h, w))
                    scored.append(image)
                if frames:
                    for p, detector in detectors.items():
                        t = time.perf_counter()
                        for found in detect_letterboxed(detector, frames, geometries, thresholds, multi_label):
                            predictions[p].append((found.boxes_xyxy, found.scores, found.class_ids))
                        seconds[p] += time.perf_counter() - t
                bar.update(len(chunk))
        if not scored:
            raise UsageError(f"none of the {len(dataset.images)} images of {dataset.source} could be decoded (e.g. "
                             f"{unreadable[0].image}: {unreadable[0].reason}); JPEG and PNG are read")
        serving_score = {p: d.thresholds.score for p, d in detectors.items()}
    finally:
        for opened in detectors.values():
            opened.close()

    names = config.class_names
    scores = {p: score(dataset, truths, predictions[p], names, seconds[p]) for p in precisions}
    extra: dict[str, object] = {}
    if "fp32" in predictions and "int8" in predictions:
        total = MatchCounts()
        frames_f1: list[FrameDisagreement] = []
        for image, a, b in zip(scored, predictions["int8"], predictions["fp32"]):
            ka, kb = a[1] > serving_score["int8"], b[1] > serving_score["fp32"]
            counts = match(a[0][ka], a[1][ka], a[2][ka], b[0][kb], b[2][kb], AGREEMENT_IOU)
            total += counts
            if counts.false_positives or counts.false_negatives:
                frames_f1.append(FrameDisagreement(dataset.display_name(image), round(counts.f1, 4),
                                                   counts.false_positives, counts.false_negatives))
        frames_f1.sort(key=lambda d: (d.f1, -(d.only_int8 + d.only_fp32), d.image))
        extra = {"agreement_f1": round(total.f1, 4), "agreement_mean_iou": round(total.mean_iou, 4),
                 "disagreements": tuple(frames_f1[:worst])}
    objects = sum(int(np.count_nonzero(~t.crowd)) if t.crowd is not None else len(t.class_ids) for t in truths)
    extra.update(empty_label_files=dataset.empty_label_files, missing_label_files=dataset.missing_label_files,
                 warnings=dataset.warnings)
    extra["multi_label"] = multi_label
    result = DatasetEvaluation(config.name, str(dataset.source), dataset.layout, len(scored), objects,
                               tuple(unreadable), scores, round(time.monotonic() - t0, 2), **extra)  # type: ignore[arg-type]
    logger.info("evaluated %s on %s in %.1f s: %s", config.name, dataset.source, result.seconds,
                {p: (s.map50, s.map50_95) for p, s in scores.items()})
    return result
