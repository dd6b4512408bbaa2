"""A ``head: raw`` model answers with its own named output tensors over both APIs: KServe (gRPC and HTTP, metadata
matching them) and trtserve.v1 (``DetectResponse.tensors``, read by the Python client as NumPy arrays), a client
may ask for a subset, and an unknown name is INVALID_ARGUMENT. Also grayscale frames over trtserve.v1 (raw GRAY8
pixels and grayscale PNG/JPEG) answered with detections. Against a real server process, with the real clients."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from trtserve.client import DetectionClient, detections_of, tensors_of
from trtserve.datasets.synthetic import evaluation_set
from trtserve.detector import Detector
from trtserve.repository import ModelRepository
from trtserve.serving.process import free_port, start_server_process, stop_server_process
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ...conftest import ENGINES
from .raw_models import OUTPUTS, make_twins, run, tensors


@dataclass(frozen=True)
class Served:
    grpc: str
    http: str
    repository: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repository = tmp_path_factory.mktemp("raw_head")
    make_twins(repository)
    (repository / "shapes").symlink_to(ENGINES / "shapes")
    port = free_port()
    server, address = start_server_process(repository, "twins", "fp32", repository / "server.log", http_port=port,
                                           extra_args=["--model", "shapes"])
    yield Served(address, f"127.0.0.1:{port}", repository)
    assert stop_server_process(server) == 0
    assert "Traceback" not in (repository / "server.log").read_text()


@pytest.fixture(scope="module")
def twins(served: Served) -> Iterator[Detector]:
    with Detector.open(ModelRepository(served.repository).get("twins")) as detector:
        yield detector


def frame(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), np.uint8)


def expected(detector: Detector, image: np.ndarray) -> dict[str, np.ndarray]:
    """What the model outputs for a frame the server letterboxes and normalizes itself."""
    letterboxed, _ = detector.letterbox(image)
    return run(detector.backend.model_path, np.asarray(detector.preprocessor.to_input([letterboxed])))


def test_kserve_metadata_and_answers_are_the_models_own_tensors(served: Served, twins: Detector) -> None:
    client = tc.InferenceServerClient(served.grpc)
    meta = client.get_model_metadata("twins", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("pooled", "FP32", ["-1", "3", "4", "4"]), ("features", "FP32", ["-1", "4", "4", "4"])]
    config = client.get_model_config("twins", as_json=True)["config"]
    assert [(t["name"], t["dims"]) for t in config["output"]] == [("pooled", ["3", "4", "4"]),
                                                                  ("features", ["4", "4", "4"])]
    image = frame()
    png = cv2.imencode(".png", image)[1].tobytes()
    want = expected(twins, image)
    tensor = tc.InferInput("IMAGE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[png]], dtype=np.object_))
    result = client.infer("twins", [tensor])
    for name in OUTPUTS:
        np.testing.assert_allclose(result.as_numpy(name)[0], want[name][0], rtol=1e-5, atol=1e-5)
    subset = client.infer("twins", [tensor], outputs=[tc.InferRequestedOutput("features")])
    assert [o.name for o in subset.get_response().outputs] == ["features"]
    http = th.InferenceServerClient(served.http)
    h_tensor = th.InferInput("IMAGE", [1, 1], "BYTES")
    h_tensor.set_data_from_numpy(np.array([[png]], dtype=np.object_), binary_data=True)
    h_result = http.infer("twins", [h_tensor], outputs=[th.InferRequestedOutput("pooled", binary_data=False)])
    np.testing.assert_allclose(h_result.as_numpy("pooled")[0], want["pooled"][0], rtol=1e-5, atol=1e-5)
    assert h_result.as_numpy("features") is None  # not asked for
    with pytest.raises(InferenceServerException) as info:
        client.infer("twins", [tensor], outputs=[tc.InferRequestedOutput("DETECTIONS")])
    assert "INVALID_ARGUMENT" in str(info.value.status()) and "unknown output 'DETECTIONS'" in info.value.message()
    # its raw interface takes the model's own input tensor
    batch = tensors(2)
    raw = tc.InferInput("images", [2, 3, 32, 32], "FP32")
    raw.set_data_from_numpy(batch)
    got = client.infer("twins.raw", [raw])
    for name, array in run(twins.backend.model_path, batch).items():
        np.testing.assert_allclose(got.as_numpy(name), array, rtol=1e-5, atol=1e-5)


def test_trtserve_v1_answers_with_tensors_a_subset_when_asked(served: Served, twins: Detector) -> None:
    image = frame(5)
    want = expected(twins, image)
    with DetectionClient(served.grpc, "twins", jpeg_quality=None) as client:
        answer = client.detect(image)
        assert answer.status == pb.STATUS_OK and not answer.detections
        assert [(t.name, t.datatype, list(t.shape)) for t in answer.tensors] == [
            ("pooled", "FP32", [3, 4, 4]), ("features", "FP32", [4, 4, 4])]
        got = tensors_of(answer)
        for name in OUTPUTS:
            np.testing.assert_allclose(got[name], want[name][0], rtol=1e-5, atol=1e-5)
    with DetectionClient(served.grpc, "twins", jpeg_quality=None, outputs=["features"]) as client:
        assert list(tensors_of(client.detect(image))) == ["features"]
        streamed = list(client.stream_frames([image, image]))
        assert [list(tensors_of(a)) for _, a in streamed] == [["features"], ["features"]]
    for model, outputs, message in [("twins", ["boxes"], "unknown output 'boxes'"),
                                    ("twins", ["pooled", "pooled"], "requested more than once"),
                                    ("shapes", ["output0"], "'outputs' applies to head: raw models only")]:
        with DetectionClient(served.grpc, model, outputs=outputs) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.detect(image)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()


def scene_gray() -> np.ndarray:
    scene = next(s for s in evaluation_set(20) if len(s.class_ids) >= 3)
    return cv2.cvtColor(scene.image_bgr, cv2.COLOR_BGR2GRAY)


def test_grayscale_frames_over_grpc_are_answered_with_detections(served: Served) -> None:
    gray = scene_gray()
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    with DetectionClient(served.grpc, "shapes", jpeg_quality=None) as client:
        reference = detections_of(client.detect(bgr))  # the same pixels as a 3-channel frame
        raw_gray = client.detect(gray)  # sent as PIXEL_FORMAT_GRAY8
    assert len(reference) > 0
    assert raw_gray.status == pb.STATUS_OK and len(raw_gray.detections) == len(reference)
    np.testing.assert_allclose(detections_of(raw_gray).boxes_xyxy, reference.boxes_xyxy, atol=1e-3)
    assert (raw_gray.frame_width, raw_gray.frame_height) == (gray.shape[1], gray.shape[0])
    stub = pb_grpc.DetectionServiceStub(grpc.insecure_channel(served.grpc))
    def encoded(ext: str) -> pb.DetectRequest:
        return pb.DetectRequest(model="shapes", image=pb.Image(encoded=cv2.imencode(ext, gray)[1].tobytes()))

    png = stub.Detect(encoded(".png"), timeout=30)  # lossless: the same pixels, the same detections
    assert png.status == pb.STATUS_OK
    np.testing.assert_allclose(detections_of(png).boxes_xyxy, reference.boxes_xyxy, atol=1e-3)
    jpeg = stub.Detect(encoded(".jpg"), timeout=30)
    assert jpeg.status == pb.STATUS_OK and len(jpeg.detections) > 0
    short = pb.RawImage(pixels=gray.tobytes()[:-1], height=gray.shape[0], width=gray.shape[1],
                        format=pb.PIXEL_FORMAT_GRAY8)
    with pytest.raises(grpc.RpcError) as info:
        stub.Detect(pb.DetectRequest(model="shapes", image=pb.Image(raw=short)), timeout=30)
    expected_bytes = gray.shape[0] * gray.shape[1]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"needs {expected_bytes} bytes, got {expected_bytes - 1}" in info.value.details()
