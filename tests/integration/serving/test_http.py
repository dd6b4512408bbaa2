"""KServe v2 over HTTP/REST, spoken by the real tritonclient.http (and plain HTTP), against a real trtserve server:
the same session as the gRPC one in test_kserve.py, then what only HTTP has (JSON tensors, the binary header,
status codes, body limits), and the gRPC port's bearer tokens on the HTTP port."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from trtserve.datasets.synthetic import evaluation_set
from trtserve.repository import ModelRepository
from trtserve.serving.process import free_port, start_server_process, stop_server_process
from trtserve.serving.server import Server
from trtserve.serving.settings import ServerSettings

from ...conftest import ENGINES

MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Served:
    grpc: str
    http: str
    log: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("http")
    config = folder / "server.yaml"
    config.write_text(f"max_message_bytes: {MAX_MESSAGE_BYTES}\n")
    port = free_port()
    server, address = start_server_process(ENGINES, "shapes", "fp32", folder / "server.log", http_port=port,
                                           extra_args=["--config", str(config)])
    yield Served(address, f"127.0.0.1:{port}", folder / "server.log")
    assert stop_server_process(server) == 0


def jpeg(index: int = 0, width_px: int = 480, height_px: int = 360) -> bytes:
    scene = [s for s in evaluation_set(30) if len(s.class_ids) >= 2][index].image_bgr
    return cv2.imencode(".jpg", cv2.resize(scene, (width_px, height_px)), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def http_images(blobs: list[bytes], binary: bool = True) -> th.InferInput:
    """The IMAGE tensor; as JSON (``binary`` False) each image is its base64 text, what the server expects there."""
    tensor = th.InferInput("IMAGE", [len(blobs), 1], "BYTES")
    items = blobs if binary else [base64.b64encode(b).decode() for b in blobs]
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_).reshape(-1, 1), binary_data=binary)
    return tensor


def grpc_images(blobs: list[bytes]) -> tc.InferInput:
    tensor = tc.InferInput("IMAGE", [len(blobs), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
    return tensor


def request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a plain HTTP request; error statuses are returned, not raised."""
    req = urllib.request.Request(f"http://{url}", data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_metadata_and_readiness_match_the_grpc_port(served: Served) -> None:
    client = th.InferenceServerClient(served.http)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("shapes")
    assert not client.is_model_ready("cars") and not client.is_model_ready("shapes", "7")
    meta = client.get_model_metadata("shapes")
    assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1, 1]}]  # numbers, not strings
    assert meta["outputs"] == [{"name": "DETECTIONS", "datatype": "FP32", "shape": [-1, 100, 6]},
                               {"name": "NUM_DETECTIONS", "datatype": "INT32", "shape": [-1, 1]}]
    config = client.get_model_config("shapes")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [1]
    grpc_meta = tc.InferenceServerClient(served.grpc).get_model_metadata("shapes", as_json=True)
    assert [(t["name"], [int(d) for d in t["shape"]]) for t in grpc_meta["outputs"]] == [
        (t["name"], t["shape"]) for t in meta["outputs"]]
    assert client.get_server_metadata()["extensions"] == ["model_configuration", "binary_tensor_data", "statistics"]
    status, _, body = request(f"{served.http}/v2/repository/index", b"{}", method="POST")
    assert status == 200 and json.loads(body) == [{"name": name, "version": "1", "state": "READY", "reason": ""}
                                                  for name in ("shapes", "shapes.raw")]


def test_infer_binary_and_json_answer_what_grpc_answers(served: Served) -> None:
    blobs = [jpeg(i) for i in range(3)]
    expected = tc.InferenceServerClient(served.grpc).infer("shapes", [grpc_images(blobs)])
    want_dets, want_counts = expected.as_numpy("DETECTIONS"), expected.as_numpy("NUM_DETECTIONS")
    client = th.InferenceServerClient(served.http)
    binary = client.infer("shapes", [http_images(blobs)], request_id="r1")  # binary in, binary out (the defaults)
    assert binary.get_response()["id"] == "r1"
    np.testing.assert_array_equal(binary.as_numpy("NUM_DETECTIONS"), want_counts)
    np.testing.assert_allclose(binary.as_numpy("DETECTIONS"), want_dets, atol=1e-4)
    as_json = client.infer("shapes", [http_images(blobs, binary=False)],  # base64 JSON in, JSON out
                           outputs=[th.InferRequestedOutput("NUM_DETECTIONS", binary_data=False)])
    assert [o["name"] for o in as_json.get_response()["outputs"]] == ["NUM_DETECTIONS"]
    np.testing.assert_array_equal(as_json.as_numpy("NUM_DETECTIONS"), want_counts)
    # what curl sends: a JSON body with the base64 image
    body = json.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES",
                                   "data": [base64.b64encode(blobs[0]).decode()]}]}).encode()
    status, headers, reply = request(f"{served.http}/v2/models/shapes/infer", body,
                                     {"Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    answer = json.loads(reply)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["NUM_DETECTIONS"] == {"name": "NUM_DETECTIONS", "datatype": "INT32", "shape": [1, 1],
                                         "data": [int(want_counts[0, 0])]}
    assert outputs["DETECTIONS"]["shape"] == [1, 100, 6]
    np.testing.assert_allclose(np.array(outputs["DETECTIONS"]["data"]).reshape(1, 100, 6), want_dets[:1],
                               atol=1e-4)
    # the version path answers the same
    status, _, reply = request(f"{served.http}/v2/models/shapes/versions/1/infer", body)
    assert status == 200 and json.loads(reply)["model_version"] == "1"


@pytest.mark.parametrize("make, message", [
    (lambda: th.InferInput("PIXELS", [1, 1], "BYTES"), "one input named 'IMAGE'"),
    (lambda: th.InferInput("IMAGE", [1, 3], "BYTES"), "expected [N, 1] or [N]"),
    (lambda: th.InferInput("IMAGE", [1, 1], "FP32"), "datatype 'FP32'; expected BYTES"),
])
def test_wrong_tensor_is_400_naming_it_and_an_unknown_model_404(served: Served, make: Any, message: str) -> None:
    tensor = make()
    if tensor.datatype() == "FP32":
        tensor.set_data_from_numpy(np.zeros([1, 1], np.float32))
    else:
        tensor.set_data_from_numpy(np.array([b"x"] * int(np.prod(tensor.shape())), dtype=np.object_).reshape(
            tensor.shape()))
    client = th.InferenceServerClient(served.http)
    with pytest.raises(InferenceServerException) as info:
        client.infer("shapes", [tensor])
    assert info.value.status() == "400" and message in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("cars", [http_images([b"x"])])
    assert info.value.status() == "404" and "model 'cars' is not loaded" in info.value.message()


def test_versions_batch_and_outputs_are_checked_as_over_grpc(served: Served) -> None:
    client = th.InferenceServerClient(served.http)
    for call, status, message in [
        (lambda: client.infer("shapes", [http_images([jpeg()])], model_version="2"), "404",
         "has no version '2'; available versions: ['1']"),
        (lambda: client.get_model_metadata("shapes", model_version="7"), "404", "has no version '7'"),
        (lambda: client.infer("shapes", [http_images([jpeg()] * 9)]), "400", "9 elements; at most 8 per request"),
        (lambda: client.infer("shapes", [http_images([jpeg()])], outputs=[th.InferRequestedOutput("BOXES")]), "400",
         "unknown output 'BOXES' requested"),
        (lambda: client.infer("shapes", [http_images([b"not an image"])]), "400", "")]:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == status and message in info.value.message()


def test_bad_bodies_get_400_with_a_json_error_and_an_oversize_one_413(served: Served) -> None:
    url = f"{served.http}/v2/models/shapes/infer"
    blob = jpeg()
    head = json.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(blob) + 4}}]}).encode()
    raw = struct.pack("<I", len(blob)) + blob
    for body, headers, message in [
        (b"{not json", {}, "does not parse"),
        (b"[1, 2]", {}, "must be an object"),
        (head + raw, {"Inference-Header-Content-Length": str(len(head) + 10**6)}, "but the body has"),
        (head + raw[:-5], {"Inference-Header-Content-Length": str(len(head))}, "does not add up"),
        (head + raw + b"xx", {"Inference-Header-Content-Length": str(len(head))}, "does not add up"),
        (json.dumps({"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}).encode(),
         {}, "not valid base64")]:
        status, reply_headers, reply = request(url, body, headers)
        assert status == 400 and reply_headers["Content-Type"].startswith("application/json"), (status, reply)
        assert message in json.loads(reply)["error"]
    status, _, reply = request(url, head + raw, {"Inference-Header-Content-Length": str(len(head))})
    assert status == 200 and json.loads(reply)["outputs"][1]["name"] == "NUM_DETECTIONS"  # binary in, JSON out
    status, _, reply = request(url, b"x" * (MAX_MESSAGE_BYTES + 1))
    assert status == 413 and "max_message_bytes" in json.loads(reply)["error"]
    status, _, reply = request(f"{served.http}/v2/nothing/here")
    assert status == 404 and "no such endpoint" in json.loads(reply)["error"]
    status, _, reply = request(f"{served.http}/v2/systemsharedmemory/status")
    assert status == 501 and "not served by trtserve" in json.loads(reply)["error"]
    assert "Traceback" not in served.log.read_text()


def test_statistics_over_http_are_the_grpc_ones(served: Served) -> None:
    th.InferenceServerClient(served.http).infer("shapes", [http_images([jpeg()])])
    over_http = th.InferenceServerClient(served.http).get_inference_statistics("shapes")["model_stats"][0]
    over_grpc = tc.InferenceServerClient(served.grpc).get_inference_statistics("shapes", as_json=True)[
        "model_stats"][0]
    assert over_http["inference_count"] == int(over_grpc["inference_count"]) > 0  # JSON numbers over HTTP
    assert over_http["inference_stats"]["success"]["count"] == int(over_grpc["inference_stats"]["success"]["count"])
    assert over_http["inference_stats"]["fail"] == {"count": int(over_grpc["inference_stats"]["fail"]["count"]),
                                                    "ns": 0}
    status, _, reply = request(f"{served.http}/v2/models/stats")
    assert status == 200 and [m["name"] for m in json.loads(reply)["model_stats"]] == ["shapes", "shapes.raw"]


def test_the_http_port_takes_the_grpc_ports_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("s3cret\n")
    tokens.chmod(0o600)
    settings = ServerSettings(grpc_port=0, metrics_port=None, http_port=0, tokens_file=tokens)

    async def session() -> None:
        server = Server(settings, ModelRepository(ENGINES))
        await server.start()
        base = f"http://127.0.0.1:{server.http_port}"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/v2/health/ready") as reply:  # probes need no token
                    assert reply.status == 200
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                    async with http.get(f"{base}/v2/models/shapes", headers=headers) as reply:
                        assert reply.status == 401
                        assert "bearer token" in (await reply.json())["error"]
                async with http.get(f"{base}/v2/models/shapes", headers={"Authorization": "Bearer s3cret"}) as reply:
                    assert reply.status == 200 and (await reply.json())["name"] == "shapes"
        finally:
            await server.stop()

    asyncio.run(session())
