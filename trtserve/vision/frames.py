"""Frame intake: decode encoded images and check raw arrays before they reach a model."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.errors import InvalidFrameError

MAX_ENCODED_BYTES = 64 * 1024 * 1024
# libjpeg scales by 1/2, 1/4 or 1/8 inside the IDCT: the largest that still leaves enough pixels is used
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame (not DHT, JPG, DAC)


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, colour components) from a JPEG's frame header, without decoding; None if not found."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 10 > n or length < 8:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height, data[i + 9]
        i += 2 + length
    return None


def decode_for_input(data: bytes, max_pixels: int, needed_wh: Callable[[int, int], tuple[int, int]]
                     ) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """Decode a frame no larger than it needs to be; returns it with the frame's original (height, width).

    For a colour JPEG whose header says it is at least twice the size ``needed_wh(width, height)`` asks for,
    libjpeg downscales while decoding (a 1080p frame for a 640 input: 1/2) — less work than decoding every
    pixel and resizing after. Anything else is decoded whole by :func:`decode_image`. The pixel limit
    applies to the original size, before any pixel is decoded.
    """
    header = jpeg_header(data) if len(data) <= MAX_ENCODED_BYTES else None
    if header is not None and header[2] == 3:
        width, height, _ = header
        _check_pixels(width, height, max_pixels)
        need_w, need_h = needed_wh(width, height)
        for factor, flag in _REDUCED:
            w, h = -(-width // factor), -(-height // factor)  # libjpeg rounds scaled sizes up
            if w >= need_w and h >= need_h:
                image = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
                if image is not None and image.shape[:2] == (h, w):
                    return np.asarray(image, np.uint8), (height, width)
                break  # unexpected: decode it whole, which also reports a corrupt file properly
    image = decode_image(data, max_pixels)
    return image, (int(image.shape[0]), int(image.shape[1]))


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
    _check_pixels(w, h, max_pixels)
    return frame  # type: ignore[return-value]


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InvalidFrameError(f"frame of {width}x{height} = {width * height} pixels exceeds the limit of "
                                f"{max_pixels}; downscale it or raise max_frame_pixels in model.yaml")


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
