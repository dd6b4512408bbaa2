"""Fuzzing the frame intake (issue 13): whatever bytes or array arrive, only trtserve's own errors come out.

Hypothesis mutates valid JPEGs and PNGs (byte overwrites, insertions, deletions, truncations, rewritten chunk
lengths and frame sizes) and draws raw arrays of odd dtypes and shapes. Each example must either decode to an
H x W x 3 uint8 frame within the pixel limit or raise a TrtserveError subclass. Derandomized and database-free,
so CI runs the same examples every time; a few seconds in all. Memory is bounded by construction: the pixel
limit is small, and every admitted header's decode budget is checked (the forked-process memory measurements
of real bombs are in test_frame_bombs.py).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trtserve.bench import bombs as hi
from trtserve.errors import TrtserveError
from trtserve.vision.frames import DECODE_BYTES_PER_PIXEL, admit_encoded, check_frame, decode_for_input, decode_image

MAX_PIXELS = 96 * 96
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_FRAME = hi.natural_frame(64, 48, seed=5)
SEEDS = [
    hi.jpeg(_FRAME), hi.jpeg(_FRAME, progressive=True), hi.jpeg(_FRAME[..., 0]), hi.jpeg(_FRAME, quality=20),
    hi.png(_FRAME), hi.png(_FRAME[..., 0]), hi.png(_FRAME.astype(np.uint16) * 257),
    hi.png(np.dstack([_FRAME, _FRAME[..., :1]])),
]


def _check_outcome(call: object, data: object) -> None:
    """Call ``call(data)``; pass if it returns a bounded BGR frame or raises a TrtserveError."""
    try:
        image = call(data)  # type: ignore[operator]
    except TrtserveError:
        return
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] * image.shape[1] <= MAX_PIXELS


def _intake(data: bytes) -> None:
    try:
        header = admit_encoded(data, MAX_PIXELS)
    except TrtserveError:
        header = None
    if header is not None:
        assert header.pixels <= MAX_PIXELS and header.decode_bytes <= DECODE_BYTES_PER_PIXEL * MAX_PIXELS
    _check_outcome(lambda d: decode_image(d, MAX_PIXELS), data)
    _check_outcome(lambda d: decode_for_input(d, MAX_PIXELS, lambda w, h: (max(1, w // 3), max(1, h // 3)))[0],
                   data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "u16", "u32"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "set":
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
        elif op == "u16" and at + 2 <= len(data):  # a JPEG length or frame size
            data[at:at + 2] = struct.pack(">H", draw(st.integers(0, 0xFFFF)))
        elif op == "u32" and at + 4 <= len(data):  # a PNG chunk length or IHDR size
            data[at:at + 4] = struct.pack(">I", draw(st.integers(0, 0xFFFFFFFF)))
    return bytes(data)


def _chunk_offsets(data: bytes) -> list[int]:
    offsets, i = [], 8
    while i + 8 <= len(data):
        offsets.append(i)
        i += 12 + int.from_bytes(data[i:i + 4], "big")
    return offsets


@given(mutated())
@FUZZ
def test_mutated_jpeg_and_png(data: bytes) -> None:
    _intake(data)


@given(st.sampled_from([s for s in SEEDS if s.startswith(hi.PNG_SIGNATURE)]), st.data())
@FUZZ
def test_png_with_random_chunk_lengths(seed: bytes, data: st.DataObject) -> None:
    png = bytearray(seed)
    for at in data.draw(st.lists(st.sampled_from(_chunk_offsets(seed)), min_size=1, max_size=3)):
        png[at:at + 4] = struct.pack(">I", data.draw(st.one_of(st.integers(0, 2 * len(seed)),
                                                                st.integers(0, 0xFFFFFFFF))))
    _intake(bytes(png))


@given(st.sampled_from([s for s in SEEDS if s.startswith(b"\xff\xd8")]), st.integers(0, 0xFFFF),
       st.integers(0, 0xFFFF), st.integers(0, 16))
@FUZZ
def test_jpeg_with_random_frame_size_and_stray_bytes(seed: bytes, width: int, height: int, stray: int) -> None:
    data = hi.jpeg_with_dims(seed, width, height)
    at = hi.sof_offset(seed)
    _intake(data[:at] + b"\x00" * stray + data[at:])


@given(st.one_of(st.binary(max_size=64), st.binary(max_size=64).map(lambda b: b"\xff\xd8\xff" + b),
                 st.binary(max_size=64).map(lambda b: hi.PNG_SIGNATURE + b)))
@FUZZ
def test_random_bytes(data: bytes) -> None:
    _intake(data)


_DTYPES = st.sampled_from([np.uint8, np.int8, np.uint16, np.int32, np.float16, np.float32, np.float64, np.bool_,
                           np.complex64])


@given(st.one_of(hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12)),
                 hnp.arrays(st.just(np.uint8), st.tuples(st.integers(0, 200), st.integers(0, 200), st.just(3))),
                 st.sampled_from([None, b"\x00" * 12, [[0, 0, 0]], 3.0, "frame"])))
@FUZZ
def test_raw_arrays(frame: object) -> None:
    _check_outcome(lambda f: check_frame(f, MAX_PIXELS), frame)


@pytest.mark.parametrize("shape", [(97, 96, 3), (1, 96 * 96 + 1, 3)])
def test_raw_array_just_over_the_limit(shape: tuple[int, int, int]) -> None:
    with pytest.raises(TrtserveError, match="exceeds the limit"):
        check_frame(np.zeros(shape, np.uint8), MAX_PIXELS)
