"""KServe v2 over gRPC, spoken by the real tritonclient, against a real trtserve server."""

import queue

import cv2
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from trtserve.client import DetectionClient
from trtserve.datasets.synthetic import evaluation_set
from trtserve.serving.process import start_server_process, stop_server_process

from ...conftest import ENGINES


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    log = tmp_path_factory.mktemp("kserve") / "server.log"
    server, addr = start_server_process(ENGINES, "shapes", "fp32", log)
    yield addr
    assert stop_server_process(server) == 0


def image_input(blobs: list[bytes]) -> tc.InferInput:
    tensor = tc.InferInput("IMAGE", [len(blobs)], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    return tensor


def test_metadata_and_readiness(address: str) -> None:
    client = tc.InferenceServerClient(address)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("shapes")
    assert not client.is_model_ready("cars")
    meta = client.get_model_metadata("shapes", as_json=True)
    assert [i["name"] for i in meta["inputs"]] == ["IMAGE"]
    config = client.get_model_config("shapes", as_json=True)["config"]
    assert config["max_batch_size"] == 8
    assert [m["name"] for m in client.get_model_repository_index(as_json=True)["models"]] == ["shapes"]


def test_model_infer_and_stream_infer_match_detect(address: str) -> None:
    scenes = [s for s in evaluation_set(30) if len(s.class_ids) >= 2][:3]
    blobs = [cv2.imencode(".png", s.image_bgr)[1].tobytes() for s in scenes]
    with DetectionClient(address, "shapes", jpeg_quality=90) as native:
        expected = [native.detect(s.image_bgr) for s in scenes]
    client = tc.InferenceServerClient(address)
    # the same JPEG bytes the native client sent, so both protocols see identical pixels
    jpegs = [cv2.imencode(".jpg", s.image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for s in scenes]
    result = client.infer("shapes", [image_input(jpegs)])
    dets, counts = result.as_numpy("DETECTIONS"), result.as_numpy("NUM_DETECTIONS")
    assert dets.shape[0] == 3 and counts.tolist() == [len(e.detections) for e in expected]
    for row, n, answer in zip(dets, counts, expected):
        boxes = np.array([[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max] for d in answer.detections])
        np.testing.assert_allclose(row[:n, :4], boxes, atol=1e-3)
        assert row[:n, 5].astype(int).tolist() == [d.class_id for d in answer.detections]
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i, blob in enumerate(blobs):
        client.async_stream_infer("shapes", [image_input([blob])], request_id=str(i))
    client.async_stream_infer("shapes", [image_input([b"not an image"])], request_id="bad")
    got = [answers.get(timeout=30) for _ in range(4)]
    client.stop_stream()
    assert [r.get_response().id for r, _ in got[:3]] == ["0", "1", "2"]  # concurrent, answered in order
    assert all(err is None for _, err in got[:3])
    assert got[3][1] is not None and "INVALID_ARGUMENT" in str(got[3][1])
    assert [int(r.as_numpy("NUM_DETECTIONS")[0]) for r, _ in got[:3]] == [
        int(n) for n in client.infer("shapes", [image_input(blobs)]).as_numpy("NUM_DETECTIONS")]


@pytest.mark.parametrize("make, message", [
    (lambda: tc.InferInput("PIXELS", [1], "BYTES"), "one input named 'IMAGE'"),
    (lambda: tc.InferInput("IMAGE", [1, 3], "BYTES"), "expected [N] or [N, 1]"),
    (lambda: tc.InferInput("IMAGE", [1], "FP32"), "datatype FP32; expected BYTES"),
])
def test_wrong_tensor_is_invalid_argument_naming_it(address: str, make, message: str) -> None:  # type: ignore[no-untyped-def]
    tensor = make()
    if tensor.datatype() == "FP32":
        tensor.set_data_from_numpy(np.zeros([1], np.float32))
    else:
        tensor.set_data_from_numpy(np.array([b"x"] * int(np.prod(tensor.shape())), dtype=np.object_).reshape(
            tensor.shape()))
    with pytest.raises(InferenceServerException) as info:
        tc.InferenceServerClient(address).infer("shapes", [tensor])
    assert "INVALID_ARGUMENT" in str(info.value.status()) and message in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        tc.InferenceServerClient(address).infer("cars", [image_input([b"x"])])
    assert "NOT_FOUND" in str(info.value.status())
