"""Reading video: a file, a camera index or a stream URL, frame by frame (OpenCV's VideoCapture).

The one reader behind ``trtserve stream``, the demo and calibration from a video.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.errors import InvalidFrameError

DEFAULT_FPS = 15.0  # when the container does not say


class Video:
    """An open video. ``fps`` and ``frame_count`` are what the container says (``frame_count`` 0: unknown, e.g. a
    camera or a live stream). Iterate :meth:`frames` once; the capture is released when it ends or is closed."""

    def __init__(self, source: str | int | Path) -> None:
        """Open ``source``; InvalidFrameError when OpenCV cannot read it as video."""
        self._cap = cv2.VideoCapture(str(source) if isinstance(source, Path) else source)
        if not self._cap.isOpened():
            self._cap.release()
            raise InvalidFrameError(f"cannot open {str(source)!r}: not a readable video file, camera index or "
                                    "stream URL")
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS)) or DEFAULT_FPS
        self.frame_count = max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))

    @staticmethod
    def frame_count_of(path: Path) -> int:
        """Frames a video file says it has (0: unknown or unreadable), without keeping it open."""
        try:
            video = Video(path)
        except InvalidFrameError:
            return 0
        video.close()
        return video.frame_count

    def frames(self, limit: int = 0, every: int = 1) -> Iterator[NDArray[np.uint8]]:
        """BGR frames, every ``every``-th one, at most ``limit`` of them (0: all); releases the capture at the end."""
        yielded = index = 0
        try:
            while limit <= 0 or yielded < limit:
                ok, frame = self._cap.read()
                if not ok:
                    return
                if index % every == 0:
                    yielded += 1
                    yield np.asarray(frame, np.uint8)
                index += 1
        finally:
            self.close()

    def close(self) -> None:
        self._cap.release()
