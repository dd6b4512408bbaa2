"""Checking a KServe ModelInfer request before any element is decoded, and running its elements all-or-none
(serving/kserve_service.py), without a server."""

import asyncio
import struct
import time

import pytest
from tritonclient.grpc import service_pb2 as kpb

from trtserve.errors import InvalidFrameError, ModelNotFoundError
from trtserve.serving.kserve_service import all_or_none, deserialize_bytes, parse_infer_request

MAX_BATCH = 8


def serialize(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def request(n: int = 2, raw: list[bytes] | None = None, contents: list[bytes] | None = None, version: str = "",
            outputs: tuple[str, ...] = (), shape: list[int] | None = None) -> kpb.ModelInferRequest:
    items = [b"img%d" % i for i in range(n)]
    tensor = kpb.ModelInferRequest.InferInputTensor(name="IMAGE", datatype="BYTES", shape=shape or [n])
    if contents is not None:
        tensor.contents.bytes_contents.extend(contents)
    req = kpb.ModelInferRequest(model_name="shapes", model_version=version, inputs=[tensor],
                                outputs=[kpb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs])
    req.raw_input_contents.extend([serialize(items)] if raw is None else raw)
    return req


def test_a_good_request_gives_its_images_and_every_output_by_default() -> None:
    call = parse_infer_request(request(3), MAX_BATCH)
    assert call.images == [b"img0", b"img1", b"img2"] and call.outputs == ("DETECTIONS", "NUM_DETECTIONS")
    call = parse_infer_request(request(2, raw=[], contents=[b"a", b"b"], version="1", outputs=("NUM_DETECTIONS",)),
                               MAX_BATCH)
    assert call.images == [b"a", b"b"] and call.outputs == ("NUM_DETECTIONS",)


def test_more_elements_than_the_max_batch_are_refused_on_the_declared_shape_alone() -> None:
    # 20,000 declared elements, no buffer at all: refused before any parse, naming the bound
    big = request(1, shape=[20_000], raw=[b""])
    with pytest.raises(InvalidFrameError, match="20000 elements; at most 8 per request"):
        parse_infer_request(big, MAX_BATCH)
    assert len(parse_infer_request(request(8), MAX_BATCH).images) == 8


def test_a_raw_buffer_carrying_more_than_it_declares_is_read_no_further() -> None:
    many = serialize([b""] * 2_000_000)  # 8 MB of empty elements
    started = time.perf_counter()
    with pytest.raises(InvalidFrameError, match="more than the 1 elements it declares"):
        parse_infer_request(request(1, raw=[many]), MAX_BATCH)
    assert time.perf_counter() - started < 0.5  # reading all of them takes seconds
    with pytest.raises(InvalidFrameError, match="more than the 3 elements"):
        deserialize_bytes(serialize([b"x"] * 10), max_items=3)
    assert deserialize_bytes(serialize([b"x"] * 3), max_items=3) == [b"x"] * 3
    assert deserialize_bytes(serialize([b"ab", b""])) == [b"ab", b""]


def test_contents_too_many_bytes_contents_and_other_typed_contents_are_refused() -> None:
    with pytest.raises(InvalidFrameError, match="declares 2 elements but carries 3"):
        parse_infer_request(request(2, raw=[], contents=[b"a"] * 3), MAX_BATCH)
    typed = request(1, raw=[], contents=[b"a"])
    typed.inputs[0].contents.int_contents.append(1)
    with pytest.raises(InvalidFrameError, match="carries int_contents"):
        parse_infer_request(typed, MAX_BATCH)


@pytest.mark.parametrize("make, message", [
    (lambda: request(2, contents=[b"a", b"b"]), "both contents and raw_input_contents"),
    (lambda: request(1, raw=[serialize([b"a"]), serialize([b"b"])]), "2 raw_input_contents buffers"),
])
def test_ambiguous_tensor_data_is_refused(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidFrameError, match=message):
        parse_infer_request(make(), MAX_BATCH)


def test_an_unknown_version_is_not_found_naming_the_available_ones() -> None:
    for version in ("2", "latest", "0"):
        with pytest.raises(ModelNotFoundError, match=r"has no version .*; available versions: \['1'\]"):
            parse_infer_request(request(version=version), MAX_BATCH)
    assert parse_infer_request(request(version="1"), MAX_BATCH).images


def test_unknown_repeated_and_classification_outputs_are_refused_and_binary_data_is_accepted() -> None:
    with pytest.raises(InvalidFrameError, match=r"unknown output 'BOXES' requested; model 'shapes' has outputs "
                                                r"\['DETECTIONS', 'NUM_DETECTIONS'\]"):
        parse_infer_request(request(outputs=("BOXES",)), MAX_BATCH)
    with pytest.raises(InvalidFrameError, match="requested more than once"):
        parse_infer_request(request(outputs=("DETECTIONS", "DETECTIONS")), MAX_BATCH)
    classify = request(outputs=("DETECTIONS",))
    classify.outputs[0].parameters["classification"].int64_param = 3
    with pytest.raises(InvalidFrameError, match="classification extension is not supported"):
        parse_infer_request(classify, MAX_BATCH)
    binary = request(outputs=("DETECTIONS",))
    binary.outputs[0].parameters["binary_data"].bool_param = True
    assert parse_infer_request(binary, MAX_BATCH).outputs == ("DETECTIONS",)


def test_echoed_client_values_are_clipped() -> None:
    huge = "v" * 20_000
    for req, error in [(request(version=huge), ModelNotFoundError), (request(outputs=(huge,)), InvalidFrameError)]:
        with pytest.raises(error) as info:
            parse_infer_request(req, MAX_BATCH)
        assert len(str(info.value)) < 300 and "…" in str(info.value)
    many = request()
    many.inputs[0].name = huge
    many.inputs.extend(kpb.ModelInferRequest.InferInputTensor(name=huge) for _ in range(10_000))
    with pytest.raises(InvalidFrameError, match=r"… \(9996 more\)") as info:
        parse_infer_request(many, MAX_BATCH)
    assert len(str(info.value)) < 700
    long_type = request()
    long_type.inputs[0].datatype = huge
    with pytest.raises(InvalidFrameError) as info:
        parse_infer_request(long_type, MAX_BATCH)
    assert len(str(info.value)) < 300


def test_all_or_none_returns_results_in_order() -> None:
    async def value(i: int) -> int:
        await asyncio.sleep(0.001 * (5 - i))
        return i

    async def main() -> list[int]:
        return await all_or_none([value(i) for i in range(5)])

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert asyncio.run(all_or_none([])) == []  # type: ignore[arg-type]


def test_all_or_none_cancels_the_siblings_of_the_first_failure_and_raises_it() -> None:
    cancelled: list[int] = []

    async def slow(i: int) -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    async def fail(message: str, after_s: float) -> int:
        await asyncio.sleep(after_s)
        raise InvalidFrameError(message)

    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(InvalidFrameError, match="second"):
            await all_or_none([slow(0), fail("first", 0.05), fail("second", 0.01), slow(3)])
        return time.monotonic() - started

    assert asyncio.run(main()) < 1.0  # not the 10 s the siblings would take
    assert sorted(cancelled) == [0, 3]  # and they were cancelled before it returned


def test_all_or_none_cancelled_by_its_caller_cancels_every_element() -> None:
    cancelled: list[int] = []

    async def slow(i: int) -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    async def main() -> None:
        task = asyncio.create_task(all_or_none([slow(i) for i in range(4)]))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sorted(cancelled) == [0, 1, 2, 3]
