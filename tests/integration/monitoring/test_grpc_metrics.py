"""Call metrics on a real server: per model for the inference APIs, the gRPC convention for every service, deadline
expiries counted as DEADLINE_EXCEEDED, and no ``_created`` series."""

from __future__ import annotations

import asyncio
import urllib.request

import cv2
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from trtserve.datasets.synthetic import video_frames
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.server import Server, ServerSettings
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ...conftest import ENGINES
from ..servers import with_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DETECT = "/trtserve.v1.DetectionService/Detect"


def scrape(port: int) -> tuple[str, Samples]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return text, {(s.name, frozenset(s.labels.items())): s.value
                  for family in text_string_to_metric_families(text) for s in family.samples}


def series(samples: Samples, name: str, **labels: str) -> list[float]:
    return [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]


def run(settings: ServerSettings, test) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(with_server(settings, ModelRepository(ENGINES), test))


FRAME = cv2.imencode(".jpg", next(iter(video_frames(1))).image_bgr)[1].tobytes()


def test_inference_calls_by_model_probes_apart_and_no_created_series() -> None:
    settings = ServerSettings(grpc_port=0, metrics_port=0, batcher=BatcherConfig(max_batch_size=8,
                                                                                 max_queue_delay_ms=1))

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(3):
            await health.Check(health_pb2.HealthCheckRequest(service=""))
        await stub.Detect(pb.DetectRequest(image=pb.Image(encoded=FRAME)))  # the default model
        await stub.Detect(pb.DetectRequest(model="shapes", image=pb.Image(encoded=FRAME)))
        for bogus in ("nope", "x" * 500):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Detect(pb.DetectRequest(model=bogus, image=pb.Image(encoded=FRAME)))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        async def frames():  # type: ignore[no-untyped-def]
            for i in range(3):
                yield pb.DetectRequest(model="shapes", stream_id="cam", sequence=i, image=pb.Image(encoded=FRAME))

        assert len([a async for a in stub.StreamDetect(frames())]) == 3
        text, m = scrape(server.metrics_port or 0)

        assert series(m, "trtserve_requests_total", model="shapes", method=DETECT, code="OK") == [2]
        assert series(m, "trtserve_requests_total", model="", method=DETECT, code="NOT_FOUND") == [2]
        assert series(m, "trtserve_requests_total", model="shapes",
                      method="/trtserve.v1.DetectionService/StreamDetect", code="OK") == [1]
        models = {dict(ls)["model"] for (n, ls) in m if n == "trtserve_requests_total"}
        assert models == {"shapes", ""}  # a client's model name never becomes a label value
        assert not [ls for (n, ls) in m if n == "trtserve_requests_total" and "grpc.health" in dict(ls)["method"]]
        assert not [ls for (n, ls) in m if n == "trtserve_active_streams" and "grpc." in dict(ls)["method"]]

        # the go-grpc-prometheus convention, every service
        check = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
        assert series(m, "grpc_server_started_total", **check) == [3]
        assert series(m, "grpc_server_handled_total", grpc_code="OK", **check) == [3]
        detect = {"grpc_type": "unary", "grpc_service": "trtserve.v1.DetectionService", "grpc_method": "Detect"}
        assert series(m, "grpc_server_handled_total", grpc_code="NotFound", **detect) == [2]
        assert series(m, "grpc_server_started_total", grpc_type="bidi_stream", grpc_method="StreamDetect") == [1]

        assert "_created" not in text, [line for line in text.splitlines() if "_created" in line][:3]

    run(settings, test)


def test_a_deadline_that_expires_in_the_queue_is_counted_deadline_exceeded() -> None:
    # the batcher holds a lone frame for 1.5 s; the client's deadline is 0.3 s
    settings = ServerSettings(grpc_port=0, metrics_port=0, batcher=BatcherConfig(max_batch_size=8,
                                                                                 max_queue_delay_ms=1500))

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Detect(pb.DetectRequest(image=pb.Image(encoded=FRAME)), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(1.8)  # the batch releases the (abandoned) frame; counters settle

        _, m = scrape(server.metrics_port or 0)
        assert series(m, "trtserve_requests_total", model="shapes", method=DETECT, code="DEADLINE_EXCEEDED") == [1]
        assert series(m, "trtserve_requests_total", code="CANCELLED") == []
        assert series(m, "grpc_server_handled_total", grpc_method="Detect", grpc_code="DeadlineExceeded") == [1]
        assert series(m, "trtserve_frames_total", outcome="error", code="DEADLINE_EXCEEDED") == [1]
        assert series(m, "trtserve_frames_total", outcome="error", code="CANCELLED") == []

    run(settings, test)
