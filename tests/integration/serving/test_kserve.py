"""KServe v2 over gRPC, spoken by the real tritonclient, against a real trtserve server."""

import queue
import struct
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc
from tritonclient.utils import InferenceServerException

from trtserve.client import DetectionClient
from trtserve.datasets.synthetic import evaluation_set
from trtserve.serving.process import free_port, start_server_process, stop_server_process

from ...conftest import ENGINES


@dataclass(frozen=True)
class Served:
    address: str
    metrics_port: int
    log: Path

    def frames(self, outcome: str | None = None, code: str | None = None) -> float:
        """trtserve_frames_total of the model, summed over the series matching ``outcome`` and ``code``."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == "trtserve_frames_total" and outcome in (None, s.labels["outcome"])
                   and code in (None, s.labels["code"]))

    def batched_frames(self) -> float:
        """Frames sent to the backend so far (the sum of trtserve_batch_size)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == "trtserve_batch_size_sum")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    log = tmp_path_factory.mktemp("kserve") / "server.log"
    metrics_port = free_port()
    server, addr = start_server_process(ENGINES, "shapes", "fp32", log, metrics_port=metrics_port)
    yield Served(addr, metrics_port, log)
    assert stop_server_process(server) == 0


@pytest.fixture(scope="module")
def address(served: Served) -> str:
    return served.address


def image_input(blobs: list[bytes]) -> tc.InferInput:
    tensor = tc.InferInput("IMAGE", [len(blobs)], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    return tensor


def test_metadata_and_readiness(address: str) -> None:
    client = tc.InferenceServerClient(address)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("shapes")
    assert not client.is_model_ready("cars")
    meta = client.get_model_metadata("shapes", as_json=True)
    # Triton's conventions for a batching model: metadata shapes lead with -1, config dims leave the batch out
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("IMAGE", "BYTES", ["-1", "1"])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("DETECTIONS", "FP32", ["-1", "100", "6"]), ("NUM_DETECTIONS", "INT32", ["-1", "1"])]
    config = client.get_model_config("shapes", as_json=True)["config"]
    assert config["max_batch_size"] == 8
    assert [(t["name"], t["dims"]) for t in config["input"]] == [("IMAGE", ["1"])]
    assert [(t["name"], t["dims"]) for t in config["output"]] == [("DETECTIONS", ["100", "6"]),
                                                                  ("NUM_DETECTIONS", ["1"])]
    assert client.get_server_metadata(as_json=True)["extensions"] == ["model_configuration", "binary_tensor_data",
                                                                      "statistics"]
    # the detector and its raw tensor interface (test_raw_interface.py)
    assert [m["name"] for m in client.get_model_repository_index(as_json=True)["models"]] == ["shapes", "shapes.raw"]


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
    assert counts.shape == (3, 1)  # as the config declares it: dims [1] per element
    counts = counts[:, 0]
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
    assert [int(r.as_numpy("NUM_DETECTIONS")[0, 0]) for r, _ in got[:3]] == [
        int(n) for n in client.infer("shapes", [image_input(blobs)]).as_numpy("NUM_DETECTIONS")[:, 0]]


@pytest.mark.parametrize("make, message", [
    (lambda: tc.InferInput("PIXELS", [1], "BYTES"), "one input named 'IMAGE'"),
    (lambda: tc.InferInput("IMAGE", [1, 3], "BYTES"), "expected [N, 1] or [N]"),
    (lambda: tc.InferInput("IMAGE", [1], "FP32"), "datatype 'FP32'; expected BYTES"),
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


def scene_jpeg(width_px: int = 640, height_px: int = 480) -> bytes:
    scene = next(s for s in evaluation_set(20) if len(s.class_ids) >= 2).image_bgr
    return cv2.imencode(".jpg", cv2.resize(scene, (width_px, height_px)), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def refused(address: str, *inputs: tc.InferInput, **kwargs) -> InferenceServerException:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as info:
        tc.InferenceServerClient(address).infer("shapes", list(inputs), **kwargs)
    return info.value


def test_more_elements_than_the_max_batch_are_invalid_argument_before_any_is_decoded(served: Served) -> None:
    before = served.frames()
    error = refused(served.address, image_input([scene_jpeg()] * 9))
    assert "INVALID_ARGUMENT" in str(error.status()) and "9 elements; at most 8 per request" in error.message()
    started = time.monotonic()
    error = refused(served.address, image_input([b""] * 20_000))  # the probe's 80 KB request
    refused_s = time.monotonic() - started
    assert "INVALID_ARGUMENT" in str(error.status()) and "20000 elements; at most 8 per request" in error.message()
    assert refused_s < 2.0
    assert served.frames() == before  # not one element reached the pipeline
    assert tc.InferenceServerClient(served.address).infer("shapes", [image_input([scene_jpeg()] * 8)]).as_numpy(
        "NUM_DETECTIONS").shape == (8, 1)


def test_an_unknown_model_version_is_not_found_naming_the_available_ones(address: str) -> None:
    error = refused(address, image_input([scene_jpeg()]), model_version="2")
    assert "NOT_FOUND" in str(error.status())
    assert "has no version '2'; available versions: ['1']" in error.message()
    client = tc.InferenceServerClient(address)
    assert client.infer("shapes", [image_input([scene_jpeg()])], model_version="1").get_response().model_version == "1"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("shapes", model_version="7")
    assert "NOT_FOUND" in str(info.value.status())
    assert client.is_model_ready("shapes", "1") and not client.is_model_ready("shapes", "7")
    error = refused(address, image_input([scene_jpeg()]), model_version="9" * 20_000)
    assert "NOT_FOUND" in str(error.status()) and len(error.message()) < 400  # the echoed version is clipped


def test_requested_outputs_unknown_ones_refused_known_ones_answered_alone(address: str) -> None:
    error = refused(address, image_input([scene_jpeg()]), outputs=[tc.InferRequestedOutput("BOXES")])
    assert "INVALID_ARGUMENT" in str(error.status())
    assert "unknown output 'BOXES' requested; model 'shapes' has outputs ['DETECTIONS', 'NUM_DETECTIONS']" in (
        error.message())
    error = refused(address, image_input([scene_jpeg()]),
                    outputs=[tc.InferRequestedOutput("DETECTIONS", class_count=3)])
    assert "INVALID_ARGUMENT" in str(error.status()) and "classification" in error.message()
    result = tc.InferenceServerClient(address).infer("shapes", [image_input([scene_jpeg()] * 2)],
                                                     outputs=[tc.InferRequestedOutput("NUM_DETECTIONS")])
    assert [o.name for o in result.get_response().outputs] == ["NUM_DETECTIONS"]
    assert result.as_numpy("NUM_DETECTIONS").shape == (2, 1) and result.as_numpy("DETECTIONS") is None


def test_ambiguous_tensor_data_is_invalid_argument(address: str) -> None:
    blob = scene_jpeg()
    raw = struct.pack("<I", len(blob)) + blob
    both = kpb.ModelInferRequest(model_name="shapes", inputs=[kpb.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[1], contents=kpb.InferTensorContents(bytes_contents=[blob]))],
        raw_input_contents=[raw])
    two_buffers = kpb.ModelInferRequest(model_name="shapes", inputs=[kpb.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[1])], raw_input_contents=[raw, raw])
    contents_only = kpb.ModelInferRequest(model_name="shapes", inputs=[kpb.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[1], contents=kpb.InferTensorContents(bytes_contents=[blob]))])
    with grpc.insecure_channel(address) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        for request, message in [(both, "both contents and raw_input_contents"),
                                 (two_buffers, "2 raw_input_contents buffers")]:
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()
        reply = stub.ModelInfer(contents_only, timeout=30)  # one of the two, either way, is fine
        assert [o.name for o in reply.outputs] == ["DETECTIONS", "NUM_DETECTIONS"]


def test_one_bad_element_fails_the_request_fast_and_its_siblings_never_reach_the_engine(served: Served) -> None:
    big = scene_jpeg(1920, 1440)  # tens of ms to decode each on the server's 2 decode threads
    ok, batched, total = served.frames("ok"), served.batched_frames(), served.frames()
    cancelled = served.frames("error", "CANCELLED")
    started = time.monotonic()
    error = refused(served.address, image_input([b"not an image"] + [big] * 7))
    answered_s = time.monotonic() - started
    assert "INVALID_ARGUMENT" in str(error.status())  # the first failure's status
    assert answered_s < 5.0
    deadline = time.monotonic() + 10
    while served.frames() < total + 8 and time.monotonic() < deadline:  # every element has its outcome
        time.sleep(0.05)
    assert served.frames() == total + 8
    # the 7 good siblings were cancelled, not run: none reached the engine (the old gather ran all 7)
    assert served.frames("ok") - ok <= 2 and served.batched_frames() - batched <= 2
    assert served.frames("error", "CANCELLED") - cancelled >= 5


def metric_sum(served: Served, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=5).read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_model_statistics_have_tritons_fields_from_the_prometheus_counters(served: Served) -> None:
    client = tc.InferenceServerClient(served.address)
    client.infer("shapes", [image_input([scene_jpeg()] * 3)])
    stats = client.get_inference_statistics("shapes", as_json=True)["model_stats"]
    assert [(m["name"], m["version"]) for m in stats] == [("shapes", "1")]
    m = stats[0]
    infer = m["inference_stats"]
    assert set(infer) >= {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output"}
    # the same series /metrics exports (read after: nothing ran in between)
    assert int(infer["success"]["count"]) == served.frames("ok")
    assert int(infer["fail"]["count"]) == served.frames("error")
    assert int(m["inference_count"]) == served.batched_frames()
    assert int(m["execution_count"]) == metric_sum(served, "trtserve_batch_size_count")
    assert int(infer["compute_infer"]["count"]) == served.frames("ok")
    assert abs(int(infer["compute_infer"]["ns"]) / 1e9 - metric_sum(
        served, "trtserve_stage_duration_seconds_sum", stage="inference")) < 1e-3
    assert sum(int(b["compute_infer"]["count"]) * int(b["batch_size"]) for b in m["batch_stats"]) == int(
        m["inference_count"])
    assert int(m["last_inference"]) > (time.time() - 600) * 1000
    every = client.get_inference_statistics(as_json=True)["model_stats"]  # no name: every model
    assert [x["name"] for x in every] == ["shapes", "shapes.raw"]
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("cars")
    assert "NOT_FOUND" in str(info.value.status())


def test_unimplemented_methods_answer_unimplemented_with_one_log_line_and_no_traceback(served: Served) -> None:
    client = tc.InferenceServerClient(served.address)
    for call in (client.get_system_shared_memory_status, client.get_cuda_shared_memory_status,
                 client.get_trace_settings, client.get_log_settings):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert "UNIMPLEMENTED" in str(info.value.status())
        assert info.value.message().startswith("inference.GRPCInferenceService/")
    with pytest.raises(InferenceServerException) as info:  # model control: served, but off by default
        client.load_model("shapes")
    assert "FAILED_PRECONDITION" in str(info.value.status()) and "model_control: true" in info.value.message()
    with pytest.raises(InferenceServerException):
        client.get_system_shared_memory_status()  # a second call: still refused, not logged again within a minute
    log = served.log.read_text()
    assert "Traceback" not in log and "NotImplementedError" not in log
    assert log.count("SystemSharedMemoryStatus from") == 1


def test_health_answers_for_the_service_names_too(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "shapes", "trtserve.v1.DetectionService", "inference.GRPCInferenceService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == (
                health_pb2.HealthCheckResponse.SERVING), service
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="cars"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
def test_reflection_is_served_as_v1_and_v1alpha(address: str, version: str) -> None:
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="grpc.reflection.v1.ServerReflection")]
        listed, described = list(call(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"trtserve.v1.DetectionService", "inference.GRPCInferenceService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # v1 can describe itself
