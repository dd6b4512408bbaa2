"""Hostile encoded frames (issue 13, items 1 and 4): refused from their header, before the decoder allocates.

Each bomb is crafted here from bytes (trtserve/bench/bombs.py) and decoded by the real OpenCV. The memory
cases run in forked processes (tests/unit/vision/isolated.py) because OpenCV allocates outside Python's view.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import cv2
import numpy as np
import pytest

from tests.unit.vision.isolated import measure
from trtserve.bench import bombs as hi
from trtserve.errors import InvalidFrameError
from trtserve.vision.frames import DECODE_BYTES_PER_PIXEL, decode_for_input, decode_image, jpeg_header
from trtserve.vision.image_headers import MAX_PROGRESSIVE_SCANS, read_header

LIMIT = 8294400  # model.yaml's default max_frame_pixels
NATURAL = hi.natural_frame()
TINY = NATURAL[:16, :16]


def refusal(data: bytes, max_pixels: int = LIMIT) -> str:
    """The message of the InvalidFrameError that decoding ``data`` raises, checked to leak nothing of OpenCV."""
    with pytest.raises(InvalidFrameError) as caught:
        decode_image(data, max_pixels)
    message = str(caught.value)
    for leak in ("OpenCV", ".cpp", "/io/", "cv2", "error(", "Assertion"):
        assert leak not in message, message
    return message


# --- memory: each bomb measured in its own process ---------------------------------------------------------------

def _memory_cases() -> list[tuple[str, bytes, int, str | None]]:
    flat_gray = hi.jpeg(np.full((6000, 6000), 90, np.uint8))
    flat_colour = hi.jpeg(np.full((4000, 4000, 3), 90, np.uint8))
    return [
        ("normal 480x360 JPEG", hi.jpeg(NATURAL), LIMIT, None),
        ("normal 480x360 PNG", hi.png(NATURAL), LIMIT, None),
        ("PNG IDAT declaring 0xFF00000C bytes", hi.png_idat_length_bomb(), LIMIT, "IDAT declares 4278190092 bytes"),
        ("6000x6000 PNG of 105 KB", hi.png_zeros(6000, 6000), LIMIT, "6000x6000 = 36000000 pixels exceeds"),
        ("6000x6000 grayscale JPEG", flat_gray, 1_000_000, "6000x6000 = 36000000 pixels exceeds"),
        ("4000x4000 JPEG, stray byte before SOF", hi.jpeg_stray_byte_before_sof(flat_colour), 1_000_000,
         "4000x4000 = 16000000 pixels exceeds"),
        ("591-byte progressive JPEG declaring 2880x2880",
         hi.jpeg_with_dims(hi.jpeg(TINY, progressive=True), 2880, 2880), LIMIT, "less than one bit per block"),
        ("394-byte grayscale JPEG declaring 8000x8000", hi.jpeg_with_dims(hi.jpeg(TINY[..., 0]), 8000, 8000), 1 << 28,
         "less than one bit per block"),
        ("PNG with 30 zTXt chunks of 4 MB inflated", hi.png_with_chunks_before_idat(
            hi.png(NATURAL), [hi.ztxt_chunk(4_000_000) for _ in range(30)]), LIMIT, None),
        ("PNG 2800x2800 with one row of IDAT", hi.png_short_idat(2800, 2800), LIMIT, "deflate's 1032:1"),
    ]


MEMORY_CASES = _memory_cases()


@pytest.fixture(scope="module")
def measured() -> dict[str, dict[str, Any]]:
    results = measure([(name, data, limit) for name, data, limit, _ in MEMORY_CASES])
    return {r["name"]: r for r in results}


@pytest.mark.parametrize("name, expected", [(c[0], c[3]) for c in MEMORY_CASES], ids=[c[0] for c in MEMORY_CASES])
def test_a_bomb_costs_no_more_memory_than_a_normal_frame(measured: dict[str, dict[str, Any]], name: str,
                                                         expected: str | None) -> None:
    result = measured[name]
    if expected is None:
        assert result["error_type"] is None, result
    else:
        assert result["error_type"] == "InvalidFrameError" and expected in result["message"], result
    # a normal frame grows the process by ~2-18 MB (its output, the codec's buffers, allocator arenas: it depends on
    # the OpenCV build and the environment), the old intake by 28 to 828 MB for these: a bomb may cost at most twice
    # what a normal frame of the same format costs here (and never less than 16 MB of allowance)
    normal = measured["normal 480x360 PNG" if "PNG" in name else "normal 480x360 JPEG"]
    assert 0 <= result["rss_growth_kb"] < max(16 * 1024, 2 * normal["rss_growth_kb"]), (result, normal)


# --- formats -----------------------------------------------------------------------------------------------------

def _encoded_by_opencv(ext: str) -> bytes | None:
    image = np.zeros((8, 8, 3), np.float32 if ext in (".pfm", ".hdr", ".exr") else np.uint8)
    try:
        ok, buf = cv2.imencode(ext, image)
    except cv2.error:
        return None
    return buf.tobytes() if ok else None


@pytest.mark.parametrize("ext, name", [(".bmp", "BMP"), (".tiff", "TIFF"), (".webp", "WebP"), (".gif", "GIF"),
                                       (".ppm", "PNM"), (".pam", "PNM"), (".pfm", "PFM"), (".hdr", "Radiance HDR"),
                                       (".ras", "Sun raster"), (".exr", "OpenEXR"), (".jp2", "JPEG 2000"),
                                       (".avif", "AVIF")])
def test_formats_other_than_jpeg_and_png_are_refused_by_name(ext: str, name: str) -> None:
    data = _encoded_by_opencv(ext)
    if data is None:
        pytest.skip(f"this OpenCV cannot write {ext}")
    assert f"image format {name}" in refusal(data) and "send JPEG or PNG" in refusal(data)


@pytest.mark.parametrize("data, name", [
    (b"v/1\x01" + b"\x00" * 60, "OpenEXR"), (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 40, "JPEG 2000"),
    (b"\xff\x4f\xff\x51" + b"\x00" * 40, "JPEG 2000"), (b"\xff\x0a" + b"\x00" * 40, "JPEG XL"),
    (hi.bmp_header_only(20000, 20000), "BMP"), (hi.tiff_header_only(20000, 20000), "TIFF"),
], ids=["exr", "jp2", "j2k", "jxl", "bmp-20000", "tiff-20000"])
def test_magic_numbers_name_the_format(data: bytes, name: str) -> None:
    assert f"image format {name} is not accepted" in refusal(data)


def test_what_is_not_an_image_says_so() -> None:
    assert "not a JPEG or PNG" in refusal(b"GET / HTTP/1.1\r\n\r\n")


# --- item 4: decoder failures are INVALID_ARGUMENT without OpenCV's words ----------------------------------------

def test_opencv_assertions_do_not_escape() -> None:
    # the old intake let cv2.error out of imdecode (INTERNAL, with OpenCV's source path) for a 2,000,000-wide PPM
    assert "image format PNM" in refusal(hi.pnm_header_only(2_000_000, 1))
    # an accepted JPEG over OpenCV's 2^30-pixel limit: the header is fine, cv2.imdecode asserts
    big = hi.jpeg_sof(0xC0, 40000, 30000, components=1)
    big = big[:-66] + b"\x00" * 2_400_000 + b"\xff\xd9"
    message = refusal(big, 1 << 31)
    assert message.startswith("cannot decode the image: the JPEG decoder rejected its data")


def test_corrupt_data_is_a_short_reason() -> None:
    data = hi.jpeg(NATURAL)
    message = refusal(data[:600] + b"\xff\xd9")
    assert message.startswith("cannot decode the image: ")


# --- PNG structure -----------------------------------------------------------------------------------------------

def _png(*chunks: bytes) -> bytes:
    return hi.PNG_SIGNATURE + b"".join(chunks)


IDAT = hi.png_chunk(b"IDAT", zlib.compress(b"\x00" * (8 * (1 + 24)), 9))
IEND = hi.png_chunk(b"IEND", b"")


PNG_REFUSALS = [
    (_png(hi.png_chunk(b"tEXt", b"a\x00b"), hi.ihdr(8, 8), IDAT, IEND), "does not start with a 13-byte IHDR"),
    (_png(hi.png_chunk(b"IHDR", b"\x00" * 12), IDAT, IEND), "does not start with a 13-byte IHDR"),
    (_png(hi.ihdr(0, 8), IDAT, IEND), "declares 0x8 pixels"),
    (_png(hi.ihdr(8, (1 << 20) + 1), IDAT, IEND), "each side must be 1 to 1048576"),
    (_png(hi.ihdr(8, 8, depth=16, colour=3), IDAT, IEND), "colour type 3 at bit depth 16"),
    (_png(hi.ihdr(8, 8, depth=4, colour=2), IDAT, IEND), "colour type 2 at bit depth 4"),
    (_png(hi.ihdr(8, 8, colour=5), IDAT, IEND), "colour type 5"),
    (_png(hi.ihdr(8, 8, interlace=2), IDAT, IEND), "unknown compression, filter or interlace"),
    (_png(hi.ihdr(8, 8), IEND), "no image data"),
    (_png(hi.ihdr(8, 8), hi.png_chunk(b"CgBI", b"\x00" * 4), IDAT, IEND), "unknown critical chunk CgBI"),
    (_png(hi.ihdr(8, 8), hi.png_chunk(b"I\x00AT", b""), IDAT, IEND), "invalid type"),
    (_png(hi.ihdr(8, 8), hi.ihdr(8, 8), IDAT, IEND), "more than one IHDR"),
    (_png(hi.ihdr(8, 8), hi.png_chunk(b"IDAT", b"\x78\x9c", length=1 << 31), IEND), "declares 2147483648 bytes"),
    (_png(hi.ihdr(8, 8), hi.png_chunk(b"tEXt", b"x" * 10, length=5000)), "chunk tEXt declares 5000 bytes"),
    (hi.PNG_SIGNATURE + hi.ihdr(8, 8)[:10], "chunk IHDR declares 13 bytes but 0 remain"),
    (hi.PNG_SIGNATURE + b"\x00\x00", "cut off before its IHDR"),
]


@pytest.mark.parametrize("data, message", PNG_REFUSALS, ids=[m for _, m in PNG_REFUSALS])
def test_png_structure_is_checked_before_decoding(data: bytes, message: str) -> None:
    assert message in refusal(data)


def test_png_chunks_that_do_not_decide_pixels_never_reach_the_decoder() -> None:
    base = hi.png(NATURAL)
    extra = [hi.ztxt_chunk(1_000_000), hi.png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * 100_000)),
             hi.png_chunk(b"tEXt", b"Title\x00hostile"), hi.png_chunk(b"acTL", struct.pack(">II", 1, 0)),
             hi.png_chunk(b"eXIf", b"MM\x00*" + b"\x00" * 20)]
    hostile = hi.png_with_chunks_before_idat(base, extra)
    header = read_header(hostile)
    assert b"zTXt" not in header.decoder_input and b"iCCP" not in header.decoder_input
    np.testing.assert_array_equal(decode_image(hostile, LIMIT), NATURAL)
    assert read_header(base).decoder_input is base  # nothing to drop: no copy


def test_png_without_iend_or_with_trailing_bytes_still_decodes() -> None:
    base = hi.png(NATURAL)
    np.testing.assert_array_equal(decode_image(base[:-12], LIMIT), NATURAL)
    np.testing.assert_array_equal(decode_image(base + b"trailing garbage", LIMIT), NATURAL)


def test_png_that_inflates_beyond_deflate_is_refused_and_the_densest_honest_one_is_not() -> None:
    honest = hi.png_zeros(2000, 2000)  # ~1:1000 at level 9
    assert decode_image(honest, LIMIT).shape == (2000, 2000, 3)
    assert "deflate's 1032:1" in refusal(hi.png_short_idat(2000, 2000))


# --- JPEG structure ----------------------------------------------------------------------------------------------

def test_stray_bytes_and_fill_bytes_before_the_frame_header_are_read_as_libjpeg_reads_them() -> None:
    data = hi.jpeg(NATURAL)
    stray = hi.jpeg_stray_byte_before_sof(data)
    assert jpeg_header(stray) == (480, 360, 3)  # the old scan gave up here, and the frame was decoded unchecked
    assert decode_image(stray, LIMIT).shape == (360, 480, 3)
    filled = hi.jpeg_with_segment_before_sof(data, b"\xff\xff\xff")
    assert jpeg_header(filled) == (480, 360, 3)
    assert "exceeds the limit of 100000" in refusal(hi.jpeg_stray_byte_before_sof(data), 100_000)


JPEG_REFUSALS = [
    (hi.jpeg_second_sof(hi.jpeg(NATURAL)), "more than one frame header"),
    (hi.jpeg_with_dims(hi.jpeg(NATURAL), 0, 360), "declares 0x360 pixels"),
    (hi.jpeg_with_dims(hi.jpeg(NATURAL), 480, 0), "declares 480x0 pixels"),
    (hi.jpeg_sof(0xC9, 16, 16), "JPEG (arithmetic-coded) is not accepted"),
    (hi.jpeg_sof(0xC3, 16, 16), "JPEG (lossless) is not accepted"),
    (hi.jpeg_sof(0xC5, 16, 16), "JPEG (hierarchical) is not accepted"),
    (hi.jpeg_sof(0xC1, 16, 16, precision=12), "JPEG (12-bit samples) is not accepted"),
    (hi.jpeg_sof(0xC0, 16, 16, components=2), "declares 2 colour components"),
    (hi.jpeg_sof(0xC0, 16, 16).replace(b"\x01\x11\x00", b"\x01\x51\x00", 1), "sampling factors 5x1"),
    (hi.jpeg_with_segment_before_sof(hi.jpeg(NATURAL), b"\xff\x02\x00\x04ab"), "unknown marker 0xFF02"),
    (hi.jpeg_with_segment_before_sof(hi.jpeg(NATURAL), b"\xff\xd9"), "ends (EOI) before any scan"),
    (hi.jpeg(NATURAL)[:300], "bytes but 88 remain"),
    (hi.jpeg(NATURAL)[:22], "cut off by the end of the data"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 9 + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00",
     "scan before its frame header"),
    (b"\xff\xd8junk", "does not start with an SOI marker followed by a marker"),
]


@pytest.mark.parametrize("data, message", JPEG_REFUSALS, ids=[m for _, m in JPEG_REFUSALS])
def test_jpeg_structure_is_checked_before_decoding(data: bytes, message: str) -> None:
    assert message in refusal(data)


def test_progressive_jpeg_with_too_many_scans_is_refused() -> None:
    progressive = hi.jpeg(NATURAL, progressive=True)
    assert read_header(progressive).scans == 10
    assert f"more than {MAX_PROGRESSIVE_SCANS} scans" in refusal(hi.jpeg_many_scans(progressive, MAX_PROGRESSIVE_SCANS))
    assert "more than 1 scans (sequential" in refusal(hi.jpeg_many_scans(hi.jpeg(NATURAL[..., 0]), 1))


def test_jpeg_data_must_back_its_declared_size() -> None:
    # the probe's bomb: a few hundred bytes of scans under a frame header of any size; libjpeg pads with zeros
    message = refusal(hi.jpeg_with_dims(hi.jpeg(TINY), 2000, 2000))
    assert "declares 2000x2000 pixels" in message and "less than one bit per block" in message
    flat = hi.jpeg(np.full((1080, 1920, 3), 128, np.uint8), quality=50)  # the densest honest JPEG cv2 writes
    assert len(flat) * 8 > 3 * 1920 * 1080 // 64 and decode_image(flat, LIMIT).shape == (1080, 1920, 3)


def test_decode_memory_budget() -> None:
    # 4 components, progressive: BGR output (3 bytes a pixel) and 4 coefficient planes (8 bytes a pixel)
    header_only = hi.jpeg_sof(0xC2, 100, 100, components=4)
    data = header_only[:-66] + b"\x00" * 200 + b"\xff\xd9"
    assert read_header(data).decode_bytes == 100 * 100 * 3 + 4 * 13 * 13 * 128
    message = refusal(data, 100 * 100)
    assert f"more than the {DECODE_BYTES_PER_PIXEL * 100 * 100} allowed" in message
    # a 4:4:4 progressive colour JPEG at the pixel limit fits the budget, padding of its blocks included
    frame = NATURAL[:123, :121]
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1,
                                           cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    header = read_header(buf.tobytes())
    assert ok and header.progressive and header.coefficient_bytes == 3 * 16 * 16 * 128
    assert decode_image(buf.tobytes(), 121 * 123).shape == (123, 121, 3)


# --- what must keep working --------------------------------------------------------------------------------------

def test_grayscale_and_16_bit_frames_decode_to_bgr_uint8() -> None:
    gray = NATURAL[..., 1]
    np.testing.assert_array_equal(decode_image(hi.png(gray), LIMIT), np.dstack([gray] * 3))
    assert decode_image(hi.jpeg(gray), LIMIT).shape == (360, 480, 3)
    deep = NATURAL.astype(np.uint16) * 257 + 100
    np.testing.assert_array_equal(decode_image(hi.png(deep), LIMIT), cv2.convertScaleAbs(deep, alpha=255 / 65535))
    np.testing.assert_array_equal(decode_image(hi.png(deep[..., 0]), LIMIT),
                                  np.dstack([cv2.convertScaleAbs(deep[..., 0], alpha=255 / 65535)] * 3))
    assert "exceeds the limit of 1000" in refusal(hi.png(gray), 1000)
    assert "exceeds the limit of 1000" in refusal(hi.png(deep), 1000)


def test_palette_and_alpha_pngs_decode() -> None:
    rgba = np.dstack([NATURAL, np.full(NATURAL.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(decode_image(hi.png(rgba), LIMIT), NATURAL)
    palette = hi.PNG_SIGNATURE + hi.ihdr(4, 2, depth=2, colour=3) + hi.png_chunk(b"PLTE", bytes(range(12))) + \
        hi.png_chunk(b"IDAT", zlib.compress(b"\x00\x1b\x00\xe4")) + IEND
    image = decode_image(palette, LIMIT)
    assert image.shape == (2, 4, 3) and image[0, 1].tolist() == [5, 4, 3]  # palette entry 1 = RGB (3, 4, 5)


def test_progressive_jpeg_decodes_and_downscales_while_decoding() -> None:
    frame = hi.natural_frame(1920, 1080, seed=3)
    data = hi.jpeg(frame, progressive=True)
    whole = decode_image(data, LIMIT)
    np.testing.assert_array_equal(whole, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    image, original_hw = decode_for_input(data, LIMIT, lambda w, h: (256, 144))
    assert original_hw == (1080, 1920) and image.shape == (270, 480, 3)


def test_entropy_marker_search_matches_a_byte_walk() -> None:
    """The regex scan of entropy-coded data finds the markers a byte-by-byte walk (libjpeg's rules) finds: stuffed
    0xFF00 and RSTn belong to the data, fill 0xFFs before a marker count from their first byte."""
    from trtserve.vision.image_headers import _next_entropy_marker

    def walk(data: bytes, i: int) -> tuple[int, int, int] | None:
        while i < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            k = i + 1
            while k < len(data) and data[k] == 0xFF:
                k += 1
            if k >= len(data):
                return None
            if data[k] != 0 and not 0xD0 <= data[k] <= 0xD7:
                return i, data[k], k + 1
            i = k + 1
        return None

    rng = np.random.default_rng(11)
    alphabet = np.array([0x00, 0x12, 0xD0, 0xD7, 0xD8, 0xD9, 0xDA, 0xC4, 0xFF, 0xFF, 0xFF], np.uint8)
    for _ in range(3000):
        data = bytes(rng.choice(alphabet, int(rng.integers(0, 24))))
        for start in range(len(data) + 1):
            assert _next_entropy_marker(data, start) == walk(data, start), (data.hex(), start)
    long_fill = b"\xff" * 200_000 + b"\x00"  # no backtracking blow-up on a hostile run of fill bytes
    assert _next_entropy_marker(long_fill, 0) is None
    assert _next_entropy_marker(b"\x12" + b"\xff" * 200_000 + b"\xd9", 0) == (1, 0xD9, 200_002)
