"""Read an encoded frame's header — format, size, decoder cost — without decoding a pixel.

The frame intake (:mod:`trtserve.vision.frames`) admits a frame only after :func:`read_header` has said what the
decoder is going to be asked to do, so that a few hostile bytes cannot make it allocate or compute much more than
an honest frame of the same size would. The rules, each a refusal with :class:`InvalidFrameError`:

- **Formats.** JPEG (baseline, extended sequential or progressive Huffman; 8 bits per sample; 1, 3 or 4
  components) and PNG (any bit depth and colour type of the PNG specification). Everything else OpenCV could
  decode — BMP, TIFF, WebP, GIF, PNM, PFM, EXR, HDR, JPEG 2000, Sun raster, arithmetic-coded, lossless or
  hierarchical JPEG, ... — is refused, naming the format: every decoder accepted is a decoder to harden.
- **Structure.** A JPEG's markers are walked the way libjpeg walks them (garbage before a marker and fill bytes
  are skipped, as libjpeg does, so the frame header read here is the one libjpeg will use); a marker libjpeg would
  fail on, a second frame header, a segment running past the data, a frame header with a zero dimension, and scan
  headers that do not fit the frame are refused. A PNG must start with its IHDR (valid size, bit depth, colour
  type, compression, filter and interlace methods), every chunk's declared length must fit in the data (the
  0xFF00000C-byte IDAT that made OpenCV allocate 4.3 GB), there must be image data (IDAT), and unknown critical
  chunks are refused. Only the chunks that decide the pixels (IHDR, PLTE, tRNS, IDAT) are handed to the decoder,
  so compressed text, ICC profiles and animation chunks are never inflated.
- **Data backs the header.** A file that claims more pixels than its bytes can hold is a bomb or a truncated
  file, refused before the decoder allocates the frame: Huffman-coded JPEG spends at least one bit on every
  8 x 8 block of every component (its DC symbol), so the entropy-coded bytes must be at least
  ``blocks / 8``; deflate cannot expand more than 1032:1 (a 258-byte match in two bits), so a PNG's IDAT bytes
  must be at least its packed pixel bytes / 1032.
- **Scans.** A progressive JPEG may have at most :data:`MAX_PROGRESSIVE_SCANS` scans (every scan is a pass over
  the whole coefficient buffer; encoders write about 10), a sequential one at most one per component.

- **EXIF orientation.** The Orientation tag of a JPEG's first APP1 EXIF segment is read (IFD0 only, every offset
  checked) into :attr:`ImageHeader.orientation`; the frame intake turns the decoded frame upright with it. A broken
  EXIF block is ignored, never a refusal.

What is left to bound — the pixel count and the decoder's memory — depends on the model's ``max_frame_pixels``
and is checked by the frame intake against :attr:`ImageHeader.decode_bytes`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from trtserve.errors import InvalidFrameError

#: Formats accepted, by the name :func:`detect_format` gives them.
ACCEPTED_FORMATS = ("JPEG", "PNG")
#: At most this many scans in a progressive JPEG (libjpeg's default script writes 10 for colour, 6 for gray).
MAX_PROGRESSIVE_SCANS = 64
#: OpenCV refuses (by assertion) an image wider or taller than 2^20 pixels.
MAX_SIDE_PX = 1 << 20
#: Deflate's largest expansion: a 258-byte match coded in 2 bits.
DEFLATE_MAX_RATIO = 1032

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded frame's header says, checked against its own bytes.

    ``components`` is the number of channels stored (a PNG palette counts 1); ``bits_per_sample`` 8 or 16 once
    decoded (PNG 1/2/4-bit samples decode to 8 bits). ``coefficient_bytes`` is the memory libjpeg holds besides the
    output (the whole image's DCT coefficients when the file has several scans, 0 otherwise). ``decoder_input`` is
    what to hand the decoder: the data itself, or for a PNG the data less the chunks that do not decide pixels.
    """

    format: str
    width: int
    height: int
    components: int
    bits_per_sample: int = 8
    progressive: bool = False
    scans: int = 1
    coefficient_bytes: int = 0
    decoder_input: bytes = field(default=b"", repr=False, compare=False)
    orientation: int = 1  # EXIF Orientation of a JPEG (1..8; 1: as stored), see :func:`exif_orientation`

    @property
    def transposed(self) -> bool:
        """Whether the orientation swaps width and height (EXIF 5..8: a quarter turn, or a transpose)."""
        return self.orientation >= 5

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decode_bytes(self) -> int:
        """The most the decoder holds at once for a full-size BGR decode: output (at 16 bits, plus the 8-bit
        conversion, for a 16-bit PNG) and coefficient buffer."""
        output = self.pixels * 3 * (1 if self.bits_per_sample == 8 else 3)  # 16-bit: 6 bytes, then 3 more
        return output + self.coefficient_bytes


def detect_format(data: bytes) -> str:
    """The image format ``data`` starts like ("JPEG", "PNG", "BMP", ...), or "unknown"."""
    head = bytes(data[:16])
    for name, test in _SIGNATURES:
        if test(head):
            return name
    return "unknown"


def _pnm(head: bytes) -> bool:
    return len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n#"


_SIGNATURES = (
    ("JPEG", lambda h: h.startswith(b"\xff\xd8")),
    ("PNG", lambda h: h.startswith(_PNG_SIGNATURE)),
    ("BMP", lambda h: h.startswith(b"BM")),
    ("TIFF", lambda h: h[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    ("WebP", lambda h: h.startswith(b"RIFF") and h[8:12] == b"WEBP"),
    ("GIF", lambda h: h[:6] in (b"GIF87a", b"GIF89a")),
    ("PNM (PBM/PGM/PPM/PAM)", _pnm),
    ("PFM", lambda h: h[:2] in (b"PF", b"Pf") and h[2:3] in b" \t\r\n"),
    ("OpenEXR", lambda h: h.startswith(b"v/1\x01")),
    ("Radiance HDR", lambda h: h.startswith((b"#?RADIANCE", b"#?RGBE"))),
    ("JPEG 2000", lambda h: h.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51"))),
    ("JPEG XL", lambda h: h.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n"))),
    ("Sun raster", lambda h: h.startswith(b"\x59\xa6\x6a\x95")),
    ("AVIF/HEIF", lambda h: h[4:8] == b"ftyp"),
)


def read_header(data: bytes, check_size: Callable[[int, int], None] | None = None) -> ImageHeader:
    """The checked header of an encoded JPEG or PNG; raises InvalidFrameError naming what is wrong.

    ``check_size(width, height)`` is called as soon as the frame's size is read, before the rest of the data is
    walked, so that an oversized frame is refused at the cost of reading its first bytes. At most linear in
    ``len(data)`` (a search for 0xFF bytes through a JPEG's entropy-coded data, a walk over a PNG's chunks);
    decodes nothing.
    """
    fmt = detect_format(data)
    if fmt == "JPEG":
        return _read_jpeg(data, check_size)
    if fmt == "PNG":
        return _read_png(data, check_size)
    if fmt == "unknown":
        raise InvalidFrameError(f"cannot decode the image: not a JPEG or PNG ({len(data)} bytes, starts "
                                f"{bytes(data[:8]).hex()}); send JPEG or PNG")
    raise InvalidFrameError(f"image format {fmt} is not accepted; send JPEG or PNG")


# --- JPEG ------------------------------------------------------------------------------------------------------

_SOF_ACCEPTED = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}
_SOF_REFUSED = {0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical progressive",
                0xC7: "hierarchical lossless", 0xC9: "arithmetic-coded", 0xCA: "arithmetic-coded progressive",
                0xCB: "arithmetic-coded lossless", 0xCD: "hierarchical arithmetic-coded",
                0xCE: "hierarchical arithmetic-coded progressive", 0xCF: "hierarchical arithmetic-coded lossless"}
# segments with a length that libjpeg reads or skips: DHT, DAC, DQT, DRI, DNL, APP0-15, COM
_SKIPPED = frozenset({0xC4, 0xCC, 0xDB, 0xDD, 0xDC, 0xFE, *range(0xE0, 0xF0)})
_RST_OR_TEM = frozenset({0x01, *range(0xD0, 0xD8)})
_EXIF_PREFIX = b"Exif\x00\x00"
_EXIF_ORIENTATION_TAG = 0x0112


def _refuse_jpeg(reason: str) -> InvalidFrameError:
    return InvalidFrameError(f"cannot decode the image: JPEG {reason}")


def _next_marker(data: bytes, i: int) -> tuple[int, int]:
    """(marker code, offset after it) from ``i`` as libjpeg's next_marker reads: skip bytes up to 0xFF, fill
    0xFFs, and 0xFF00 pairs."""
    n = len(data)
    while True:
        j = data.find(b"\xff", i)
        if j < 0:
            raise _refuse_jpeg("data ends before its image (a marker is missing)")
        j += 1
        while j < n and data[j] == 0xFF:
            j += 1
        if j >= n:
            raise _refuse_jpeg("data ends before its image (a marker is missing)")
        if data[j] != 0:
            return data[j], j + 1
        i = j + 1


# the last 0xFF of a run followed by a marker code: not 0x00 (a stuffed data byte), RST0-7 (part of the data) or
# 0xFF (more fill). A fixed two-byte pattern, so the search is one pass in C with no backtracking, whatever the data
_ENTROPY_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _next_entropy_marker(data: bytes, i: int) -> tuple[int, int, int] | None:
    """(offset of its 0xFF, marker code, offset after it) of the first marker at or after ``i`` in entropy-coded
    data, where 0xFF 0x00 is a stuffed data byte and RSTn belong to the data; None if the data ends first. The
    offset is that of the first 0xFF of the marker's fill bytes, as libjpeg counts them."""
    found = _ENTROPY_MARKER.search(data, i)
    if found is None:
        return None
    j = found.start()
    if j > i and data[j - 1] == 0xFF:  # fill bytes before the marker (rare), however many: found in C
        j = i + len(data[i:j].rstrip(b"\xff"))
    return j, data[found.start() + 1], found.end()


def _segment(data: bytes, i: int, marker: int) -> tuple[bytes, int]:
    """The payload of the marker segment whose length field starts at ``i``, and the offset after it."""
    if i + 2 > len(data):
        raise _refuse_jpeg(f"marker 0xFF{marker:02X} is cut off by the end of the data")
    length = int.from_bytes(data[i:i + 2], "big")
    if length < 2 or i + length > len(data):
        raise _refuse_jpeg(f"marker 0xFF{marker:02X} declares {length} bytes but {len(data) - i} remain")
    return data[i + 2:i + length], i + length


@dataclass(frozen=True)
class _Frame:
    kind: int
    width: int
    height: int
    components: tuple[tuple[int, int, int], ...]  # (id, horizontal, vertical sampling)

    def blocks(self) -> list[tuple[int, int]]:
        """Per component, (blocks across, blocks down) as libjpeg allocates them (padded to whole MCUs)."""
        return [(_ceil_div(across, h) * h, _ceil_div(down, v) * v)
                for (_, h, v), (across, down) in zip(self.components, self.coded_blocks())]

    def coded_blocks(self) -> list[tuple[int, int]]:
        """Per component, (blocks across, blocks down) that hold image samples (each coded in a DC scan)."""
        h_max = max(c[1] for c in self.components)
        v_max = max(c[2] for c in self.components)
        return [(_ceil_div(_ceil_div(self.width * h, h_max), 8), _ceil_div(_ceil_div(self.height * v, v_max), 8))
                for _, h, v in self.components]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _parse_sof(marker: int, payload: bytes) -> _Frame:
    if marker in _SOF_REFUSED:
        raise InvalidFrameError(f"image format JPEG ({_SOF_REFUSED[marker]}) is not accepted; send baseline or "
                                "progressive (Huffman-coded) JPEG, or PNG")
    if len(payload) < 6:
        raise _refuse_jpeg("frame header is too short")
    precision, height, width, count = (payload[0], int.from_bytes(payload[1:3], "big"),
                                       int.from_bytes(payload[3:5], "big"), payload[5])
    if precision != 8:
        raise InvalidFrameError(f"image format JPEG ({precision}-bit samples) is not accepted; send 8-bit JPEG "
                                "or PNG")
    if width == 0 or height == 0:
        raise _refuse_jpeg(f"frame header declares {width}x{height} pixels")
    if count not in (1, 3, 4):
        raise _refuse_jpeg(f"frame header declares {count} colour components; 1, 3 or 4 are accepted")
    if len(payload) != 6 + 3 * count:
        raise _refuse_jpeg("frame header length does not match its component count")
    components = []
    for k in range(count):
        ident, sampling = payload[6 + 3 * k], payload[7 + 3 * k]
        h, v = sampling >> 4, sampling & 15
        if not (1 <= h <= 4 and 1 <= v <= 4):
            raise _refuse_jpeg(f"component {ident} has sampling factors {h}x{v}; 1 to 4 are valid")
        components.append((ident, h, v))
    return _Frame(marker, width, height, tuple(components))


def _parse_sos(payload: bytes, frame: _Frame) -> int:
    """The number of components in the scan whose header is ``payload``; raises if it does not fit ``frame``."""
    count = payload[0] if payload else 0
    if not 1 <= count <= 4 or len(payload) != 4 + 2 * count:
        raise _refuse_jpeg("scan header is malformed")
    ids = {c[0] for c in frame.components}
    if any(payload[1 + 2 * k] not in ids for k in range(count)):
        raise _refuse_jpeg("scan header names a component the frame does not have")
    return count


def jpeg_frame_header(data: bytes) -> tuple[int, int, int]:
    """(width, height, components) of a JPEG's frame header; raises InvalidFrameError if it cannot be read."""
    frame, _, _ = _jpeg_to_first_scan(data)
    return frame.width, frame.height, len(frame.components)


def exif_orientation(app1: bytes) -> int:
    """The EXIF Orientation (tag 0x0112 of IFD0, 1..8) of an APP1 payload ``Exif\\0\\0`` + TIFF; 1 (as stored)
    when the payload is not EXIF, is malformed, or has no valid orientation. Reads at most IFD0's entries, each
    offset checked against the payload: a broken EXIF block never refuses a frame (decoders ignore it too)."""
    if not app1.startswith(_EXIF_PREFIX):
        return 1
    tiff = app1[len(_EXIF_PREFIX):]
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return 1
    order: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd < 8 or ifd + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    for k in range(min(count, (len(tiff) - ifd - 2) // 12)):
        entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        if int.from_bytes(entry[0:2], order) != _EXIF_ORIENTATION_TAG:
            continue
        kind, n = int.from_bytes(entry[2:4], order), int.from_bytes(entry[4:8], order)
        if kind != 3 or n != 1:  # a SHORT, as EXIF defines it
            return 1
        value = int.from_bytes(entry[8:10], order)
        return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_to_first_scan(data: bytes) -> tuple[_Frame, int, int]:
    """The frame header, the offset of the first scan's header payload length field, and the EXIF orientation
    of the first APP1 EXIF segment before it (1 without one), which is the one libjpeg hands decoders."""
    if data[:3] != b"\xff\xd8\xff":  # OpenCV picks its JPEG decoder by these three bytes
        raise _refuse_jpeg("does not start with an SOI marker followed by a marker")
    i, frame, orientation, exif_seen = 2, None, 1, False
    while True:
        marker, i = _next_marker(data, i)
        if marker in _RST_OR_TEM:
            continue
        if marker == 0xD9:
            raise _refuse_jpeg("ends (EOI) before any scan")
        if marker == 0xD8:
            raise _refuse_jpeg("has a second SOI marker")
        if marker == 0xDA:
            if frame is None:
                raise _refuse_jpeg("has a scan before its frame header")
            return frame, i, orientation
        if not (marker in _SKIPPED or marker in _SOF_ACCEPTED or marker in _SOF_REFUSED):
            raise _refuse_jpeg(f"has an unknown marker 0xFF{marker:02X}")
        payload, i = _segment(data, i, marker)
        if marker == 0xE1 and not exif_seen and payload.startswith(_EXIF_PREFIX):
            orientation, exif_seen = exif_orientation(payload), True
        if marker in _SOF_ACCEPTED or marker in _SOF_REFUSED:
            if frame is not None:
                raise _refuse_jpeg("has more than one frame header")
            frame = _parse_sof(marker, payload)


def _read_jpeg(data: bytes, check_size: Callable[[int, int], None] | None) -> ImageHeader:
    frame, i, orientation = _jpeg_to_first_scan(data)
    if check_size is not None:
        check_size(frame.width, frame.height)
    payload, i = _segment(data, i, 0xDA)
    first_scan_components = _parse_sos(payload, frame)
    progressive = frame.kind == 0xC2
    max_scans = MAX_PROGRESSIVE_SCANS if progressive else len(frame.components)
    scans, entropy_bytes, n = 1, 0, len(data)
    while i < n:
        found = _next_entropy_marker(data, i)
        if found is None:  # truncated: libjpeg pads the rest with zeros (the backing rule below bounds that)
            entropy_bytes += n - i
            break
        entropy_bytes += found[0] - i
        marker, i = found[1], found[2]
        if marker == 0xD9:
            break
        if marker == 0xDA:
            scans += 1
            if scans > max_scans:
                raise _refuse_jpeg(f"has more than {max_scans} scans ({'progressive' if progressive else 'sequential'}"
                                   f", {len(frame.components)} components)")
            payload, i = _segment(data, i, marker)
            _parse_sos(payload, frame)
        elif marker in _SKIPPED:
            _, i = _segment(data, i, marker)
        elif marker in _SOF_ACCEPTED or marker in _SOF_REFUSED:
            raise _refuse_jpeg("has more than one frame header")
        else:
            raise _refuse_jpeg(f"has an unknown marker 0xFF{marker:02X} in its image data")
    total_blocks = sum(a * d for a, d in frame.coded_blocks())
    if entropy_bytes * 8 < total_blocks:
        raise _refuse_jpeg(f"declares {frame.width}x{frame.height} pixels ({total_blocks} blocks of 8x8) but carries "
                           f"only {entropy_bytes} bytes of image data, less than one bit per block: truncated, or "
                           "a decompression bomb")
    buffered = progressive or first_scan_components < len(frame.components)
    return ImageHeader("JPEG", frame.width, frame.height, len(frame.components), 8, progressive, scans,
                       128 * sum(a * d for a, d in frame.blocks()) if buffered else 0, data, orientation)


# --- PNG -------------------------------------------------------------------------------------------------------

_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_KEPT = (b"PLTE", b"tRNS")  # besides IHDR and IDAT: the chunks that decide the decoded pixels


def _refuse_png(reason: str) -> InvalidFrameError:
    return InvalidFrameError(f"cannot decode the image: PNG {reason}")


def _parse_ihdr(ihdr: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) of a 13-byte IHDR payload; raises if PNG does not define it."""
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    depth, colour, compression, filtering, interlace = ihdr[8], ihdr[9], ihdr[10], ihdr[11], ihdr[12]
    if not (0 < width <= MAX_SIDE_PX and 0 < height <= MAX_SIDE_PX):
        raise _refuse_png(f"declares {width}x{height} pixels; each side must be 1 to {MAX_SIDE_PX}")
    if colour not in _PNG_DEPTHS or depth not in _PNG_DEPTHS[colour]:
        raise _refuse_png(f"declares colour type {colour} at bit depth {depth}, which PNG does not define")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise _refuse_png("declares an unknown compression, filter or interlace method")
    return width, height, depth, colour


def _read_png(data: bytes, check_size: Callable[[int, int], None] | None) -> ImageHeader:
    n, i = len(data), len(_PNG_SIGNATURE)
    view = memoryview(data)
    kept: list[bytes | memoryview] = [_PNG_SIGNATURE]
    ihdr: tuple[int, int, int, int] | None = None
    idat_bytes, dropped, ended = 0, False, False
    while i + 8 <= n:
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        if not kind.isalpha():
            raise _refuse_png(f"chunk at byte {i} has an invalid type {kind!r}")
        name = kind.decode("ascii")
        if length > 0x7FFFFFFF or i + 12 + length > n:
            raise _refuse_png(f"chunk {name} declares {length} bytes but {max(n - i - 12, 0)} remain")
        chunk = view[i:i + 12 + length]
        i += 12 + length
        if ihdr is None:
            if kind != b"IHDR" or length != 13:
                raise _refuse_png("does not start with a 13-byte IHDR chunk")
            ihdr = _parse_ihdr(bytes(chunk[8:21]))
            if check_size is not None:
                check_size(ihdr[0], ihdr[1])
            kept.append(chunk)
            continue
        if kind == b"IEND":
            ended = True
            break
        if kind == b"IDAT":
            idat_bytes += length
            kept.append(chunk)
        elif kind == b"IHDR":
            raise _refuse_png("has more than one IHDR chunk")
        elif kind in _PNG_KEPT and idat_bytes == 0:
            kept.append(chunk)
        elif kind[0] & 0x20 == 0 and kind not in _PNG_KEPT:  # an upper-case first letter: critical
            raise _refuse_png(f"has an unknown critical chunk {name}")
        else:
            dropped = True
    if ihdr is None:
        raise _refuse_png("is cut off before its IHDR chunk")
    width, height, depth, colour = ihdr
    if idat_bytes == 0:
        raise _refuse_png("has no image data (IDAT)")
    packed = width * height * _PNG_CHANNELS[colour] * depth // 8
    if packed > DEFLATE_MAX_RATIO * idat_bytes:
        raise _refuse_png(f"declares {width}x{height} pixels ({packed} bytes packed) but its image data is "
                          f"{idat_bytes} bytes, more than deflate's {DEFLATE_MAX_RATIO}:1 can expand: truncated, "
                          "or a decompression bomb")
    decoder_input = data if not dropped and ended and i == n else b"".join([*kept, _IEND])
    return ImageHeader("PNG", width, height, _PNG_CHANNELS[colour], 16 if depth == 16 else 8,
                       decoder_input=decoder_input)
