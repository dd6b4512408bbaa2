"""parse_tensor_request: a request to a ``<model>.raw`` model checked whole, as Triton checks one (pure, no server)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as kpb

from trtserve.errors import InvalidFrameError, ModelNotFoundError, TrtserveError
from trtserve.serving.kserve_dataplane import parse_tensor_request
from trtserve.serving.pipeline import RawInput

SPEC = RawInput("images", np.dtype(np.float32), (3, 4, 4))
OUTPUTS = ("scores", "boxes")


def request(batch: np.ndarray | None = None, *, name: str = "images", datatype: str = "FP32",
            shape: list[int] | None = None, typed: bool = False, outputs: tuple[str, ...] = (),
            version: str = "") -> kpb.ModelInferRequest:
    batch = np.arange(2 * 48, dtype=np.float32).reshape(2, 3, 4, 4) if batch is None else batch
    tensor = kpb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype,
                                                    shape=list(batch.shape) if shape is None else shape)
    r = kpb.ModelInferRequest(model_name="m.raw", model_version=version, inputs=[tensor],
                              outputs=[kpb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs])
    if typed:
        r.inputs[0].contents.fp32_contents.extend(batch.ravel().tolist())
    else:
        r.raw_input_contents.append(batch.tobytes())
    return r


def test_raw_and_typed_contents_become_one_array_per_frame() -> None:
    batch = np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32)
    for typed in (False, True):
        call = parse_tensor_request(request(batch, typed=typed), 8, SPEC, OUTPUTS)
        assert len(call.frames) == 2 and call.outputs == OUTPUTS
        for frame, want in zip(call.frames, batch):
            assert frame.dtype == np.float32 and frame.shape == (3, 4, 4)
            np.testing.assert_array_equal(frame, want)
    assert parse_tensor_request(request(outputs=("boxes",)), 8, SPEC, OUTPUTS).outputs == ("boxes",)


@pytest.mark.parametrize("make, message", [
    (lambda: request(name="IMAGE"), "exactly one input named 'images'"),
    (lambda: request(datatype="FP16"), "datatype 'FP16'; expected FP32"),
    (lambda: request(np.zeros((1, 3, 8, 8), np.float32)), "shape '[1, 3, 8, 8]'; expected [-1, 3, 4, 4]"),
    (lambda: request(np.zeros((1, 48), np.float32)), "shape '[1, 48]'"),
    (lambda: request(np.zeros((9, 3, 4, 4), np.float32)), "batch of 9; at most 8"),
    (lambda: request(shape=[3, 3, 4, 4]), "carries 384 bytes; FP32 [3, 3, 4, 4] is 576 bytes"),
    (lambda: request(shape=[3, 3, 4, 4], typed=True), "carries 96 values; FP32 [3, 3, 4, 4] has 144"),
    (lambda: request(outputs=("DETECTIONS",)), "unknown output 'DETECTIONS'"),
    (lambda: request(outputs=("boxes", "boxes")), "requested more than once"),
])
def test_bad_requests_are_invalid_argument_naming_the_tensor(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidFrameError) as info:
        parse_tensor_request(make(), 8, SPEC, OUTPUTS)
    assert message in str(info.value)


def test_contents_of_another_type_or_both_kinds_are_refused() -> None:
    ints = request(typed=False)
    ints.ClearField("raw_input_contents")
    ints.inputs[0].contents.int_contents.extend([1] * 96)
    with pytest.raises(InvalidFrameError, match=r"carries int_contents; send it in contents\.fp32_contents"):
        parse_tensor_request(ints, 8, SPEC, OUTPUTS)
    both = request(typed=True)
    both.raw_input_contents.append(b"\0" * 384)
    with pytest.raises(InvalidFrameError, match="both contents and raw_input_contents"):
        parse_tensor_request(both, 8, SPEC, OUTPUTS)
    empty = request()
    empty.ClearField("raw_input_contents")
    with pytest.raises(InvalidFrameError, match="carries no data"):
        parse_tensor_request(empty, 8, SPEC, OUTPUTS)
    with pytest.raises(ModelNotFoundError):
        parse_tensor_request(request(version="raw"), 8, SPEC, OUTPUTS)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(name=st.sampled_from(["images", "IMAGE", ""]), datatype=st.sampled_from(["FP32", "FP16", "BYTES", "INT32", ""]),
       shape=st.lists(st.one_of(st.integers(-2, 10), st.integers(-(2**63), 2**63 - 1)), max_size=5),
       raw=st.lists(st.binary(max_size=800), max_size=2), floats=st.lists(st.floats(width=32), max_size=200),
       ints=st.lists(st.integers(-5, 5), max_size=3))
def test_whatever_a_client_sends_only_trtserve_errors_come_out(name: str, datatype: str, shape: list[int],
                                                              raw: list[bytes], floats: list[float],
                                                              ints: list[int]) -> None:
    tensor = kpb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    tensor.contents.fp32_contents.extend(floats)
    tensor.contents.int_contents.extend(ints)
    r = kpb.ModelInferRequest(model_name="m.raw", inputs=[tensor], raw_input_contents=raw)
    try:
        call = parse_tensor_request(r, 8, SPEC, OUTPUTS)
    except TrtserveError as exc:
        assert len(str(exc)) < 400
        return
    assert 1 <= len(call.frames) <= 8 and all(f.shape == SPEC.dims and f.dtype == SPEC.dtype for f in call.frames)
