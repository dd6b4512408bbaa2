"""Raw frames from every camera: grayscale (H x W, H x W x 1) and 16-bit arrays are converted to BGR uint8 the way
encoded ones are, after the size check; colour uint8 frames pass untouched."""

import cv2
import numpy as np
import pytest

from trtserve.errors import InvalidFrameError
from trtserve.vision.frames import check_frame, decode_image

LIMIT = 10_000


def test_colour_uint8_is_returned_as_it_is() -> None:
    frame = np.zeros((10, 12, 3), np.uint8)
    assert check_frame(frame, LIMIT) is frame


@pytest.mark.parametrize("shape", [(36, 48), (36, 48, 1)])
def test_grayscale_raw_becomes_bgr(shape: tuple[int, ...]) -> None:
    gray = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = check_frame(gray, LIMIT)
    assert out.shape == (36, 48, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.dstack([gray.reshape(36, 48)] * 3))


def test_16_bit_raw_is_scaled_as_a_16_bit_png_is() -> None:
    deep = np.random.default_rng(1).integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    png = cv2.imencode(".png", deep)[1].tobytes()
    np.testing.assert_array_equal(check_frame(deep, LIMIT), decode_image(png, LIMIT))
    np.testing.assert_array_equal(check_frame(deep[..., 0], LIMIT), decode_image(
        cv2.imencode(".png", deep[..., 0])[1].tobytes(), LIMIT))
    np.testing.assert_array_equal(check_frame(deep[:, ::-1], LIMIT)[:, ::-1], check_frame(deep, LIMIT))


def test_oversized_grayscale_is_refused_before_it_is_converted() -> None:
    with pytest.raises(InvalidFrameError, match="200x100 = 20000 pixels exceeds the limit of 10000"):
        check_frame(np.zeros((100, 200), np.uint16), LIMIT)


@pytest.mark.parametrize("frame, message", [
    (np.zeros((10, 10, 4), np.uint8), r"shape \[10, 10, 4\]; expected H x W x 3 \(BGR\) or H x W \(grayscale\)"),
    (np.zeros((10, 10), np.int32), "dtype int32; expected uint8 (or uint16)"),
    (np.zeros((0, 10), np.uint8), "empty"),
])
def test_what_is_still_refused(frame: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidFrameError, match=message.replace("(", r"\(").replace(")", r"\)")
                       if "[" not in message else message):
        check_frame(frame, LIMIT)
