"""Calibration frames: a folder of images or a video, read lazily, and their batches as model feeds."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.errors import CalibrationInputError, InvalidFrameError
from trtserve.vision.preprocess import Preprocessor
from trtserve.vision.video import Video

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise CalibrationInputError(f"--num {limit}: expected at least 1 frame (300 or more are recommended)")


@dataclass
class FrameSource:
    """Frames for calibration, read lazily (memory does not grow with their number)."""

    paths: list[Path] | None = None
    video: Path | None = None
    limit: int = 500
    skipped: int = 0
    used: int = 0

    @classmethod
    def from_images(cls, directory: Path, limit: int) -> FrameSource:
        _check_limit(limit)
        if not directory.is_dir():
            raise CalibrationInputError(f"--images {directory}: not a folder")
        paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise CalibrationInputError(f"--images {directory}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return cls(paths=paths, limit=limit)

    @classmethod
    def from_video(cls, path: Path, limit: int) -> FrameSource:
        _check_limit(limit)
        if not path.is_file():
            raise CalibrationInputError(f"--video {path}: no such file")
        return cls(video=path, limit=limit)

    @property
    def expected(self) -> int:
        """How many frames this source will give at most (for progress)."""
        if self.paths is not None:
            return min(self.limit, len(self.paths))
        count = Video.frame_count_of(self.video) if self.video is not None else 0
        return min(self.limit, count) if count > 0 else self.limit

    def frames(self) -> Iterator[NDArray[np.uint8]]:
        if self.paths is not None:
            for path in self.paths:
                if self.used >= self.limit:
                    return
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    self.skipped += 1
                    logger.warning("skipping unreadable image %s", path)
                    continue
                self.used += 1
                yield np.asarray(image, np.uint8)
            return
        try:
            video = Video(self.video or Path())
        except InvalidFrameError:
            raise CalibrationInputError(f"--video {self.video}: OpenCV cannot open it as a video") from None
        total = video.frame_count or self.limit
        for frame in video.frames(self.limit, every=max(1, total // self.limit)):  # spread over the whole video
            self.used += 1
            yield frame


def batched_feeds(source: FrameSource, preprocessor: Preprocessor, input_name: str, batch: int,
                  fixed_batch: bool = False) -> Iterator[dict[str, NDArray[np.floating]]]:
    """Batches of ``batch`` preprocessed frames; a model with a fixed batch gets no short last batch."""
    pending: list[NDArray[np.uint8]] = []
    for frame in source.frames():
        pending.append(frame)
        if len(pending) == batch:
            yield {input_name: preprocessor.batch(pending)[0]}
            pending = []
    if pending and fixed_batch:
        logger.info("dropping the last %d frames: the model's batch is fixed at %d", len(pending), batch)
    elif pending:
        yield {input_name: preprocessor.batch(pending)[0]}
