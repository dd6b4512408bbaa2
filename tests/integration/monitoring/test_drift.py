"""Drift monitoring end to end: a real server serving INT8 with an FP32 shadow, read off /metrics over HTTP."""

import asyncio
import os
import shutil
import signal
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import cv2
import grpc
import numpy as np
import onnx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from trtserve.config import DriftSpec
from trtserve.datasets.synthetic import video_frames
from trtserve.errors import ModelLoadError
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.server import Server, ServerSettings
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ...conftest import ENGINES
from ..servers import with_server

SHADOW_ALL = DriftSpec(enabled=True, sample_rate=1.0, max_pending=64, min_window_frames=16, agreement_threshold=0.9)


def copy_model(tmp_path: Path) -> Path:
    """A private copy of the bundled model folder (the FP32 ONNX linked, not copied)."""
    src = ENGINES / "shapes"
    dst = tmp_path / "engines" / "shapes"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix in (".yaml", ".cache", ".json") or f.name == "model.int8.onnx":
            shutil.copy(f, dst / f.name)
        elif f.suffix == ".onnx":
            (dst / f.name).symlink_to(f)
    return dst


def shrink_calibration(model_path: Path, factor: float) -> None:
    """Scale every activation range of a Q/DQ model by ``factor`` (< 1: activations saturate)."""
    model = onnx.load(str(model_path))
    inits = {i.name: i for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    scaled: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[0] not in graph_inputs \
                and node.input[1] not in scaled:
            scale = inits[node.input[1]]
            scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name))
            scaled.add(node.input[1])
    assert scaled, "no activation ranges found"
    onnx.save(model, str(model_path))


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{name}{labels}: {len(found)} series"
    return found[0]


async def serve(repository: ModelRepository, drift: DriftSpec,
                test: Callable[[Server, grpc.aio.Channel], Awaitable[None]]) -> None:
    settings = ServerSettings(grpc_port=0, metrics_port=0, precision="int8", drift=drift,
                              batcher=BatcherConfig(max_batch_size=8, max_queue_delay_ms=5))
    await with_server(settings, repository, test)


async def stream(channel: grpc.aio.Channel, frames: list[bytes]) -> list[pb.DetectResponse]:
    stub = pb_grpc.DetectionServiceStub(channel)

    async def requests():  # type: ignore[no-untyped-def]
        for i, data in enumerate(frames):
            yield pb.DetectRequest(stream_id="cam", sequence=i, image=pb.Image(encoded=data))

    return [a async for a in stub.StreamDetect(requests())]


FRAMES = [cv2.imencode(".jpg", s.image_bgr)[1].tobytes() for s in video_frames(48)]


def test_int8_agrees_with_its_fp32_shadow_on_the_metrics_endpoint() -> None:
    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        answers = await stream(channel, FRAMES)
        assert all(a.status == pb.STATUS_OK for a in answers) and len(answers) == len(FRAMES)
        monitor = server.pipelines["shapes"].drift
        assert monitor is not None and monitor.wait_idle()
        m = scrape(server.metrics_port or 0)
        labels = {"model": "shapes", "precision": "int8"}
        assert value(m, "trtserve_drift_samples_total", **labels) == len(FRAMES)
        assert value(m, "trtserve_drift_window_agreement_f1", **labels) >= 0.95
        assert value(m, "trtserve_drift_agreement_f1_count", **labels) == len(FRAMES)
        assert value(m, "trtserve_calibration_out_of_range_ratio_count", tensor="all", **labels) == len(FRAMES)
        normal_coverage = value(m, "trtserve_calibration_out_of_range_ratio_sum", tensor="all", **labels) / len(FRAMES)
        assert normal_coverage < 0.005
        assert value(m, "trtserve_frames_total", outcome="ok", **labels) == len(FRAMES)
        assert value(m, "trtserve_stage_duration_seconds_count", stage="inference", **labels) == len(FRAMES)
        assert value(m, "trtserve_model_ready", **labels) == 1
        assert value(m, "trtserve_requests_total", method="/trtserve.v1.DetectionService/StreamDetect",
                     code="OK") == 1
        info = await pb_grpc.DetectionServiceStub(channel).GetModel(pb.GetModelRequest(name="shapes"))
        assert info.drift.samples == len(FRAMES) and info.drift.agreement_f1 >= 0.95
        # the engine calls' CPU: counted, the same in GetModel and Prometheus, part of the process's (the shadow
        # runs in a process of its own)
        engine_cpu = value(m, "trtserve_engine_cpu_seconds_total", **labels)
        assert 0 < engine_cpu <= value(m, "process_cpu_seconds_total")
        assert info.stats.engine_cpu_seconds == pytest.approx(engine_cpu)
        assert not info.drift.below_threshold and info.drift.ranges_source == "model.int8.onnx"

    asyncio.run(serve(ModelRepository(ENGINES), SHADOW_ALL, test))


def test_a_broken_calibration_is_detected_and_flips_health(tmp_path: Path) -> None:
    folder = copy_model(tmp_path)
    shrink_calibration(folder / "model.int8.onnx", 0.25)
    drift = DriftSpec(**{**SHADOW_ALL.__dict__, "unhealthy_below_threshold": True})

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        answers = await stream(channel, FRAMES)
        assert all(a.status == pb.STATUS_OK for a in answers)  # serving goes on; the monitor only reports
        monitor = server.pipelines["shapes"].drift
        assert monitor is not None and monitor.wait_idle()
        m = scrape(server.metrics_port or 0)
        labels = {"model": "shapes", "precision": "int8"}
        assert value(m, "trtserve_drift_window_agreement_f1", **labels) < 0.9
        coverage = value(m, "trtserve_calibration_out_of_range_ratio_sum", tensor="all", **labels) / len(FRAMES)
        assert coverage > 0.02  # activations saturate: far outside the (shrunk) calibrated ranges
        assert value(m, "trtserve_drift_missed_detections_total", **labels) > 10
        info = await pb_grpc.DetectionServiceStub(channel).GetModel(pb.GetModelRequest(name="shapes"))
        assert info.drift.below_threshold
        await asyncio.sleep(0.2)  # the verdict reaches the health servicer through the event loop
        health = health_pb2_grpc.HealthStub(channel)
        status = (await health.Check(health_pb2.HealthCheckRequest(service="shapes"))).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING

    asyncio.run(serve(ModelRepository(tmp_path / "engines"), drift, test))


def test_a_shadow_of_another_shape_refuses_to_start(tmp_path: Path) -> None:
    folder = copy_model(tmp_path)
    (folder / "model.onnx").unlink()
    x = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", 3, 256, 256])
    y = onnx.helper.make_tensor_value_info("output0", onnx.TensorProto.FLOAT, ["N", 3, 256])
    node = onnx.helper.make_node("ReduceMean", ["images"], ["output0"], axes=[3], keepdims=0)
    other = onnx.helper.make_model(onnx.helper.make_graph([node], "other", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(other, str(folder / "model.onnx"))
    settings = ServerSettings(grpc_port=0, metrics_port=0, precision="int8", drift=SHADOW_ALL)
    with pytest.raises(ModelLoadError, match=r"the drift shadow model.onnx does not match the served model "
                                             r"model.int8.onnx: outputs \['output0\[None, 3, 256\]'\] vs "
                                             r"\['output0\[None, 10, 1344\]'\]"):
        asyncio.run(Server(settings, ModelRepository(tmp_path / "engines")).start())


def test_a_killed_shadow_is_restarted_and_serving_is_unaffected() -> None:
    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        monitor = server.pipelines["shapes"].drift
        assert monitor is not None
        stub = pb_grpc.DetectionServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        labels = {"model": "shapes", "precision": "int8"}
        shadow_pid = monitor.shadow_pid
        assert shadow_pid is not None and shadow_pid != os.getpid()  # the shadow runs in a process of its own
        os.kill(shadow_pid, signal.SIGKILL)  # the shadow crashes
        assert await asyncio.to_thread(monitor.wait_shadow, False, 10)
        m = scrape(server.metrics_port or 0)
        assert value(m, "trtserve_drift_shadow_up", **labels) == 0  # the default backoff: back in 1 s at the earliest
        assert np.isnan(value(m, "trtserve_drift_window_agreement_f1", **labels))
        assert (await stub.GetModel(pb.GetModelRequest(name="shapes"))).drift.stale
        answers = await stream(channel, FRAMES[:16])
        assert [a.status for a in answers] == [pb.STATUS_OK] * 16
        status = (await health.Check(health_pb2.HealthCheckRequest(service="shapes"))).status
        assert status == health_pb2.HealthCheckResponse.SERVING  # a dead shadow is no reason to stop serving

        assert await asyncio.to_thread(monitor.wait_shadow, True, 60)
        assert monitor.shadow_pid not in (None, shadow_pid)
        answers = await stream(channel, FRAMES[:16])
        assert [a.status for a in answers] == [pb.STATUS_OK] * 16
        assert await asyncio.to_thread(monitor.wait_idle)
        m = scrape(server.metrics_port or 0)
        assert value(m, "trtserve_drift_shadow_up", **labels) == 1
        assert value(m, "trtserve_drift_shadow_restarts_total", **labels) == 1
        assert value(m, "trtserve_drift_errors_total", **labels) == 0  # dropped while down, not failed runs
        assert value(m, "trtserve_drift_window_agreement_f1", **labels) >= 0.95
        assert value(m, "trtserve_frames_total", model="shapes", outcome="ok") == 32
        drift = (await stub.GetModel(pb.GetModelRequest(name="shapes"))).drift
        assert not drift.stale and drift.shadow_restarts == 1
        assert drift.window_frames == drift.samples >= 16  # only frames the new shadow compared
        assert drift.samples + 8 * drift.skipped_shadow_down >= 32  # every sampled batch compared or counted

    asyncio.run(serve(ModelRepository(ENGINES), SHADOW_ALL, test))


def test_model_yaml_drift_block_overrides_server_defaults(tmp_path: Path) -> None:
    folder = copy_model(tmp_path)
    config = yaml.safe_load((folder / "model.yaml").read_text())
    config["drift"] = {"enabled": True, "sample_rate": 0.5, "coverage_tensors": ["no_such_tensor"]}
    (folder / "model.yaml").write_text(yaml.safe_dump(config))
    settings = ServerSettings(grpc_port=0, metrics_port=0, precision="int8")
    with pytest.raises(ModelLoadError, match=r"drift.coverage_tensors \['no_such_tensor'\] are not calibrated"):
        asyncio.run(Server(settings, ModelRepository(tmp_path / "engines")).start())


def test_shadow_rate_zero_from_the_command_line_turns_off_a_models_drift_block(tmp_path: Path) -> None:
    folder = copy_model(tmp_path)
    config = yaml.safe_load((folder / "model.yaml").read_text())
    config["drift"] = {"enabled": True, "sample_rate": 0.5}
    (folder / "model.yaml").write_text(yaml.safe_dump(config))

    async def drift_of(overrides: dict[str, float]) -> bool:
        settings = ServerSettings(grpc_port=0, metrics_port=0, precision="int8", drift_overrides=overrides)
        server = Server(settings, ModelRepository(tmp_path / "engines"))
        await server.start()
        try:
            return server.pipelines["shapes"].drift is not None
        finally:
            await server.stop()

    assert asyncio.run(drift_of({}))  # the model's own block turns it on
    assert not asyncio.run(drift_of({"sample_rate": 0.0}))  # --shadow-rate 0 wins


def test_a_raw_head_model_is_compared_tensor_to_tensor_with_configured_coverage(tmp_path: Path) -> None:
    folder = copy_model(tmp_path)
    config = yaml.safe_load((folder / "model.yaml").read_text())
    config["head"]["type"] = "raw"
    tensor = "/stem/stem.1/stem.1.1/Relu_output_0"
    config["drift"] = {"coverage_tensors": [tensor]}
    (folder / "model.yaml").write_text(yaml.safe_dump(config))

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        answers = await stream(channel, FRAMES[:16])
        assert all(a.status == pb.STATUS_OK for a in answers)
        monitor = server.pipelines["shapes"].drift
        assert monitor is not None and monitor.wait_idle()
        m = scrape(server.metrics_port or 0)
        labels = {"model": "shapes", "precision": "int8"}
        assert value(m, "trtserve_drift_output_cosine_similarity_count", **labels) == 16
        cosine = value(m, "trtserve_drift_output_cosine_similarity_sum", **labels) / 16
        rel_l2 = value(m, "trtserve_drift_output_relative_l2_sum", **labels) / 16
        assert cosine > 0.99 and 0 < rel_l2 < 0.2  # INT8 raw outputs close to FP32, not identical
        assert value(m, "trtserve_drift_agreement_f1_count", **labels) == 0  # no detections to match
        assert np.isnan(value(m, "trtserve_drift_window_agreement_f1", **labels))  # F1 only: no detections here
        # the one output's cosine, per output (test_drift_per_output.py: a model with two)
        assert value(m, "trtserve_drift_window_output_cosine_similarity", output="output0",
                     **labels) == pytest.approx(cosine, abs=1e-6)
        assert value(m, "trtserve_calibration_out_of_range_ratio_count", tensor=tensor, **labels) == 16

    asyncio.run(serve(ModelRepository(tmp_path / "engines"), SHADOW_ALL, test))
