"""Hand-crafted hostile encoded frames (decoder bombs, malformed headers, refused formats), built from bytes.

What ``trtserve bench hostile`` sends beside a well-behaved camera (:data:`BOMBS`), what the frame-intake tests
(tests/unit/vision/test_frame_bombs.py, test_fuzz_intake.py) and the figures script tests/bench_decoder_bombs.py
decode. Every builder is deterministic and cheap (the largest, :func:`png_zeros`, compresses its rows one at a time).
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def natural_frame(width: int = 480, height: int = 360, seed: int = 0) -> np.ndarray:
    """A smooth, textured BGR frame that compresses like a camera frame (not like noise, not like a flat card)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
    frame = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-6, 7, frame.shape)
    return np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int = 90, progressive: bool = False) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality,
                                           cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return buf.tobytes()


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


# --- PNG ---------------------------------------------------------------------------------------------------------

def png_chunk(kind: bytes, payload: bytes, length: int | None = None) -> bytes:
    """One chunk; ``length`` overrides the declared length (the payload stays as given)."""
    declared = len(payload) if length is None else length
    return struct.pack(">I", declared) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def ihdr(width: int, height: int, depth: int = 8, colour: int = 2, interlace: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))


def png_idat_length_bomb() -> bytes:
    """The probe's 53-byte PNG: a 64x64 IHDR, then an IDAT that declares 0xFF00000C bytes and holds 12."""
    data = PNG_SIGNATURE + ihdr(64, 64) + struct.pack(">I", 0xFF00000C) + b"IDAT" + b"\x78\x9c" + b"\x00" * 10
    assert len(data) == 53
    return data


def png_zeros(width: int, height: int, colour: int = 2, depth: int = 8) -> bytes:
    """A valid PNG of zeros at maximum compression: the smallest file that honestly holds width x height."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    row = b"\x00" * (1 + (width * channels * depth + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return PNG_SIGNATURE + ihdr(width, height, depth, colour) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def png_short_idat(width: int, height: int) -> bytes:
    """An IHDR of width x height followed by far too little image data (one row's worth)."""
    body = zlib.compress(b"\x00" * (1 + 3 * width), 9)
    return PNG_SIGNATURE + ihdr(width, height) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def png_with_chunks_before_idat(base: bytes, chunks: list[bytes]) -> bytes:
    """``base`` (a PNG whose IHDR is its first chunk) with ``chunks`` inserted right after the IHDR."""
    cut = len(PNG_SIGNATURE) + 25
    return base[:cut] + b"".join(chunks) + base[cut:]


def ztxt_chunk(inflated_bytes: int, keyword: bytes = b"Comment") -> bytes:
    """A zTXt chunk of a few KB that libpng inflates to ``inflated_bytes`` of text."""
    return png_chunk(b"zTXt", keyword + b"\x00\x00" + zlib.compress(b"a" * inflated_bytes, 9))


# --- JPEG --------------------------------------------------------------------------------------------------------

def sof_offset(data: bytes) -> int:
    """Offset of the first SOF0/1/2 marker's 0xFF in a well-formed JPEG."""
    i = 2
    while True:
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2):
            return i
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")


def jpeg_with_dims(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its frame header declaring ``width`` x ``height``: the scans stay as they are (a few hundred
    bytes of coded blocks), and libjpeg pads the missing blocks with zeros — the probe's 690-byte bomb."""
    i = sof_offset(data)
    return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


def jpeg_stray_byte_before_sof(data: bytes) -> bytes:
    """One garbage byte before the frame header: libjpeg skips it (with a warning) and reads the frame."""
    i = sof_offset(data)
    return data[:i] + b"\x00" + data[i:]


def jpeg_with_segment_before_sof(data: bytes, segment: bytes) -> bytes:
    i = sof_offset(data)
    return data[:i] + segment + data[i:]


def jpeg_second_sof(data: bytes) -> bytes:
    """A copy of the frame header right after it (two SOFs before the first scan)."""
    i = sof_offset(data)
    end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return data[:end] + data[i:end] + data[end:]


def jpeg_many_scans(progressive_data: bytes, copies: int) -> bytes:
    """A progressive JPEG whose last scan is repeated ``copies`` more times before EOI: libjpeg makes one pass
    over the whole coefficient buffer per scan."""
    last = progressive_data.rindex(b"\xff\xda")
    end = progressive_data.rindex(b"\xff\xd9")
    scan = progressive_data[last:end]
    return progressive_data[:end] + scan * copies + progressive_data[end:]


def jpeg_sof(kind: int, width: int, height: int, precision: int = 8, components: int = 3) -> bytes:
    """A bare JPEG (SOI, SOF of ``kind``, a minimal SOS, EOI) for header-only checks."""
    comps = b"".join(bytes([k + 1, 0x11, 0]) for k in range(components))
    sof = b"\xff" + bytes([kind]) + struct.pack(">HBHHB", 8 + 3 * components, precision, height, width, components)
    sos = b"\xff\xda" + struct.pack(">HB", 6 + 2 * components, components)
    sos += b"".join(bytes([k + 1, 0]) for k in range(components)) + b"\x00\x3f\x00"
    return b"\xff\xd8" + sof + comps + sos + b"\x00" * 64 + b"\xff\xd9"


# --- other formats -----------------------------------------------------------------------------------------------

def bmp_header_only(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring width x height, with 16 bytes of pixels."""
    pixels = b"\x00" * 16
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(pixels), 0, 0, 54) + info + pixels


def tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian 8-bit grayscale TIFF declaring width x height in one uncompressed strip of 16 bytes."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, width * height)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\x00" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 16


def pnm_header_only(width: int, height: int) -> bytes:
    return f"P6\n{width} {height}\n255\n".encode() + b"\x00" * 16


def _jpeg_sof_bomb() -> bytes:
    return jpeg_with_dims(jpeg(natural_frame(16, 16, seed=1)), 65000, 65000)


def _gray_jpeg_sof_bomb() -> bytes:
    return jpeg_with_dims(jpeg(natural_frame(16, 16, seed=1)[..., 0]), 20000, 20000)


def _progressive_sof_bomb() -> bytes:
    return jpeg_with_dims(jpeg(natural_frame(16, 16, seed=1), progressive=True), 2880, 2880)


def _stray_byte_sof_bomb() -> bytes:
    return jpeg_stray_byte_before_sof(_jpeg_sof_bomb())


# The small bombs (each under 1 KB, as a hostile client paced at 1 KB/s sends them), by what each declares
BOMBS = {
    "png-idat-length": png_idat_length_bomb,  # 53 bytes declaring a 4 GB chunk
    "jpeg-sof-65000x65000": _jpeg_sof_bomb,
    "jpeg-gray-20000x20000": _gray_jpeg_sof_bomb,
    "jpeg-progressive-2880x2880": _progressive_sof_bomb,
    "jpeg-stray-byte-before-sof": _stray_byte_sof_bomb,
    "bmp-20000x20000": lambda: bmp_header_only(20000, 20000),
}
