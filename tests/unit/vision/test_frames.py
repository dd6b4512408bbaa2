import cv2
import numpy as np
import pytest

from trtserve.errors import InvalidFrameError
from trtserve.vision.frames import check_frame, decode_for_input, decode_image, jpeg_header

LIMIT = 4096 * 4096


def encoded(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def test_decodes_jpeg_and_png() -> None:
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encoded(".png", img), LIMIT), img)
    assert decode_image(encoded(".jpg", img), LIMIT).shape == (48, 64, 3)


def test_png_with_alpha_becomes_bgr() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    assert decode_image(encoded(".png", rgba), LIMIT).shape == (8, 8, 3)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"not an image at all", "cannot decode the image: not a JPEG or PNG"),
])
def test_undecodable_bytes(data: bytes, message: str) -> None:
    with pytest.raises(InvalidFrameError, match=message):
        decode_image(data, LIMIT)


def test_truncated_jpeg_is_rejected_or_decoded_partially_never_crashes() -> None:
    data = encoded(".jpg", np.full((64, 64, 3), 100, np.uint8))
    with pytest.raises(InvalidFrameError, match="cannot decode the image"):
        decode_image(data[:20], LIMIT)


def test_grayscale_where_colour_is_expected() -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(decode_image(encoded(".png", gray), LIMIT), np.dstack([gray] * 3))  # encoded: BGR
    for raw in (gray, gray[..., None]):  # raw arrays are converted too (IR / night cameras)
        np.testing.assert_array_equal(check_frame(raw, LIMIT), np.dstack([gray] * 3))


@pytest.mark.parametrize("frame, message", [
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((10, 10, 3), np.float32), "dtype float32"),
    (np.zeros((10, 10, 5), np.uint8), "expected H x W x 3"),
    (np.zeros((100, 100, 3), np.uint8), "exceeds the limit of 9999"),
])
def test_bad_arrays(frame: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidFrameError, match=message):
        check_frame(frame, 9999)


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_jpeg_header_without_decoding() -> None:
    colour = np.random.default_rng(0).integers(0, 256, (90, 161, 3), dtype=np.uint8)
    assert jpeg_header(_jpeg(colour)) == (161, 90, 3)
    assert jpeg_header(_jpeg(colour[..., 0])) == (161, 90, 1)
    assert jpeg_header(cv2.imencode(".png", colour)[1].tobytes()) is None
    assert jpeg_header(_jpeg(colour)[:20]) is None  # truncated before the frame header
    assert jpeg_header(b"") is None


def test_large_jpegs_are_downscaled_while_decoding() -> None:
    frame = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    image, original_hw = decode_for_input(_jpeg(frame), 1 << 30, lambda w, h: (256, 144))
    assert original_hw == (1080, 1920) and image.shape == (270, 480, 3)  # 1/8 would be 240 wide: too few
    small = frame[:360, :480]
    image, original_hw = decode_for_input(_jpeg(small), 1 << 30, lambda w, h: (256, 192))
    assert original_hw == (360, 480) and image.shape == (360, 480, 3)  # 1/2 would be 240 wide: decoded whole


def test_downscaled_decoding_keeps_every_refusal() -> None:
    frame = np.random.default_rng(2).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    with pytest.raises(InvalidFrameError, match=r"frame of 1920x1080 = 2073600 pixels exceeds the limit"):
        decode_for_input(_jpeg(frame), 1_000_000, lambda w, h: (64, 36))  # checked on the header, not decoded
    image, original_hw = decode_for_input(_jpeg(frame[..., 0]), 1 << 30, lambda w, h: (64, 36))  # gray -> BGR
    assert original_hw == (1080, 1920) and image.shape == (135, 240, 3)
    with pytest.raises(InvalidFrameError, match="cannot decode the image"):
        decode_for_input(b"\xff\xd8" + b"\x00" * 64, 1 << 30, lambda w, h: (64, 36))
