"""``trtserve detect``: detection in this process on images, folders, globs and videos, as Ultralytics'
``predict source=...`` takes them; ``--out DIR`` gets one annotated file per input (a single image may still name
the output file itself)."""

from __future__ import annotations

import argparse
import glob
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtserve.cli.common import (
    EXIT_USER_ERROR,
    Subcommands,
    emit,
    model_command,
    native_warnings_filtered,
    open_detector,
)
from trtserve.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from trtserve.detector import Detector, FrameResult
    from trtserve.heads.base import Thresholds
    from trtserve.vision.detections import Detections

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
IMAGES_PER_CALL = 32  # images decoded and held at once


def expand_sources(sources: Sequence[str]) -> list[Path]:
    """Files to detect on, in order: a folder gives its images and videos (sorted, not recursive), a glob its
    matches (``**`` recursive), anything else itself (a missing file then fails alone). UsageError for a folder or
    glob with nothing in it."""
    found: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           + VIDEO_SUFFIXES)
            if not files:
                raise UsageError(f"{s} holds no images or videos ({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
            found += files
        elif glob.has_magic(s):
            files = sorted(Path(f) for f in glob.glob(s, recursive=True) if Path(f).is_file())
            if not files:
                raise UsageError(f"{s!r} matches no file")
            found += files
        else:
            found.append(p)
    return found


def parse_classes(spec: Sequence[str] | None, names: tuple[str, ...]) -> set[int] | None:
    """``--classes circle,3 star`` -> class ids; UsageError naming the model's classes for an unknown one."""
    if not spec:
        return None
    wanted: set[int] = set()
    for item in (v.strip() for s in spec for v in s.split(",")):
        if not item:
            continue
        if item.isdigit() and int(item) < len(names):
            wanted.add(int(item))
        elif item in names:
            wanted.add(names.index(item))
        else:
            raise UsageError(f"--classes: {item!r} is not a class of this model; it has {list(names)} "
                             f"(names or ids 0..{len(names) - 1})")
    return wanted


def _keep(det: Detections, classes: set[int] | None) -> Detections:
    if classes is None:
        return det
    import numpy as np

    k = np.isin(det.class_ids, sorted(classes))
    return type(det)(det.boxes_xyxy[k], det.scores[k], det.class_ids[k])


def detection_items(det: Detections, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Detections as JSON items (label, class id, score, xyxy box in frame pixels): ``detect`` and ``stream``."""
    return [{"label": names[int(c)], "class_id": int(c), "score": round(float(s), 4),
             "box_xyxy": [round(float(v), 1) for v in b]} for b, s, c in zip(det.boxes_xyxy, det.scores, det.class_ids)]


class _Outputs:
    """Where annotated files go: ``--out FILE`` for one image, else one file per input in ``--out DIR``."""

    def __init__(self, out: Path | None, files: list[Path]) -> None:
        self.out = out
        single = len(files) == 1 and files[0].suffix.lower() not in VIDEO_SUFFIXES
        self.as_file = out is not None and single and out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir()
        self._taken: set[str] = set()
        if out is not None and not self.as_file:
            if out.exists() and not out.is_dir():
                raise UsageError(f"--out {out} is a file; with several inputs or a video, --out is a folder")
            out.mkdir(parents=True, exist_ok=True)

    def path_for(self, source: Path, suffix: str | None = None) -> Path | None:
        if self.out is None:
            return None
        if self.as_file:
            return self.out
        stem, ext = source.stem, suffix or source.suffix
        name, n = f"{stem}{ext}", 1
        while name in self._taken:  # the same name from two folders: keep both
            name, n = f"{stem}_{n}{ext}", n + 1
        self._taken.add(name)
        return self.out / name


def _write_image(path: Path, frame: NDArray[np.uint8]) -> None:
    import cv2

    if not cv2.imwrite(str(path), frame):
        raise UsageError(f"cannot write {path}; check the folder is writable and the extension is an image one")


def _detect_images(detector: Detector, files: list[Path], thresholds: Thresholds, classes: set[int] | None,
                   outputs: _Outputs) -> Iterator[tuple[dict[str, Any], list[str], bool]]:
    from trtserve.vision.draw import annotate

    names = detector.config.class_names
    for start in range(0, len(files), IMAGES_PER_CALL):
        chunk = files[start : start + IMAGES_PER_CALL]
        blobs = []
        for path in chunk:
            try:
                blobs.append(path.read_bytes())
            except OSError as exc:
                blobs.append(b"")
                logger.debug("cannot read %s: %s", path, exc)
        results: list[FrameResult] = detector.detect(blobs, thresholds)
        for path, blob, result in zip(chunk, blobs, results):
            if result.detections is None:
                reason = "cannot read file" if not blob else str(result.error)
                yield {"image": str(path), "error": reason}, [f"{path}: error: {reason}"], False
                continue
            det = _keep(result.detections, classes)
            items = detection_items(det, names)
            lines = [f"{path}: {len(items)} detections"]
            lines += [f"  {d['label']:<10} {d['score']:.2f} {d['box_xyxy']}" for d in items]
            target = outputs.path_for(path)
            entry: dict[str, Any] = {"image": str(path), "detections": items}
            if target is not None:
                if target.suffix.lower() not in IMAGE_SUFFIXES:
                    target = target.with_suffix(".jpg")
                _write_image(target, annotate(detector.prepare(blob), det, names))
                entry["annotated"] = str(target)
            yield entry, lines, True


def _detect_video(detector: Detector, path: Path, thresholds: Thresholds, classes: set[int] | None,
                  outputs: _Outputs) -> tuple[dict[str, Any], list[str], bool]:
    import cv2

    from trtserve.errors import InvalidFrameError
    from trtserve.vision.draw import annotate
    from trtserve.vision.video import Video

    names = detector.config.class_names
    try:
        video = Video(path)
    except InvalidFrameError as exc:
        return {"video": str(path), "error": str(exc)}, [f"{path}: error: {exc}"], False
    target = outputs.path_for(path, ".mp4")
    writer = None
    frames: list[dict[str, Any]] = []
    per_class: dict[str, int] = {}
    step = detector.config.max_batch_size
    batch: list[NDArray[np.uint8]] = []

    def flush() -> None:
        nonlocal writer
        for frame, result in zip(batch, detector.detect(list(batch), thresholds)):
            det = _keep(result.detections, classes) if result.detections is not None else None
            items = detection_items(det, names) if det is not None else []
            for d in items:
                per_class[d["label"]] = per_class.get(d["label"], 0) + 1
            frames.append({"frame": len(frames), "detections": items} if det is not None else
                          {"frame": len(frames), "error": str(result.error)})
            if target is not None and det is not None:
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = cv2.VideoWriter(str(target), cv2.VideoWriter.fourcc(*"mp4v"), video.fps, (w, h))
                    if not writer.isOpened():
                        raise UsageError(f"cannot write {target}; check the folder is writable")
                writer.write(annotate(frame, det, names))
        batch.clear()

    try:
        for frame in video.frames():
            batch.append(frame)
            if len(batch) == step:
                flush()
        if batch:
            flush()
    finally:
        video.close()
        if writer is not None:
            writer.release()
    failed = sum(1 for f in frames if "error" in f)
    entry: dict[str, Any] = {"video": str(path), "frames": frames, "detections_per_class": per_class}
    if target is not None:
        entry["annotated"] = str(target)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(per_class.items())) or "no detections"
    lines = [f"{path}: {len(frames)} frames ({failed} failed): {summary}"]
    return entry, lines, failed == 0 and bool(frames)


def cmd_detect(args: argparse.Namespace) -> int:
    with native_warnings_filtered():  # libjpeg's and FFmpeg's lines about broken inputs: rate-limited, never raw
        return _detect(args)


def _detect(args: argparse.Namespace) -> int:
    files = expand_sources(args.images)
    outputs = _Outputs(args.out, files)
    payload: list[dict[str, Any]] = []
    lines: list[str] = []
    failed = 0
    with open_detector(args) as detector:
        thresholds = detector.with_thresholds(score=args.score_threshold, iou=args.iou_threshold)
        classes = parse_classes(args.classes, detector.config.class_names)
        images = [f for f in files if f.suffix.lower() not in VIDEO_SUFFIXES]
        image_results = iter(list(_detect_images(detector, images, thresholds, classes, outputs)))
        for f in files:
            entry, text, ok = (_detect_video(detector, f, thresholds, classes, outputs)
                               if f.suffix.lower() in VIDEO_SUFFIXES else next(image_results))
            payload.append(entry)
            lines += text
            failed += not ok
    emit(payload, args.json, "\n".join(lines))
    return EXIT_USER_ERROR if failed else 0


def register(sub: Subcommands) -> None:
    """Add ``detect`` to the ``trtserve`` parser."""
    p = model_command(sub, "detect", "detect objects in images, folders, globs and videos")
    p.add_argument("images", nargs="+", metavar="SOURCE",
                   help="image or video files, folders (their images and videos), globs ('frames/**/*.jpg')")
    p.add_argument("--out", type=Path,
                   help="folder for one annotated file per input (a single IMAGE may name the output file)")
    p.add_argument("--score-threshold", type=float, default=None)
    p.add_argument("--iou-threshold", type=float, default=None, help="NMS IoU (default: the model's)")
    p.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="keep only these classes (names or ids, space or comma separated)")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.set_defaults(func=cmd_detect)
