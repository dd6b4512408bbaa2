"""JPEG EXIF orientation: real JPEGs carrying each Orientation tag (an APP1 EXIF segment written here with struct)
decode upright on both decode paths (simplejpeg and OpenCV), as OpenCV's own EXIF-aware ``imdecode`` turns them;
``exif_orientation=False`` gives the stored pixels; a broken EXIF block is ignored, never a refusal; the header
checks still apply."""

import struct

import cv2
import numpy as np
import pytest

from trtserve.errors import InvalidFrameError
from trtserve.vision import frames
from trtserve.vision.frames import admit_encoded, decode_for_input, decode_image, orient
from trtserve.vision.image_headers import exif_orientation, read_header

LIMIT = 1 << 24


def exif_app1(orientation: int, order: str = "<", kind: int = 3, ifd_offset: int = 8, count: int | None = None,
              extra_entries: int = 0) -> bytes:
    """An APP1 segment (marker, length, ``Exif\\0\\0`` + TIFF) whose IFD0 holds ``extra_entries`` other tags, then
    Orientation = ``orientation`` (type ``kind``)."""
    tag = b"II" if order == "<" else b"MM"
    entries = [struct.pack(order + "HHII", 0x0100 + k, 4, 1, 0) for k in range(extra_entries)]  # width, ...
    value = struct.pack(order + "HH", orientation, 0) if kind == 3 else struct.pack(order + "I", orientation)
    entries.append(struct.pack(order + "HHI", 0x0112, kind, 1) + value)
    n = len(entries) if count is None else count
    tiff = tag + struct.pack(order + "HI", 42, ifd_offset) + struct.pack(order + "H", n) + b"".join(entries)
    tiff += struct.pack(order + "I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def with_segment(jpeg: bytes, segment: bytes) -> bytes:
    """``jpeg`` with ``segment`` right after its SOI, where cameras write EXIF."""
    return jpeg[:2] + segment + jpeg[2:]


def picture(h: int = 48, w: int = 64) -> np.ndarray:
    """An asymmetric picture in 16-pixel blocks (JPEG keeps them nearly exact): every flip and turn differs."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:16, :16] = (255, 255, 255)
    img[:, w - 16:] = (0, 0, 255)
    img[h - 16:, :32] = (0, 255, 0)
    return img


def jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def opencv_upright(data: bytes) -> np.ndarray:
    """OpenCV's own EXIF handling (imdecode without IMREAD_IGNORE_ORIENTATION): the reference."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


@pytest.fixture(params=["simplejpeg", "opencv"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each whole-frame decode path: simplejpeg where installed, and OpenCV (simplejpeg taken away)."""
    if request.param == "opencv":
        monkeypatch.setattr(frames, "_simplejpeg", None)
    elif frames._simplejpeg is None:
        pytest.skip("simplejpeg (the `fast` extra) is not installed")
    return str(request.param)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_orientation_decodes_as_opencv_turns_it(orientation: int, order: str, decoder: str) -> None:
    plain = jpeg(picture())
    data = with_segment(plain, exif_app1(orientation, order))
    assert read_header(data).orientation == orientation
    got = decode_image(data, LIMIT)
    np.testing.assert_array_equal(got, opencv_upright(data))
    np.testing.assert_array_equal(got, orient(decode_image(plain, LIMIT), orientation))
    assert got.shape == ((64, 48, 3) if orientation >= 5 else (48, 64, 3))
    np.testing.assert_array_equal(decode_image(data, LIMIT, exif_orientation=False), decode_image(plain, LIMIT))


def test_the_turns_are_the_ones_exif_defines() -> None:
    """What the camera saw (``upright``), stored turned the way each tag says, comes back upright."""
    upright = picture()
    stored_as = {1: upright, 2: upright[:, ::-1], 3: upright[::-1, ::-1], 4: upright[::-1],
                 5: upright.transpose(1, 0, 2), 6: np.rot90(upright, 1), 7: upright.transpose(1, 0, 2)[::-1, ::-1],
                 8: np.rot90(upright, -1)}  # np.rot90(k=1) turns counter-clockwise; tag 6 says "turn it clockwise"
    for orientation, stored in stored_as.items():
        data = with_segment(jpeg(np.ascontiguousarray(stored)), exif_app1(orientation))
        got = decode_image(data, LIMIT).astype(int)
        assert got.shape == upright.shape, orientation
        assert np.abs(got - upright).mean() < 3, orientation  # JPEG's loss only


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_downscaled_decode_is_upright_and_reports_the_upright_size(orientation: int) -> None:
    stored = cv2.resize(picture(), (1280, 720), interpolation=cv2.INTER_NEAREST)
    data = with_segment(jpeg(stored), exif_app1(orientation))
    asked: list[tuple[int, int]] = []

    def needed(w: int, h: int) -> tuple[int, int]:
        asked.append((w, h))
        return (w // 4, h // 4)

    image, original_hw = decode_for_input(data, LIMIT, needed)
    upright_hw = (1280, 720) if orientation >= 5 else (720, 1280)
    assert original_hw == upright_hw and asked == [upright_hw[::-1]]
    assert image.shape[:2] == (upright_hw[0] // 4, upright_hw[1] // 4)  # decoded at 1/4, then turned
    whole = decode_image(data, LIMIT)
    small = cv2.resize(whole, image.shape[1::-1], interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(small - image).mean() < 4
    image, original_hw = decode_for_input(data, LIMIT, needed, exif_orientation=False)
    assert original_hw == (720, 1280) and image.shape[:2] == (180, 320)


def test_a_broken_exif_block_is_ignored_not_refused() -> None:
    plain = jpeg(picture())
    stored = decode_image(plain, LIMIT)
    cut = exif_app1(6)[:16]  # the segment ends inside the TIFF header (its length field says so)
    cut = cut[:2] + struct.pack(">H", len(cut) - 2) + cut[4:]
    for segment, expected in [
        (exif_app1(6, ifd_offset=4000), 1),  # IFD0 past the segment
        (exif_app1(6, ifd_offset=2), 1),  # IFD0 inside the TIFF header
        (exif_app1(6, count=500), 6),  # more entries than the segment holds: those that fit are read
        (exif_app1(6, kind=4), 1),  # Orientation as a LONG: not what EXIF defines
        (exif_app1(9), 1),  # no such orientation
        (exif_app1(0), 1),
        (cut, 1),
        (b"\xff\xe1\x00\x10Exif\x00\x00XX*\x00\x08\x00\x00\x00", 1),  # not a TIFF byte order
    ]:
        data = with_segment(plain, segment)
        assert read_header(data).orientation == expected, segment
        np.testing.assert_array_equal(decode_image(data, LIMIT), orient(stored, expected))


def test_orientation_is_read_past_other_tags_and_only_from_the_first_exif_segment() -> None:
    plain = jpeg(picture())
    assert read_header(with_segment(plain, exif_app1(8, ">", extra_entries=5))).orientation == 8
    twice = with_segment(with_segment(plain, exif_app1(3)), exif_app1(6))  # 6 first, then 3
    assert read_header(twice).orientation == 6
    np.testing.assert_array_equal(decode_image(twice, LIMIT), opencv_upright(twice))
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x/>"  # an APP1 that is not EXIF comes first
    data = with_segment(with_segment(plain, exif_app1(6)), b"\xff\xe1" + struct.pack(">H", len(xmp) + 2) + xmp)
    assert read_header(data).orientation == 6
    assert exif_orientation(b"not exif") == 1


def test_the_header_checks_still_apply_to_an_oriented_frame() -> None:
    big = with_segment(jpeg(np.zeros((200, 300, 3), np.uint8)), exif_app1(6))
    with pytest.raises(InvalidFrameError, match="exceeds the limit of 50000"):
        decode_image(big, 50_000)  # the pixel limit: the turn changes no pixel count
    assert admit_encoded(big, LIMIT).transposed
    data = with_segment(jpeg(np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)), exif_app1(6))
    scan = data.index(b"\xff\xda")
    with pytest.raises(InvalidFrameError, match="less than one bit per block"):
        decode_image(data[:scan + 100], LIMIT)  # a bomb's signature: the size claimed, no data to back it


def test_gray_jpeg_and_png_frames() -> None:
    gray = picture()[..., 1]
    data = with_segment(jpeg(gray), exif_app1(6))  # a 1-component JPEG: OpenCV's path
    got = decode_image(data, LIMIT)
    assert got.shape == (64, 48, 3)
    np.testing.assert_array_equal(got, opencv_upright(data))
    png = cv2.imencode(".png", picture())[1].tobytes()
    assert read_header(png).orientation == 1  # PNG frames are used as stored
