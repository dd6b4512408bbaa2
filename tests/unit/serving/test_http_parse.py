"""The HTTP/REST transport's pure parts (serving/http_service.py): a body becomes the same ModelInferRequest the gRPC
transport receives, or a 400 naming what is wrong; JSON of protobuf messages keeps 64-bit integers as numbers; and
the http_port setting from file, environment and flags."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest
from tritonclient.grpc import service_pb2 as kpb

from trtserve.errors import ConfigError, InvalidFrameError
from trtserve.serving.http_service import message_json, parse_http_infer
from trtserve.serving.kserve_dataplane import deserialize_bytes, parse_infer_request, serialize_bytes
from trtserve.serving.settings import DEFAULT_HTTP_PORT, ServerSettings, load_server_settings


def image_spec(**extra: object) -> dict[str, object]:
    return {"name": "IMAGE", "shape": [2, 1], "datatype": "BYTES", **extra}


def test_json_base64_images_become_bytes_contents_and_pass_the_grpc_check() -> None:
    body = json.dumps({"id": "a", "inputs": [image_spec(data=[[base64.b64encode(b"one").decode()],
                                                               [base64.b64encode(b"two").decode()]])],
                       "outputs": [{"name": "NUM_DETECTIONS", "parameters": {"binary_data": True}}]}).encode()
    request, binary, default = parse_http_infer(body, None, "shapes", "1")
    assert (request.model_name, request.model_version, request.id) == ("shapes", "1", "a")
    assert list(request.inputs[0].contents.bytes_contents) == [b"one", b"two"] and not request.raw_input_contents
    assert binary == {"NUM_DETECTIONS": True} and default is False
    call = parse_infer_request(request, 8)
    assert call.images == [b"one", b"two"] and call.outputs == ("NUM_DETECTIONS",)


def test_binary_data_becomes_raw_input_contents() -> None:
    raw = serialize_bytes([b"one", b"three"])
    head = json.dumps({"inputs": [image_spec(parameters={"binary_data_size": len(raw)})],
                       "parameters": {"binary_data_output": True}}).encode()
    request, binary, default = parse_http_infer(head + raw, str(len(head)), "shapes", "")
    assert list(request.raw_input_contents) == [raw] and default is True and binary == {}
    assert deserialize_bytes(request.raw_input_contents[0]) == [b"one", b"three"]


@pytest.mark.parametrize("body, header, message", [
    (b"{", None, "does not parse"),
    (b"\xff\xfe", None, "does not parse"),
    (b"[]", None, "must be an object"),
    (b'{"inputs": {}}', None, "'inputs' has the wrong JSON type"),
    (b'{"inputs": [{"name": "IMAGE", "shape": [-1], "datatype": "BYTES", "data": []}]}', None, "non-negative"),
    (b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES"}]}', None, "neither 'data' nor"),
    (b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [1]}]}', None, "not a string"),
    (b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["!!"]}]}', None, "base64"),
    (b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": ["a"]}]}', None, "not all FP32"),
    (b"{}", "ten", "is not a number"),
    (b"{}", "99", "but the body has 2 bytes"),
    (b"{}xx", "2", "does not add up"),
    (b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}'
     b"1234", "105", "does not add up"),
    (b'{"outputs": [{"name": "DETECTIONS", "parameters": {"binary_data": "yes"}}]}', None, "true or false"),
])
def test_a_bad_body_is_invalid_argument_saying_what(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(InvalidFrameError, match=message):
        parse_http_infer(body, header, "shapes", "")


def test_numeric_json_data_of_a_mixed_request_is_sent_raw_like_the_binary_input() -> None:
    raw = struct.pack("<I", 3) + b"one"
    head = json.dumps({"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}},
                                  {"name": "X", "shape": [2], "datatype": "FP32", "data": [1.0, 2.5]}]}).encode()
    request, _, _ = parse_http_infer(head + raw, str(len(head)), "m", "")
    assert request.raw_input_contents[0] == raw
    assert request.raw_input_contents[1] == struct.pack("<2f", 1.0, 2.5)


def test_message_json_writes_int64_fields_as_numbers() -> None:
    meta = kpb.ModelMetadataResponse(name="m", inputs=[kpb.ModelMetadataResponse.TensorMetadata(
        name="IMAGE", datatype="BYTES", shape=[-1, 1])])
    assert message_json(meta)["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1, 1]}]
    stats = kpb.ModelStatisticsResponse(model_stats=[kpb.ModelStatistics(
        name="m", inference_count=5, inference_stats=kpb.InferStatistics(success=kpb.StatisticDuration(count=5,
                                                                                                        ns=10**12),
                                                                 fail=kpb.StatisticDuration()))])
    (m,) = message_json(stats)["model_stats"]
    assert m["inference_count"] == 5 and m["inference_stats"]["success"] == {"count": 5, "ns": 10**12}
    assert m["inference_stats"]["fail"] == {"count": 0, "ns": 0}  # zeros written out, as Triton does


def test_http_port_defaults_to_8000_for_serve_and_off_in_code(tmp_path: Path) -> None:
    assert ServerSettings().http_port is None
    assert load_server_settings(environ={}).http_port == DEFAULT_HTTP_PORT == 8000
    assert load_server_settings(environ={"TRTSERVE_HTTP_PORT": "9000"}).http_port == 9000
    assert load_server_settings(environ={"TRTSERVE_HTTP_PORT": "off"}).http_port is None
    assert load_server_settings(environ={}, overrides={"http_port": "0"}).http_port == 0
    config = tmp_path / "server.yaml"
    config.write_text("http_port: null\n")
    assert load_server_settings(config, environ={}).http_port is None
    assert load_server_settings(config, environ={}, overrides={"http_port": "8080"}).http_port == 8080
    with pytest.raises(ConfigError, match=r"http_port.*'eighty'.*or null to turn HTTP off"):
        load_server_settings(environ={"TRTSERVE_HTTP_PORT": "eighty"})
    config.write_text("http_port: 70000\n")
    with pytest.raises(ConfigError, match=r"server.yaml: key 'http_port' has value 70000"):
        load_server_settings(config, environ={})


@pytest.mark.parametrize("body, message", [
    (b'{"inputs": [{"name": "IMAGE", "datatype": "FP32", "shape": [1], "data": ' + b"[" * 100_000 + b"]" * 100_000
     + b"}]}", "nests too deeply"),
    (b'{"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [100000000000000000000000], "data": []}]}',
     "64-bit integers"),
])
def test_a_hostile_body_is_invalid_argument_not_an_internal_error(body: bytes, message: str) -> None:
    """Found by review: RecursionError from json.loads and protobuf's ValueError for a huge dimension escaped as
    500 INTERNAL with a traceback per request."""
    with pytest.raises(InvalidFrameError, match=message):
        parse_http_infer(body, None, "shapes", "")


def test_deeply_nested_numeric_data_flattens_without_recursion() -> None:
    from trtserve.serving.http_service import _flatten

    nested: list = [7]
    for _ in range(5000):  # deeper than Python's recursion limit
        nested = [nested, 1]
    assert list(_flatten(nested)) == [7] + [1] * 5000
