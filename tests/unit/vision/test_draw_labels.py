"""Annotated frames (trtserve.vision.draw), checked on the pixels: labels inside the frame, distinct class colours,
legible text, scaled strokes, grayscale frames, and frames without detections left alone."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from trtserve.errors import InvalidFrameError
from trtserve.vision.detections import Detections
from trtserve.vision.draw import (
    BLACK,
    PALETTE,
    WHITE,
    annotate,
    class_color,
    contrast_ratio,
    line_thickness_px,
    text_color,
)

NAMES = ("circle", "square", "triangle", "star", "cross", "ring")
FRAME_HW = (240, 320)
GREY = 128  # neither a palette colour nor a text colour


def detections(boxes: list[list[float]], classes: list[int], scores: list[float] | None = None) -> Detections:
    n = len(boxes)
    return Detections(
        np.array(boxes, np.float32).reshape(n, 4),
        np.array(scores if scores is not None else [0.9] * n, np.float32),
        np.array(classes, np.int64),
    )


def grey_frame(hw: tuple[int, int] = FRAME_HW) -> np.ndarray:
    return np.full((*hw, 3), GREY, np.uint8)


def text_mask(image: np.ndarray, cls: int) -> np.ndarray:
    """Pixels of the label text, anti-aliased edges included: neither the grey frame nor the class colour (boxes
    and label backgrounds are drawn without anti-aliasing)."""
    return ~(image == GREY).all(axis=2) & ~(image == class_color(cls)).all(axis=2)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    assert ys.size, "nothing found"
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


H, W = FRAME_HW
EDGE_BOXES = {
    "top": [100, 0, 160, 60],
    "bottom": [100, H - 50, 160, H - 1],
    "left": [0, 100, 50, 150],
    "right": [W - 40, 100, W - 1, 150],
    "top-right corner": [W - 30, 0, W - 1, 30],
    "bottom-left corner": [0, H - 30, 30, H - 1],
    "whole frame": [0, 0, W - 1, H - 1],
}


@pytest.mark.parametrize("cls", [0, 4])  # black text on yellow, white text on red
@pytest.mark.parametrize("where", list(EDGE_BOXES))
def test_label_and_its_background_stay_inside_the_frame_for_a_box_at_each_edge(where: str, cls: int) -> None:
    middle = text_mask(annotate(grey_frame(), detections([[120, 100, 180, 160]], [cls]), NAMES), cls)
    box = EDGE_BOXES[where]
    out = annotate(grey_frame(), detections([box], [cls]), NAMES)
    mask = text_mask(out, cls)
    assert mask.sum() == middle.sum()  # the whole text was drawn: none of it fell off the frame
    x0, y0, x1, y1 = bbox(mask)
    # the filled background surrounds the text on every side, inside the frame
    assert x0 >= 1 and y0 >= 1 and x1 <= W - 2 and y1 <= H - 2
    ring = np.zeros(out.shape[:2], bool)  # the 1 px frame just outside the text's bounding box
    ring[y0 - 1, x0 - 1 : x1 + 2] = ring[y1 + 1, x0 - 1 : x1 + 2] = True
    ring[y0 - 1 : y1 + 2, x0 - 1] = ring[y0 - 1 : y1 + 2, x1 + 1] = True
    assert (out[ring] == class_color(cls)).all(axis=1).all()
    if where.startswith("top") or where == "whole frame":
        assert y0 > box[1]  # no room above: the label is inside the box, below its top edge
    if "right" in where:
        assert x1 < box[0] + (x1 - x0) + 8 and x0 < box[0]  # shifted left of the box's corner to fit


def test_a_label_goes_above_its_box_when_there_is_room() -> None:
    out = annotate(grey_frame(), detections([[120, 100, 180, 160]], [0]), NAMES)
    x0, _, _, y1 = bbox(text_mask(out, 0))
    assert y1 < 100 and x0 >= 120


def test_different_classes_get_different_colours_on_the_frame() -> None:
    out = annotate(grey_frame(), detections([[20, 60, 100, 140], [180, 60, 260, 140]], [0, 4]), NAMES)
    left_edge, right_edge = tuple(out[100, 20]), tuple(out[100, 180])  # the two boxes' left sides
    assert left_edge == class_color(0) and right_edge == class_color(4) and left_edge != right_edge


def test_the_palette_has_twenty_colours_all_far_apart() -> None:
    assert len(set(PALETTE)) >= 20
    lab = cv2.cvtColor(np.array([PALETTE], np.uint8).astype(np.float32) / 255, cv2.COLOR_BGR2LAB)[0]
    closest = min(float(np.linalg.norm(lab[i] - lab[j])) for i, j in itertools.combinations(range(len(PALETTE)), 2))
    assert closest >= 15.0  # CIE76 ΔE: 2.3 is a just-noticeable difference
    assert [class_color(k) for k in range(len(PALETTE))] == list(PALETTE)


@pytest.mark.parametrize("color", PALETTE)
def test_label_text_contrasts_with_every_background(color: tuple[int, int, int]) -> None:
    assert text_color(color) in (BLACK, WHITE)
    assert contrast_ratio(color, text_color(color)) >= 4.5  # WCAG AA for text


@pytest.mark.parametrize("cls", [0, 1, 4, 7])
def test_drawn_text_pixels_contrast_with_the_label_background(cls: int) -> None:
    out = annotate(grey_frame((720, 1280)), detections([[300, 300, 500, 500]], [cls]), NAMES)
    bg = np.array(class_color(cls), np.int16)
    label = out[250:300, 300:520].astype(np.int16)
    far = label.reshape(-1, 3)[np.abs(label.reshape(-1, 3) - bg).sum(1).argmax()]
    ink = (int(far[0]), int(far[1]), int(far[2]))
    assert contrast_ratio(ink, class_color(cls)) >= 4.5


def test_strokes_and_text_grow_with_the_frame() -> None:
    assert (
        line_thickness_px(360, 640) == 1 and line_thickness_px(1080, 1920) == 3 and line_thickness_px(2160, 3840) == 6
    )
    small = annotate(grey_frame((360, 640)), detections([[100, 100, 200, 200]], [0]), NAMES)
    large = annotate(grey_frame((1080, 1920)), detections([[300, 300, 600, 600]], [0]), NAMES)
    _, sy0, _, sy1 = bbox(text_mask(small, 0))
    _, ly0, _, ly1 = bbox(text_mask(large, 0))
    assert (ly1 - ly0) >= 2.5 * (sy1 - sy0)
    small_line = (small[150, 90:110] == class_color(0)).all(axis=1).sum()  # the box's left side, across
    large_line = (large[450, 290:310] == class_color(0)).all(axis=1).sum()
    assert small_line == 1 and large_line >= 3


def test_a_label_wider_than_the_frame_is_shrunk_to_fit() -> None:
    out = annotate(grey_frame((60, 48)), detections([[5, 5, 40, 50]], [2]), ("a-very-long-class-name",))
    x0, _, x1, _ = bbox(text_mask(out, 2))
    assert x0 >= 1 and x1 <= 46


@pytest.mark.parametrize("shape", [(120, 160), (120, 160, 1)])
def test_grayscale_frames_are_drawn_on_in_colour(shape: tuple[int, ...]) -> None:
    frame = np.full(shape, 90, np.uint8)
    out = annotate(frame, detections([[20, 40, 80, 100]], [4]), NAMES)
    assert out.shape == (120, 160, 3)
    assert tuple(out[70, 20]) == class_color(4)
    assert (out[110:, :] == 90).all()  # away from the box, the grey is kept
    assert (frame == 90).all()


def test_no_detections_leave_the_frame_unchanged() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    before = frame.copy()
    out = annotate(frame, Detections.empty(), NAMES)
    assert out is not frame and np.array_equal(out, before) and np.array_equal(frame, before)
    grey = rng.integers(0, 256, (90, 120), dtype=np.uint8)
    assert np.array_equal(annotate(grey, Detections.empty(), NAMES), np.dstack([grey] * 3))


def test_drawing_leaves_the_input_frame_alone_and_names_unknown_class_ids() -> None:
    frame = grey_frame()
    out = annotate(frame, detections([[50, 50, 120, 120]], [9]), NAMES)  # 9: past the model's class names
    assert (frame == GREY).all() and not (out == GREY).all()
    assert tuple(out[80, 50]) == class_color(9)


def test_frames_of_other_shapes_are_refused_with_the_shape() -> None:
    with pytest.raises(InvalidFrameError, match=r"\[4, 4, 2\]"):
        annotate(np.zeros((4, 4, 2), np.uint8), Detections.empty(), NAMES)
