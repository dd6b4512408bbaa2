"""Frame intake: decode encoded images and check raw arrays before they reach a model."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.errors import InvalidFrameError

MAX_ENCODED_BYTES = 64 * 1024 * 1024


def check_frame(frame: NDArray[np.generic], max_pixels: int) -> NDArray[np.uint8]:
    """Return ``frame`` if it is an H x W x 3 uint8 colour image within ``max_pixels``; else raise."""
    if not isinstance(frame, np.ndarray):
        raise InvalidFrameError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InvalidFrameError(f"frame has dtype {frame.dtype}; expected uint8 pixels")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        raise InvalidFrameError(f"frame of shape {list(frame.shape)} is grayscale; the model expects colour "
                                "(H x W x 3 BGR); convert it first (cv2.cvtColor(..., cv2.COLOR_GRAY2BGR))")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InvalidFrameError(f"frame has shape {list(frame.shape)}; expected H x W x 3 (BGR)")
    h, w = int(frame.shape[0]), int(frame.shape[1])
    if h == 0 or w == 0:
        raise InvalidFrameError(f"frame is empty ({w}x{h} pixels)")
    if h * w > max_pixels:
        raise InvalidFrameError(f"frame of {w}x{h} = {h * w} pixels exceeds the limit of {max_pixels}; "
                                "downscale it or raise max_frame_pixels in model.yaml")
    return frame  # type: ignore[return-value]


def decode_image(data: bytes, max_pixels: int) -> NDArray[np.uint8]:
    """Decode JPEG/PNG (anything OpenCV reads) bytes into an H x W x 3 BGR array; raise on bad input."""
    if not data:
        raise InvalidFrameError("image is empty (0 bytes)")
    if len(data) > MAX_ENCODED_BYTES:
        raise InvalidFrameError(f"encoded image of {len(data)} bytes exceeds {MAX_ENCODED_BYTES} bytes")
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InvalidFrameError(f"could not decode image ({len(data)} bytes, starts {data[:8].hex()}): "
                                "corrupt, truncated, or not an image format OpenCV reads (JPEG, PNG, ...)")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)  # 16-bit PNG
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return check_frame(image, max_pixels)
