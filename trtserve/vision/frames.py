"""Frame intake: decode encoded images and check raw arrays before they reach a model.

An encoded frame is admitted before any pixel is decoded (:func:`admit_encoded`): its header is read and checked
against its own bytes by :func:`trtserve.vision.image_headers.read_header` (JPEG and PNG only; malformed
structure, impossible sizes and files whose header claims more than their data can hold are refused), then against
the model's ``max_frame_pixels`` and a decode-memory budget of :data:`DECODE_BYTES_PER_PIXEL` bytes per allowed
pixel. Every refusal and every decoder failure is an :class:`InvalidFrameError` (INVALID_ARGUMENT) whose message
says what was wrong with the frame, never what OpenCV said.

A JPEG's EXIF orientation (read with its header) is applied after decoding, by :func:`orient`: both decoders are
asked for the stored pixels (OpenCV with ``IMREAD_IGNORE_ORIENTATION``, simplejpeg never reads EXIF), so the two
paths give the same upright frame, the one OpenCV's EXIF-aware ``imread`` gives. ``exif_orientation=False``
(``input.exif_orientation: false`` in model.yaml) keeps the stored pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.errors import InvalidFrameError
from trtserve.vision.image_headers import ImageHeader, jpeg_frame_header, read_header

log = logging.getLogger(__name__)

MAX_ENCODED_BYTES = 64 * 1024 * 1024
#: The decoder may hold at most this many bytes per pixel of ``max_frame_pixels`` (BGR output plus libjpeg's
#: coefficient buffer or a 16-bit PNG's intermediate): a 4:4:4 progressive colour JPEG (3 + 6, and its blocks'
#: padding to whole MCUs) or a 16-bit PNG (6 + 3) at the pixel limit fits, a progressive CMYK JPEG (3 + 8) near
#: the limit does not.
DECODE_BYTES_PER_PIXEL = 10
# libjpeg scales by 1/2, 1/4 or 1/8 inside the IDCT: the largest that still leaves enough pixels is used
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
# Whole colour JPEGs decode through simplejpeg where it is installed (the `fast` extra), behind the same header
# checks; OpenCV decodes everything else, and everything when it is not. Downscaled decodes stay with OpenCV's
# 1/2, 1/4, 1/8 (simplejpeg would pick libjpeg-turbo's M/8 factors, slower than a whole decode here).
try:
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - the fallback
    _simplejpeg = None


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, colour components) from a JPEG's frame header, without decoding; None if not found."""
    try:
        return jpeg_frame_header(data)
    except InvalidFrameError:
        return None


def admit_encoded(data: bytes, max_pixels: int) -> ImageHeader:
    """The checked header of an encoded frame the decoder may be given; raises InvalidFrameError otherwise.

    Refuses: empty data, more than MAX_ENCODED_BYTES, anything :func:`read_header` refuses, more pixels than
    ``max_pixels``, and a decode that would hold more than ``DECODE_BYTES_PER_PIXEL * max_pixels`` bytes.
    """
    if not data:
        raise InvalidFrameError("image is empty (0 bytes)")
    if len(data) > MAX_ENCODED_BYTES:
        raise InvalidFrameError(f"encoded image of {len(data)} bytes exceeds {MAX_ENCODED_BYTES} bytes")
    header = read_header(data, lambda width, height: _check_pixels(width, height, max_pixels))
    budget = DECODE_BYTES_PER_PIXEL * max_pixels
    if header.decode_bytes > budget:
        kind = f"{header.components}-component{' progressive' if header.progressive else ''}"
        raise InvalidFrameError(f"decoding this {header.width}x{header.height} {kind} {header.format} would take "
                                f"{header.decode_bytes} bytes, more than the {budget} allowed "
                                f"({DECODE_BYTES_PER_PIXEL} per pixel of max_frame_pixels); send a smaller or "
                                "baseline 8-bit frame")
    return header


def decode_for_input(data: bytes, max_pixels: int, needed_wh: Callable[[int, int], tuple[int, int]],
                     exif_orientation: bool = True) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """Decode a frame no larger than it needs to be; returns it with the frame's original (height, width).

    For a JPEG whose header says it is at least twice the size ``needed_wh(width, height)`` asks for, libjpeg
    downscales while decoding (a 1080p frame for a 640 input: 1/2) — less work than decoding every pixel and
    resizing after. Anything else is decoded whole, as :func:`decode_image` does. Every check of
    :func:`admit_encoded` applies to the original size, before any pixel is decoded. With ``exif_orientation`` a
    JPEG's EXIF orientation is applied (:func:`orient`): the frame, its size and so the boxes found on it are those of
    the upright picture.
    """
    header = admit_encoded(data, max_pixels)
    orientation = header.orientation if exif_orientation else 1
    width, height = header.width, header.height
    upright_hw = (width, height) if orientation >= 5 else (height, width)
    if header.format == "JPEG":
        need_w, need_h = needed_wh(upright_hw[1], upright_hw[0])
        for factor, flag in _REDUCED:
            w, h = -(-width // factor), -(-height // factor)  # libjpeg rounds scaled sizes up
            upright_w, upright_h = (h, w) if orientation >= 5 else (w, h)
            if upright_w >= need_w and upright_h >= need_h:
                image = _imdecode(header, flag | cv2.IMREAD_IGNORE_ORIENTATION)
                if image.shape[:2] == (h, w):
                    return orient(check_frame(image, max_pixels), orientation), upright_hw
                break  # unexpected: decode it whole, which also checks the size properly
    return orient(_decode_whole(header, max_pixels), orientation), upright_hw


def decode_image(data: bytes, max_pixels: int, exif_orientation: bool = True) -> NDArray[np.uint8]:
    """Decode JPEG or PNG bytes into an H x W x 3 BGR uint8 array; raise InvalidFrameError on bad input.

    Grayscale becomes BGR, alpha is dropped, 16-bit samples are scaled to 8 bits; a JPEG's EXIF orientation is
    applied unless ``exif_orientation`` is false (:func:`orient`). See :func:`admit_encoded` for what is refused
    before decoding.
    """
    header = admit_encoded(data, max_pixels)
    return orient(_decode_whole(header, max_pixels), header.orientation if exif_orientation else 1)


def orient(image: NDArray[np.uint8], orientation: int) -> NDArray[np.uint8]:
    """``image`` (as stored) turned upright by its EXIF ``orientation`` (1..8), as OpenCV's ``imread`` does: 2
    mirror, 3 half turn, 4 flip, 5 transpose, 6 quarter turn clockwise, 7 transverse, 8 quarter turn counter-clockwise.
    Both decoders (OpenCV, simplejpeg) are asked for the stored pixels, so the two paths agree; 1 returns ``image``."""
    if orientation <= 1 or orientation > 8:
        return image
    turned: NDArray[Any]
    if orientation == 2:
        turned = cv2.flip(image, 1)
    elif orientation == 3:
        turned = cv2.rotate(image, cv2.ROTATE_180)
    elif orientation == 4:
        turned = cv2.flip(image, 0)
    elif orientation == 6:
        turned = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    elif orientation == 8:
        turned = cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    else:
        turned = cv2.transpose(image)
        if orientation == 7:
            turned = cv2.flip(turned, -1)
    return turned  # type: ignore[return-value]


def check_frame(frame: NDArray[np.generic], max_pixels: int) -> NDArray[np.uint8]:
    """An H x W x 3 BGR uint8 frame within ``max_pixels`` from a raw array; raises InvalidFrameError otherwise.

    A colour uint8 frame is returned as it is (not copied). Grayscale (H x W or H x W x 1: IR and night cameras)
    becomes BGR and 16-bit samples (uint16, e.g. a raw 16-bit camera frame) are scaled to 8 bits as a 16-bit PNG
    is — each into a new array, made only after the size has been checked against ``max_pixels``.
    """
    if not isinstance(frame, np.ndarray):
        raise InvalidFrameError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype not in (np.uint8, np.uint16):
        raise InvalidFrameError(f"frame has dtype {frame.dtype}; expected uint8 (or uint16) pixels")
    gray = frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1)
    if not gray and (frame.ndim != 3 or frame.shape[2] != 3):
        raise InvalidFrameError(f"frame has shape {list(frame.shape)}; expected H x W x 3 (BGR) or H x W (grayscale)")
    h, w = int(frame.shape[0]), int(frame.shape[1])
    if h == 0 or w == 0:
        raise InvalidFrameError(f"frame is empty ({w}x{h} pixels)")
    _check_pixels(w, h, max_pixels)
    if frame.dtype == np.uint16:
        frame = cv2.convertScaleAbs(np.ascontiguousarray(frame), alpha=255.0 / 65535.0)
    if gray:
        frame = cv2.cvtColor(np.ascontiguousarray(frame.reshape(h, w)), cv2.COLOR_GRAY2BGR)
    return frame  # type: ignore[return-value]


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InvalidFrameError(f"frame of {width}x{height} = {width * height} pixels exceeds the limit of "
                                f"{max_pixels}; downscale it or raise max_frame_pixels in model.yaml")


def _decode_whole(header: ImageHeader, max_pixels: int) -> NDArray[np.uint8]:
    image = _turbo_decode(header) if header.format == "JPEG" and header.components == 3 else None
    if image is None:
        depth = cv2.IMREAD_ANYDEPTH if header.bits_per_sample == 16 else 0
        image = _imdecode(header, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION | depth)
    if image.shape[:2] != (header.height, header.width):
        raise InvalidFrameError(f"cannot decode the image: the {header.format} decoder produced "
                                f"{image.shape[1]}x{image.shape[0]} pixels where the header says "
                                f"{header.width}x{header.height}")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)  # 16-bit PNG
    return check_frame(image, max_pixels)


def _turbo_decode(header: ImageHeader) -> NDArray[Any] | None:
    """A whole colour JPEG, admitted, through simplejpeg (libjpeg-turbo's TurboJPEG API, GIL released): the same
    pixels as OpenCV's libjpeg-turbo, ~8 % less CPU per 480x360 frame (README, "Serving, measured"). Not strict, as
    OpenCV is not. None when simplejpeg is not installed, or when TurboJPEG refuses what libjpeg only warns about
    (stray bytes before a marker): OpenCV then decodes it as before, and its failures are the InvalidFrameError
    ("cannot decode the image: ...") the frame gets."""
    if _simplejpeg is None:
        return None
    data = header.decoder_input
    try:
        image = _simplejpeg.decode_jpeg(data, colorspace="BGR", strict=False)
    except (ValueError, RuntimeError) as exc:  # TurboJPEG's message: logged, never sent
        log.debug("simplejpeg failed on a %d-byte JPEG (OpenCV tries it): %s", len(data), exc)
        return None
    if image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        return None
    return image  # type: ignore[no-any-return]


def _imdecode(header: ImageHeader, flags: int) -> NDArray[Any]:
    """cv2.imdecode of an admitted frame; an OpenCV failure (None or cv2.error) becomes InvalidFrameError."""
    data = header.decoder_input
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:  # its message names OpenCV's source files: log it, never send it
        log.debug("OpenCV failed on a %d-byte %s: %s", len(data), header.format, exc)
        raise InvalidFrameError(f"cannot decode the image: the {header.format} decoder rejected its data "
                                f"({len(data)} bytes, {header.width}x{header.height})") from None
    if image is None or image.size == 0:
        raise InvalidFrameError(f"cannot decode the image: the {header.format} data is corrupt or truncated "
                                f"({len(data)} bytes, {header.width}x{header.height})")
    return image  # type: ignore[no-any-return]
