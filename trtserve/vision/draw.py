"""Annotation drawing for demos, ``detect --out`` and ``stream --out``: boxes and labels readable at a glance.

* Each class has its own colour from :data:`PALETTE`, Kenneth Kelly's 22 colours of maximum contrast less white
  and black (20 colours, every pair at least 15 CIE76 ΔE apart; class ids past 20 reuse them in order).
* A label is ``name score`` on a filled background of the class colour, in black or white text, whichever contrasts
  more with that background (at least 4.5:1 by WCAG 2's measure for every palette colour).
* Labels stay inside the frame: above the box when there is room, else inside it below its top edge; shifted left
  when the box touches the right edge; the font shrinks (then the text is cut) on frames narrower than the label.
* Line thickness and font size follow the frame's size, so a 4K frame's boxes are as readable as a 360p one's.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.errors import InvalidFrameError
from trtserve.vision.detections import Detections

# Kelly's colours of maximum contrast (K. L. Kelly, 1965) without white and black, as BGR for OpenCV
_KELLY_RGB_HEX = (
    "F3C300",
    "875692",
    "F38400",
    "A1CAF1",
    "BE0032",
    "C2B280",
    "848482",
    "008856",
    "E68FAC",
    "0067A5",
    "F99379",
    "604E97",
    "F6A600",
    "B3446C",
    "DCD300",
    "882D17",
    "8DB600",
    "654522",
    "E25822",
    "2B3D26",
)
PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    (int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in _KELLY_RGB_HEX
)
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_FONT_SCALE = 0.3


def class_color(class_id: int) -> tuple[int, int, int]:
    """The BGR colour of ``class_id``."""
    return PALETTE[class_id % len(PALETTE)]


def relative_luminance(bgr: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour given as BGR, 0 (black) to 1 (white)."""
    linear = [c / 255 / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in bgr]
    return 0.0722 * linear[0] + 0.7152 * linear[1] + 0.2126 * linear[2]


def contrast_ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG 2 contrast ratio of two BGR colours, 1 (same) to 21 (black on white)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)))
    return (lb + 0.05) / (la + 0.05)


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``background``."""
    return BLACK if contrast_ratio(background, BLACK) >= contrast_ratio(background, WHITE) else WHITE


def line_thickness_px(height_px: int, width_px: int) -> int:
    """Box line thickness for a frame: 1 px up to ~540 px on the short side, +1 per 360 px past that."""
    return max(1, round(min(height_px, width_px) / 360))


def font_scale(height_px: int, width_px: int) -> float:
    """OpenCV font scale for a frame: 0.4 at 360 px on the short side, growing with it (at least 0.3)."""
    return max(MIN_FONT_SCALE, min(height_px, width_px) / 900)


def _bgr(frame: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """A 3-channel copy of ``frame`` (grayscale frames, 2-D or with one channel, are replicated; alpha dropped)."""
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return np.asarray(cv2.cvtColor(np.ascontiguousarray(frame.reshape(frame.shape[:2])), cv2.COLOR_GRAY2BGR))
    if frame.ndim == 3 and frame.shape[2] == 4:
        return np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR))
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame.copy()
    raise InvalidFrameError(
        f"cannot draw on a frame of shape {list(frame.shape)}; expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]"
    )


def label_rect(
    box_xyxy: tuple[int, int, int, int], size_wh: tuple[int, int], frame_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Where a label of ``size_wh`` goes for a box: (x0, y0, x1, y1), exclusive ends, inside the frame.

    Above the box's top-left corner when it fits there, else just inside the box below its top edge; moved left
    when it would pass the right edge and up when it would pass the bottom one.
    """
    x0, y0, _, _ = box_xyxy
    w, h = size_wh
    frame_h, frame_w = frame_hw
    top = y0 - h if y0 - h >= 0 else max(y0, 0)
    top = max(0, min(top, frame_h - h))
    left = max(0, min(x0, frame_w - w))
    return left, top, left + min(w, frame_w), top + min(h, frame_h)


def _fit(text: str, scale: float, thickness: int, width_px: int) -> tuple[str, float, tuple[int, int], int]:
    """``text`` (cut if need be) and a font scale at which it fits ``width_px``, with its size and baseline."""
    pad = 2 * max(1, thickness)
    while True:
        (w, h), base = cv2.getTextSize(text, FONT, scale, thickness)
        if w + 2 * pad <= width_px:
            return text, scale, (w, h), base
        if scale > MIN_FONT_SCALE:
            scale = max(MIN_FONT_SCALE, scale * 0.85)
        elif len(text) > 1:
            text = text[:-1]
        else:
            return text, scale, (w, h), base


def annotate(frame: NDArray[np.uint8], detections: Detections, class_names: tuple[str, ...]) -> NDArray[np.uint8]:
    """A 3-channel (BGR) copy of ``frame`` with each detection's box and ``label score`` drawn on it.

    A frame without detections comes back unchanged (grayscale ones as 3-channel copies, so a video of mixed
    frames keeps one shape).
    """
    out = _bgr(frame)
    frame_h, frame_w = out.shape[:2]
    thickness = line_thickness_px(frame_h, frame_w)
    text_thickness = max(1, thickness - 1)
    scale = font_scale(frame_h, frame_w)
    pad = 2 * thickness
    for box, score, cls in zip(detections.boxes_xyxy, detections.scores, detections.class_ids):
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        color = class_color(int(cls))
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness)  # axis-aligned: crisp, no anti-aliasing
        name = class_names[int(cls)] if 0 <= int(cls) < len(class_names) else str(int(cls))
        text, fitted, (tw, th), base = _fit(f"{name} {float(score):.2f}", scale, text_thickness, frame_w)
        lx0, ly0, lx1, ly1 = label_rect((x0, y0, x1, y1), (tw + 2 * pad, th + base + 2 * pad), (frame_h, frame_w))
        cv2.rectangle(out, (lx0, ly0), (lx1 - 1, ly1 - 1), color, cv2.FILLED)
        cv2.putText(
            out, text, (lx0 + pad, ly1 - pad - base), FONT, fitted, text_color(color), text_thickness, cv2.LINE_AA
        )
    return out
