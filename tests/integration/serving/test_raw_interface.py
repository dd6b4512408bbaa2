"""The raw tensor interface beside the detector: ``shapes.raw`` over KServe gRPC and HTTP, spoken by the real
tritonclient, against a real trtserve server — the model's own input tensor in (a client that preprocesses itself,
as DeepStream's nvinferserver does), the model's own output tensors out, through the detector's own batcher."""

from __future__ import annotations

import queue
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from trtserve.datasets.synthetic import evaluation_set
from trtserve.detector import Detector
from trtserve.serving.process import free_port, start_server_process, stop_server_process

from ...conftest import ENGINES


@dataclass(frozen=True)
class Served:
    grpc: str
    http: str
    log: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("raw_interface")
    port = free_port()
    # one engine instance and a long queue delay: frames sent together are batched together
    server, address = start_server_process(ENGINES, "shapes", "fp32", folder / "server.log", http_port=port,
                                           extra_args=["--instances", "1", "--max-queue-delay-ms", "300"])
    yield Served(address, f"127.0.0.1:{port}", folder / "server.log")
    assert stop_server_process(server) == 0
    log = (folder / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def preprocessed(detector: Detector, count: int) -> np.ndarray:
    """``count`` scenes as the model's own input tensor (letterboxed, normalized, NCHW FP32), as a client that
    preprocesses itself sends them."""
    scenes = [s.image_bgr for s in evaluation_set(20) if len(s.class_ids) >= 2][:count]
    letterboxed = [detector.letterbox(s)[0] for s in scenes]
    return np.ascontiguousarray(detector.preprocessor.to_input(letterboxed))


def raw_input(tensor: np.ndarray, name: str = "images", datatype: str = "FP32", binary: bool = True) -> th.InferInput:
    t = th.InferInput(name, list(tensor.shape), datatype)
    t.set_data_from_numpy(tensor, binary_data=binary)
    return t


def grpc_input(tensor: np.ndarray, name: str = "images", datatype: str = "FP32") -> tc.InferInput:
    t = tc.InferInput(name, list(tensor.shape), datatype)
    t.set_data_from_numpy(tensor)
    return t


def test_raw_model_is_listed_beside_the_detector_with_the_models_own_tensors(served: Served,
                                                                            shapes: Detector) -> None:
    client = tc.InferenceServerClient(served.grpc)
    assert client.is_model_ready("shapes.raw") and not client.is_model_ready("cars.raw")
    assert [m["name"] for m in client.get_model_repository_index(as_json=True)["models"]] == ["shapes", "shapes.raw"]
    meta = client.get_model_metadata("shapes.raw", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("images", "FP32", ["-1", "3", "256", "256"])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("output0", "FP32", ["-1", "10", "1344"])]
    config = client.get_model_config("shapes.raw", as_json=True)["config"]
    assert config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("images", "TYPE_FP32", ["3", "256", "256"])]
    assert [(t["name"], t["dims"]) for t in config["output"]] == [("output0", ["10", "1344"])]
    http = th.InferenceServerClient(served.http)
    assert http.is_model_ready("shapes.raw")
    assert http.get_model_metadata("shapes.raw")["inputs"][0]["shape"] == [-1, 3, 256, 256]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("cars.raw")
    assert "NOT_FOUND" in str(info.value.status()) and "shapes.raw" in info.value.message()


def test_raw_outputs_are_the_models_own_over_grpc_http_and_stream(served: Served, shapes: Detector) -> None:
    tensor = preprocessed(shapes, 3)
    expected = shapes.infer_tensor(tensor)["output0"]
    grpc_client = tc.InferenceServerClient(served.grpc)
    got = grpc_client.infer("shapes.raw", [grpc_input(tensor)]).as_numpy("output0")
    assert got.shape == (3, 10, 1344) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    http_client = th.InferenceServerClient(served.http)
    binary = http_client.infer("shapes.raw", [raw_input(tensor)],
                               outputs=[th.InferRequestedOutput("output0", binary_data=True)])
    np.testing.assert_allclose(binary.as_numpy("output0"), expected, rtol=1e-4, atol=1e-4)
    as_json = http_client.infer("shapes.raw", [raw_input(tensor[:1], binary=False)],
                                outputs=[th.InferRequestedOutput("output0", binary_data=False)])
    np.testing.assert_allclose(as_json.as_numpy("output0"), expected[:1], rtol=1e-4, atol=1e-4)
    answers: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(3):
        grpc_client.async_stream_infer("shapes.raw", [grpc_input(tensor[i : i + 1])], request_id=str(i))
    got_stream = [answers.get(timeout=30) for _ in range(3)]
    grpc_client.stop_stream()
    assert [error for _, error in got_stream] == [None] * 3
    assert [r.get_response().id for r, _ in got_stream] == ["0", "1", "2"]
    for i, (result, _) in enumerate(got_stream):
        np.testing.assert_allclose(result.as_numpy("output0")[0], expected[i], rtol=1e-4, atol=1e-4)


def statistics(client: tc.InferenceServerClient, model: str) -> dict:  # type: ignore[type-arg]
    stats: dict = client.get_inference_statistics(model, as_json=True)["model_stats"][0]  # type: ignore[type-arg]
    return stats


def test_frames_of_both_interfaces_share_one_batch_and_are_counted_apart(served: Served, shapes: Detector) -> None:
    client = tc.InferenceServerClient(served.grpc)
    before, before_raw = statistics(client, "shapes"), statistics(client, "shapes.raw")
    tensor = preprocessed(shapes, 4)
    image = tc.InferInput("IMAGE", [4, 1], "BYTES")
    scenes = [s.image_bgr for s in evaluation_set(20) if len(s.class_ids) >= 2][:4]
    image.set_data_from_numpy(np.array([[cv2.imencode(".png", s)[1].tobytes()] for s in scenes], dtype=np.object_))
    answers: queue.Queue = queue.Queue()
    client.async_infer("shapes", [image], callback=lambda result, error: answers.put(("image", result, error)))
    client.async_infer("shapes.raw", [grpc_input(tensor)],
                       callback=lambda result, error: answers.put(("raw", result, error)))
    got = {kind: (result, error) for kind, result, error in (answers.get(timeout=30) for _ in range(2))}
    assert got["image"][1] is None and got["raw"][1] is None
    assert int(got["image"][0].as_numpy("NUM_DETECTIONS").sum()) > 0
    np.testing.assert_allclose(got["raw"][0].as_numpy("output0"), shapes.infer_tensor(tensor)["output0"],
                               rtol=1e-4, atol=1e-4)
    after, after_raw = statistics(client, "shapes"), statistics(client, "shapes.raw")

    def count(stats: dict, key: str) -> int:  # type: ignore[type-arg]
        return int(stats.get(key, 0))

    # one engine run of 8: 4 decoded frames and 4 tensors (the batch was full, so it went at once)
    assert count(after, "execution_count") - count(before, "execution_count") == 1
    assert count(after, "inference_count") - count(before, "inference_count") == 8
    assert count(after_raw, "execution_count") - count(before_raw, "execution_count") == 1
    assert count(after_raw, "inference_count") - count(before_raw, "inference_count") == 4
    ok = after["inference_stats"]["success"]
    ok_raw, ok_raw_before = after_raw["inference_stats"]["success"], before_raw["inference_stats"].get("success", {})
    assert int(ok_raw["count"]) - int(ok_raw_before.get("count", 0)) == 4 and int(ok["count"]) >= 4
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in after["batch_stats"]}
    assert sizes.get(8, 0) >= 1
    metrics_text = urllib.request.urlopen(f"http://{served.http}/v2/models/shapes.raw/stats", timeout=5).read()
    assert b'"name":"shapes.raw"' in metrics_text.replace(b" ", b"")


def test_a_subset_of_requests_is_answered_and_bad_tensors_are_refused_as_triton_does(served: Served,
                                                                                    shapes: Detector) -> None:
    client = tc.InferenceServerClient(served.grpc)
    good = preprocessed(shapes, 1)
    result = client.infer("shapes.raw", [grpc_input(good)], outputs=[tc.InferRequestedOutput("output0")])
    assert [o.name for o in result.get_response().outputs] == ["output0"]
    cases = [
        ([grpc_input(good, name="IMAGE")], None, "one input named 'images'"),
        ([grpc_input(good.astype(np.float16), datatype="FP16")], None, "datatype 'FP16'; expected FP32"),
        ([grpc_input(np.zeros((1, 3, 128, 128), np.float32))], None, "expected [-1, 3, 256, 256]"),
        ([grpc_input(np.zeros((9, 3, 256, 256), np.float32))], None, "batch of 9; at most 8"),
        ([grpc_input(good)], [tc.InferRequestedOutput("boxes")], "unknown output 'boxes'"),
    ]
    for inputs, outputs, message in cases:
        with pytest.raises(InferenceServerException) as info:
            client.infer("shapes.raw", inputs, outputs=outputs)
        assert "INVALID_ARGUMENT" in str(info.value.status()), info.value.message()
        assert message in info.value.message(), info.value.message()
    http_client = th.InferenceServerClient(served.http)
    with pytest.raises(InferenceServerException) as http_info:
        http_client.infer("shapes.raw", [raw_input(good[:, :2], binary=True)])
    assert "expected [-1, 3, 256, 256]" in http_info.value.message() and http_info.value.status() == "400"
    with pytest.raises(InferenceServerException) as version_info:
        client.infer("shapes.raw", [grpc_input(good)], model_version="raw")
    assert "NOT_FOUND" in str(version_info.value.status())
