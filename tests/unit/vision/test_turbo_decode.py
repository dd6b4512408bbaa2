"""Whole colour JPEGs decode through simplejpeg (where installed) behind the same header checks, with OpenCV's
pixels; what TurboJPEG refuses goes to OpenCV, and a frame neither decodes is 'cannot decode the image: ...'."""

import cv2
import numpy as np
import pytest

from trtserve.datasets.synthetic import video_frames
from trtserve.errors import InvalidFrameError
from trtserve.vision import frames
from trtserve.vision.frames import admit_encoded, decode_image

pytest.importorskip("simplejpeg")
LIMIT = 8_294_400


def _jpeg(quality: int = 90, progressive: bool = False) -> bytes:
    image = next(iter(video_frames(1))).image_bgr
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    return cv2.imencode(".jpg", image, params)[1].tobytes()


@pytest.mark.parametrize("progressive", [False, True])
def test_simplejpeg_decodes_the_pixels_opencv_decodes(progressive: bool) -> None:
    data = _jpeg(progressive=progressive)
    header = admit_encoded(data, LIMIT)
    turbo = frames._turbo_decode(header)
    assert turbo is not None  # the fast path was taken
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    np.testing.assert_array_equal(turbo, expected)
    np.testing.assert_array_equal(decode_image(data, LIMIT), expected)


def test_a_jpeg_neither_decoder_can_read_is_an_invalid_frame_in_trtserves_words() -> None:
    data = bytearray(_jpeg())
    dht = data.index(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16  # a Huffman table declaring far more than 256 codes
    with pytest.raises(InvalidFrameError) as caught:
        decode_image(bytes(data), LIMIT)
    assert str(caught.value).startswith("cannot decode the image: ")
    assert "simplejpeg" not in str(caught.value) and "turbo" not in str(caught.value).lower()
