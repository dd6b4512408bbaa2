"""Fuzzing the KServe request parser (serving/kserve_service.py): whatever ModelInferRequest a client builds,
only trtserve's own errors come out, with bounded messages, and what is accepted fits the max batch.

Derandomized (the same examples on every run, so CI is reproducible) and bounded to a few seconds.
"""

import struct

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as kpb

from trtserve.errors import TrtserveError
from trtserve.serving.kserve_service import parse_infer_request

INT64 = st.integers(-(2**63), 2**63 - 1)
NAMES = st.one_of(st.sampled_from(["IMAGE", "DETECTIONS", "NUM_DETECTIONS", "", "image"]), st.text(max_size=300))
DATATYPES = st.one_of(st.sampled_from(["BYTES", "FP32", "INT32", "UINT8", ""]), st.text(max_size=200))
VERSIONS = st.one_of(st.sampled_from(["", "1", "2", "01", " 1"]), st.text(max_size=300))
PARAMETER_KEYS = st.one_of(st.sampled_from(["binary_data", "classification", "binary_data_size", "priority"]),
                           st.text(max_size=50))
SMALL_SHAPES = st.lists(st.one_of(st.integers(-2, 20), INT64), max_size=4)


PARAMETER_VALUES: dict[str, st.SearchStrategy[object]] = {
    "bool_param": st.booleans(), "int64_param": INT64, "string_param": st.text(max_size=50),
    "double_param": st.floats(), "uint64_param": st.integers(0, 2**64 - 1)}


@st.composite
def parameter(draw: st.DrawFn) -> kpb.InferParameter:
    kind = draw(st.sampled_from([*PARAMETER_VALUES, None]))
    return kpb.InferParameter() if kind is None else kpb.InferParameter(**{kind: draw(PARAMETER_VALUES[kind])})


@st.composite
def raw_buffer(draw: st.DrawFn) -> bytes:
    """Honest Triton BYTES buffers (4-byte length, then the bytes), lying ones, and plain noise."""
    items = draw(st.lists(st.binary(max_size=16), max_size=30))
    honest = b"".join(struct.pack("<I", len(i)) + i for i in items)
    return draw(st.one_of(st.just(honest), st.just(honest[: draw(st.integers(0, len(honest)))]),
                          st.binary(max_size=64), st.just(struct.pack("<I", draw(st.integers(0, 2**32 - 1))))))


@st.composite
def infer_tensor(draw: st.DrawFn) -> kpb.ModelInferRequest.InferInputTensor:
    tensor = kpb.ModelInferRequest.InferInputTensor(name=draw(NAMES), datatype=draw(DATATYPES),
                                                    shape=draw(SMALL_SHAPES))
    tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=16), max_size=12)))
    if draw(st.booleans()):
        tensor.contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3)))
    if draw(st.booleans()):
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=3)))
    for key in draw(st.lists(PARAMETER_KEYS, max_size=2)):
        tensor.parameters[key].CopyFrom(draw(parameter()))
    return tensor


@st.composite
def infer_request(draw: st.DrawFn) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name=draw(NAMES), model_version=draw(VERSIONS), id=draw(st.text(max_size=20)))
    request.inputs.extend(draw(st.lists(infer_tensor(), max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        output = request.outputs.add(name=draw(NAMES))
        for key in draw(st.lists(PARAMETER_KEYS, max_size=2)):
            output.parameters[key].CopyFrom(draw(parameter()))
    for key in draw(st.lists(PARAMETER_KEYS, max_size=2)):
        request.parameters[key].CopyFrom(draw(parameter()))
    request.raw_input_contents.extend(draw(st.lists(raw_buffer(), max_size=3)))
    return request


@st.composite
def near_valid_request(draw: st.DrawFn) -> kpb.ModelInferRequest:
    """A well-formed request, then a few random mutations: reaches the checks past the first ones."""
    items = draw(st.lists(st.binary(max_size=8), min_size=1, max_size=20))
    tensor = kpb.ModelInferRequest.InferInputTensor(name="IMAGE", datatype="BYTES",
                                                    shape=[len(items), *draw(st.sampled_from([[], [1]]))])
    request = kpb.ModelInferRequest(model_name="shapes", model_version=draw(st.sampled_from(["", "1"])),
                                    inputs=[tensor])
    tensor = request.inputs[0]  # the request holds a copy
    if draw(st.booleans()):
        tensor.contents.bytes_contents.extend(items)
    else:
        request.raw_input_contents.append(b"".join(struct.pack("<I", len(i)) + i for i in items))
    for name in draw(st.lists(st.sampled_from(["DETECTIONS", "NUM_DETECTIONS"]), max_size=2, unique=True)):
        request.outputs.add(name=name)
    for mutation in draw(st.lists(st.integers(0, 7), max_size=3)):
        if mutation == 0:
            tensor.shape[0] = draw(st.one_of(st.integers(-2, 40), INT64))
        elif mutation == 1:
            request.raw_input_contents.append(draw(raw_buffer()))
        elif mutation == 2:
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=4)))
        elif mutation == 3:
            request.model_version = draw(VERSIONS)
        elif mutation == 4:
            output = request.outputs.add(name=draw(NAMES))
            output.parameters[draw(PARAMETER_KEYS)].CopyFrom(draw(parameter()))
        elif mutation == 5:
            request.inputs.append(draw(infer_tensor()))
        elif mutation == 6 and request.raw_input_contents:
            buffer = request.raw_input_contents[0]
            request.raw_input_contents[0] = buffer[: draw(st.integers(0, len(buffer)))]
        elif mutation == 7:
            tensor.parameters[draw(PARAMETER_KEYS)].CopyFrom(draw(parameter()))
    return request


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(request=st.one_of(infer_request(), near_valid_request()), max_batch=st.integers(1, 16))
def test_only_trtserve_errors_come_out_of_the_kserve_parser(request: kpb.ModelInferRequest, max_batch: int) -> None:
    try:
        call = parse_infer_request(request, max_batch)
    except TrtserveError as exc:
        event(f"refused: {exc.grpc_code} {str(exc)[:25]}")
        assert exc.grpc_code in {"INVALID_ARGUMENT", "NOT_FOUND"}
        assert len(str(exc)) < 1_000  # every echoed client value is clipped
        return
    event("accepted")
    assert 1 <= len(call.images) <= max_batch and all(isinstance(i, bytes) for i in call.images)
    assert call.outputs and set(call.outputs) <= {"DETECTIONS", "NUM_DETECTIONS"}
    assert len(set(call.outputs)) == len(call.outputs)
    assert request.model_version in {"", "1"} and [i.name for i in request.inputs] == ["IMAGE"]
    assert not (request.raw_input_contents and request.inputs[0].contents.bytes_contents)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(items=st.lists(st.binary(max_size=8), min_size=1, max_size=24), max_batch=st.integers(1, 16),
       as_contents=st.booleans())
def test_a_well_formed_request_is_refused_only_for_its_size(items: list[bytes], max_batch: int,
                                                             as_contents: bool) -> None:
    tensor = kpb.ModelInferRequest.InferInputTensor(name="IMAGE", datatype="BYTES", shape=[len(items)])
    request = kpb.ModelInferRequest(model_name="shapes", inputs=[tensor])
    tensor = request.inputs[0]  # the request holds a copy
    if as_contents:
        tensor.contents.bytes_contents.extend(items)
    else:
        request.raw_input_contents.append(b"".join(struct.pack("<I", len(i)) + i for i in items))
    try:
        assert parse_infer_request(request, max_batch).images == items
        assert len(items) <= max_batch
    except TrtserveError as exc:
        assert len(items) > max_batch and "per request" in str(exc)
