"""Faults a hostile or broken client causes, against a real server on the bundled model (issue 13).

Each test reproduces one defect the probe found: work done before admission, a stream ended by one bad message
with earlier frames unanswered, a drain that keeps reading, a second server sharing the port, an unbounded echo.
"""

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from trtserve.datasets.synthetic import video_frames
from trtserve.detector import Detector
from trtserve.errors import ConfigError, QueueFullError
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig, Pipeline
from trtserve.serving.server import Server, ServerSettings
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ...conftest import ENGINES
from ..servers import with_server
from .test_grpc_server import jpeg_request, raw_request

STREAM = "/trtserve.v1.DetectionService/StreamDetect"
DETECT = "/trtserve.v1.DetectionService/Detect"


async def serving(test, **settings) -> None:  # type: ignore[no-untyped-def]
    config = {"grpc_port": 0, "metrics_port": None, "batcher": BatcherConfig(max_batch_size=8, max_queue_delay_ms=5),
              **settings}
    await with_server(ServerSettings(**config), ModelRepository(ENGINES), lambda server, channel: test(channel, server))


def _blocked_pool() -> tuple[ThreadPoolExecutor, threading.Event]:
    """A one-thread decode pool whose thread is held until the event is set: every decode waits."""
    pool, release = ThreadPoolExecutor(1), threading.Event()
    pool.submit(release.wait)
    return pool, release


def test_a_full_pipeline_refuses_at_once_before_decoding(shapes: Detector) -> None:
    frame = jpeg_request(next(iter(video_frames(1))).image_bgr, "cam", 0).image.encoded

    async def main() -> None:
        pool, release = _blocked_pool()
        pipeline = Pipeline(shapes, pool, BatcherConfig(max_batch_size=4, max_queue_size=2))
        await pipeline.start()
        try:
            admitted = [asyncio.create_task(pipeline.detect(frame)) for _ in range(2)]
            await asyncio.sleep(0.05)
            assert pipeline.admitted == 2  # both wait for the decode pool
            # the third is refused without waiting for a decode (the pool is held: waiting would time out)
            with pytest.raises(QueueFullError, match="max_queue_size"):
                await asyncio.wait_for(pipeline.detect(frame), 0.5)
            release.set()
            outcomes = await asyncio.gather(*admitted)
            assert all(len(o.detections) > 0 for o in outcomes)
            assert pipeline.admitted == 0
        finally:
            release.set()
            await pipeline.stop()
            pool.shutdown()

    asyncio.run(main())


def test_the_engine_never_waits_behind_decoding(shapes: Detector) -> None:
    scene = next(iter(video_frames(1))).image_bgr
    image, geometry = shapes.prepare_letterboxed(scene)

    async def main() -> None:
        from trtserve.serving.pipeline import _Job

        pool, release = _blocked_pool()
        pipeline = Pipeline(shapes, pool, BatcherConfig(max_batch_size=4))
        await pipeline.start()
        try:
            # a frame already letterboxed reaches the engine although every decode thread is busy
            job = _Job(image, geometry, shapes.thresholds, asyncio.get_running_loop().time(), 0.0)
            done = await asyncio.wait_for(pipeline.batcher.submit(job), 10)
            assert len(done.detections) > 0
        finally:
            release.set()
            await pipeline.stop()
            pool.shutdown()

    asyncio.run(main())


def _serialized(n: int) -> list[bytes]:
    return [raw_request(f.image_bgr, "cam", i).SerializeToString() for i, f in enumerate(video_frames(n))]


@pytest.mark.parametrize("bad, code, words", [
    (b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "does not parse"),
    (b"\x0a" + b"\x80" * 3000, grpc.StatusCode.RESOURCE_EXHAUSTED, "over the server's max_message_bytes"),
])
def test_one_bad_message_ends_the_stream_after_every_earlier_frame_is_answered(
        bad: bytes, code: grpc.StatusCode, words: str, caplog: pytest.LogCaptureFixture) -> None:
    good = _serialized(3)
    limit = max(len(m) for m in good) + 64  # the good frames fit; the oversize message does not

    async def test(channel: grpc.aio.Channel, server: Server) -> None:
        call = channel.stream_stream(STREAM, request_serializer=lambda b: b,
                                     response_deserializer=pb.DetectResponse.FromString)

        async def requests() -> AsyncIterator[bytes]:
            for message in good:
                yield message
            yield bad
            yield good[0]  # never read: the call ends at the bad message

        answers: list[pb.DetectResponse] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for answer in call(requests()):
                answers.append(answer)
        assert [a.sequence for a in answers] == [0, 1, 2]
        assert all(a.status == pb.STATUS_OK for a in answers)
        assert info.value.code() == code
        assert "message 4 of this call" in info.value.details() and words in info.value.details()
        # the server goes on serving the same connection
        frame = next(iter(video_frames(1))).image_bgr
        ok = await pb_grpc.DetectionServiceStub(channel).Detect(raw_request(frame, "c", 0))
        assert ok.status == pb.STATUS_OK

    if len(bad) > 1024:
        bad = bad + b"\x00" * (limit - len(bad) + 10)
    with caplog.at_level(logging.WARNING):
        asyncio.run(serving(test, max_message_bytes=max(limit, 1024)))
    assert not any(r.exc_info for r in caplog.records), "a bad message must not log a traceback"


def test_garbage_unary_calls_are_refused_and_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    async def test(channel: grpc.aio.Channel, server: Server) -> None:
        detect = channel.unary_unary(DETECT, request_serializer=lambda b: b,
                                     response_deserializer=pb.DetectResponse.FromString)
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await detect(b"\xff\xff\xff\xff")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Traceback" not in (info.value.details() or "")

    with caplog.at_level(logging.WARNING):
        asyncio.run(serving(test))
    lines = [r for r in caplog.records if "does not parse" in r.getMessage()]
    assert len(lines) == 1  # one line per fault class per interval, not one per message
    assert not any(r.exc_info for r in caplog.records)


def test_drain_stops_reading_answers_what_was_read_and_ends_streams_unavailable() -> None:
    frames = [f.image_bgr for f in video_frames(8)]

    async def test(channel: grpc.aio.Channel, server: Server) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)

        async def endless() -> AsyncIterator[pb.DetectRequest]:
            i = 0
            while True:  # a camera that never stops
                yield raw_request(frames[i % len(frames)], "cam", i)
                i += 1
                await asyncio.sleep(0.005)

        answers: list[pb.DetectResponse] = []
        call = stub.StreamDetect(endless())
        stopping: asyncio.Task[None] | None = None
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for answer in call:
                answers.append(answer)
                if len(answers) == 20 and stopping is None:
                    stopping = asyncio.create_task(server.stop())  # what SIGTERM does
        assert stopping is not None
        await stopping
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        details = info.value.details()
        assert "shutting down" in details
        read = int(details.split(": the ")[1].split(" messages read")[0])
        assert len(answers) == read >= 20  # every frame read was answered, none lost
        assert [a.sequence for a in answers] == list(range(read))
        assert all(a.status == pb.STATUS_OK for a in answers)

    async def main() -> None:
        server = Server(ServerSettings(grpc_port=0, metrics_port=None, grace_period_s=10), ModelRepository(ENGINES))
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await asyncio.wait_for(test(channel, server), 30)

    asyncio.run(main())


def test_a_second_server_on_a_served_port_refuses_to_start() -> None:
    async def test(channel: grpc.aio.Channel, server: Server) -> None:
        second = Server(ServerSettings(grpc_port=server.port, metrics_port=None), ModelRepository(ENGINES))
        with pytest.raises(ConfigError, match=f"127.0.0.1:{server.port}.*in use"):
            await second.start()

    asyncio.run(serving(test))


def test_a_huge_model_name_is_not_echoed_whole() -> None:
    async def test(channel: grpc.aio.Channel, server: Server) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetModel(pb.GetModelRequest(name="m" * 20_000))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # not RESOURCE_EXHAUSTED from an oversize trailer
        assert len(info.value.details()) < 300 and "…" in info.value.details()
        request = raw_request(next(iter(video_frames(1))).image_bgr, "cam", 0)
        request.model = "x" * 20_000
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Detect(request)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and len(info.value.details()) < 300

    asyncio.run(serving(test))


def test_a_start_that_fails_after_grpc_listens_leaves_nothing_listening() -> None:
    """The HTTP port taken: the start fails with the port named, and the gRPC port it had bound is free again."""
    import socket

    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            http_port = taken.getsockname()[1]
            server = Server(ServerSettings(grpc_port=0, metrics_port=None, http_port=http_port),
                            ModelRepository(ENGINES))
            with pytest.raises(ConfigError, match=str(http_port)):
                await server.start()
            grpc_port = server.port
        assert grpc_port
        with socket.socket() as probe:  # nothing answers on the gRPC port any more
            assert probe.connect_ex(("127.0.0.1", grpc_port)) != 0

    asyncio.run(main())
