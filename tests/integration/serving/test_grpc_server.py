"""A real trtserve gRPC server on a free loopback port, the bundled model, real clients."""

import asyncio
from collections.abc import AsyncIterator

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trtserve.datasets.synthetic import evaluation_set, video_frames
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.server import Server, ServerSettings
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ...conftest import ENGINES


def raw_request(image, stream: str, seq: int) -> pb.DetectRequest:  # type: ignore[no-untyped-def]
    h, w = image.shape[:2]
    return pb.DetectRequest(stream_id=stream, sequence=seq, image=pb.Image(raw=pb.RawImage(
        pixels=image.tobytes(), height=h, width=w, format=pb.PIXEL_FORMAT_BGR8)))


def jpeg_request(image, stream: str, seq: int) -> pb.DetectRequest:  # type: ignore[no-untyped-def]
    data = cv2.imencode(".jpg", image)[1].tobytes()
    return pb.DetectRequest(stream_id=stream, sequence=seq, image=pb.Image(encoded=data))


async def with_server(test) -> None:  # type: ignore[no-untyped-def]
    from trtserve.repository import ModelRepository

    settings = ServerSettings(grpc_port=0, metrics_port=0,
                              batcher=BatcherConfig(max_batch_size=8, max_queue_delay_ms=5))
    server = Server(settings, ModelRepository(ENGINES))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await test(channel)
    finally:
        await server.stop()


def test_a_300_frame_stream_gets_300_answers_in_order() -> None:
    frames = [s.image_bgr for s in video_frames(300)]

    async def test(channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)

        async def requests() -> AsyncIterator[pb.DetectRequest]:
            for i, f in enumerate(frames):
                yield (raw_request if i % 2 else jpeg_request)(f, "cam-1", i)

        answers = [r async for r in stub.StreamDetect(requests())]
        assert [a.sequence for a in answers] == list(range(300))
        assert all(a.status == pb.STATUS_OK for a in answers)
        assert sum(len(a.detections) for a in answers) > 300
        assert answers[10].frame_width == 480 and answers[10].timing.total_seconds > 0

    asyncio.run(with_server(test))


def test_bad_frames_fail_alone_and_the_stream_goes_on() -> None:
    good = next(s for s in evaluation_set(20) if len(s.class_ids) >= 2).image_bgr

    async def test(channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        short = raw_request(good, "cam", 2)
        short.image.raw.pixels = short.image.raw.pixels[:-1]
        batch = [jpeg_request(good, "cam", 0), pb.DetectRequest(stream_id="cam", sequence=1,
                                                                image=pb.Image(encoded=b"\xff\xd8junk")),
                 short, pb.DetectRequest(stream_id="cam", sequence=3), raw_request(good, "cam", 4)]

        async def requests() -> AsyncIterator[pb.DetectRequest]:
            for r in batch:
                yield r

        answers = [r async for r in stub.StreamDetect(requests())]
        assert [a.status for a in answers] == [pb.STATUS_OK, pb.STATUS_ERROR, pb.STATUS_ERROR, pb.STATUS_ERROR,
                                               pb.STATUS_OK]
        assert {a.error_code for a in answers[1:4]} == {"INVALID_ARGUMENT"}
        assert "cannot decode the image" in answers[1].reason and "needs" in answers[2].reason
        assert "no image" in answers[3].reason
        assert len(answers[4].detections) >= 2

    asyncio.run(with_server(test))


def test_unary_errors_carry_status_codes_and_streams_are_batched() -> None:
    scenes = list(evaluation_set(16))

    async def test(channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Detect(pb.DetectRequest(model="cars", image=pb.Image(encoded=b"x")))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Detect(pb.DetectRequest(image=pb.Image(encoded=b"garbage")))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        answers = await asyncio.gather(*(stub.Detect(jpeg_request(s.image_bgr, f"cam-{i}", 0))
                                         for i, s in enumerate(scenes)))
        assert all(a.status == pb.STATUS_OK for a in answers)
        info_ = await stub.GetModel(pb.GetModelRequest(name="shapes"))
        assert info_.stats.mean_batch_size > 1 and info_.head == "yolov8" and info_.batcher.max_batch_size == 8
        listed = await stub.ListModels(pb.ListModelsRequest())
        assert [m.name for m in listed.models] == ["shapes"]
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "shapes"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(with_server(test))


def test_drop_oldest_keeps_the_freshest_frame_and_answers_every_frame() -> None:
    frames = [s.image_bgr for s in video_frames(120)]

    async def test(channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)

        async def requests() -> AsyncIterator[pb.DetectRequest]:
            for i, f in enumerate(frames):  # raw frames arrive much faster than the CPU model runs
                yield raw_request(f, "cam-live", i)

        call = stub.StreamDetect(requests(), metadata=(("x-trtserve-overload-policy", "drop_oldest"),))
        answers = [r async for r in call]
        assert [a.sequence for a in answers] == list(range(120))
        statuses = [a.status for a in answers]
        assert statuses.count(pb.STATUS_DROPPED) > 0 and statuses[-1] == pb.STATUS_OK
        assert set(statuses) <= {pb.STATUS_OK, pb.STATUS_DROPPED}
        async def nothing() -> AsyncIterator[pb.DetectRequest]:
            return
            yield  # an async generator that sends no frame

        bad = stub.StreamDetect(nothing(), metadata=(("x-trtserve-overload-policy", "yolo"),))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [r async for r in bad]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(with_server(test))


def test_shutdown_flips_health_first_and_finishes_in_flight_work() -> None:
    from trtserve.repository import ModelRepository

    frames = [s.image_bgr for s in video_frames(60)]

    async def main() -> None:
        server = Server(ServerSettings(grpc_port=0, metrics_port=0, grace_period_s=20), ModelRepository(ENGINES))
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="shapes"))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            stub = pb_grpc.DetectionServiceStub(channel)
            answers = await asyncio.gather(*(stub.Detect(raw_request(f, "cam", i)) for i, f in enumerate(frames[:1])))
            assert answers[0].status == pb.STATUS_OK
            in_flight = [asyncio.ensure_future(stub.Detect(raw_request(f, "cam", i))) for i, f in enumerate(frames)]
            while server.detection_service.frames_started < 1 + len(frames):  # every call has reached a handler
                await asyncio.sleep(0.01)
            stopping = asyncio.create_task(server.stop())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            results = await asyncio.gather(*in_flight, return_exceptions=True)
            await stopping
        failed = [r for r in results if isinstance(r, Exception) or r.status != pb.STATUS_OK]
        assert not failed, failed[:2]

    asyncio.run(main())


def test_a_client_that_leaves_mid_stream_frees_its_work_and_the_server_goes_on() -> None:
    from trtserve.repository import ModelRepository

    frames = [s.image_bgr for s in video_frames(40)]

    async def main() -> None:
        server = Server(ServerSettings(grpc_port=0, metrics_port=0), ModelRepository(ENGINES))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.DetectionServiceStub(channel)

                async def endless() -> AsyncIterator[pb.DetectRequest]:
                    for i in range(10_000):
                        yield raw_request(frames[i % len(frames)], "cam", i)

                call = stub.StreamDetect(endless())
                got = 0
                async for _ in call:
                    got += 1
                    if got == 5:
                        call.cancel()
                        break
                pipeline = server.pipelines["shapes"]
                for _ in range(500):  # the abandoned frames leave the queue
                    if pipeline.batcher.queue_depth == 0 and pipeline.batcher.in_flight == 0:
                        break
                    await asyncio.sleep(0.01)
                assert pipeline.batcher.queue_depth == 0 and pipeline.batcher.in_flight == 0
                started = server.detection_service.frames_started
                assert started < 100  # reading stopped with the client
                answer = await stub.Detect(raw_request(frames[0], "other", 0))
                assert answer.status == pb.STATUS_OK
                zero = pb.DetectRequest(image=pb.Image(raw=pb.RawImage(height=0, width=0,
                                                                       format=pb.PIXEL_FORMAT_BGR8)))
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Detect(zero)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in info.value.details()
        finally:
            await server.stop()

    asyncio.run(main())


def test_a_backend_failure_fails_its_batch_and_the_server_keeps_serving(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real ONNX model that ONNX Runtime can only run at batch 1 (a Reshape to a fixed [1, -1])."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from trtserve.repository import ModelRepository

    folder = tmp_path / "fragile"
    folder.mkdir()
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "shape"], ["flat"]),
         helper.make_node("ReduceMean", ["flat"], ["out"], axes=[1], keepdims=1)],
        "fragile", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
              str(folder / "model.onnx"))
    (folder / "model.yaml").write_text("name: fragile\nonnx: model.onnx\ninput: {height_px: 32, width_px: 32}\n"
                                       "head: {type: raw}\nmax_batch_size: 4\n")
    image = np.zeros((32, 32, 3), np.uint8)

    async def main() -> None:
        settings = ServerSettings(models=("fragile",), grpc_port=0, metrics_port=0,
                                  batcher=BatcherConfig(max_batch_size=4, max_queue_delay_ms=500))
        server = Server(settings, ModelRepository(tmp_path))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.DetectionServiceStub(channel)
                together = await asyncio.gather(*(stub.Detect(raw_request(image, "cam", i)) for i in range(4)),
                                                return_exceptions=True)
                assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.INTERNAL
                           for r in together)
                alone = await stub.Detect(raw_request(image, "cam", 9))
                assert alone.status == pb.STATUS_OK
        finally:
            await server.stop()

    asyncio.run(main())


@pytest.mark.parametrize("policy", ["block", "drop_oldest"])
def test_an_unexpected_failure_is_answered_internal_and_the_stream_goes_on(
        policy: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A bug in the serving path (not a frame's own error) must not hang or end the stream, and the client is told
    only that it was internal, with an incident id that finds the traceback in the server's log."""
    from trtserve.serving.pipeline import Pipeline

    frames = [s.image_bgr for s in video_frames(6)]
    real_detect = Pipeline.detect

    async def flaky(self, frame, thresholds=None, deadline_s=None):  # type: ignore[no-untyped-def]
        if frame.shape[1] == 479:  # the frames cut one column short stand in for a bug
            raise RuntimeError("a bug")
        return await real_detect(self, frame, thresholds, deadline_s)

    monkeypatch.setattr(Pipeline, "detect", flaky)

    async def test(channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)

        async def requests() -> AsyncIterator[pb.DetectRequest]:
            for i, f in enumerate(frames):
                yield raw_request(f[:, :479].copy() if i % 3 == 1 else f, "cam", i)

        call = stub.StreamDetect(requests(), metadata=(("x-trtserve-overload-policy", policy),))
        answers = await asyncio.wait_for(asyncio.gather(*[_collect(call)]), 60)
        statuses = [(a.sequence, a.status, a.error_code) for a in answers[0]]
        assert [s[0] for s in statuses] == list(range(6))
        for seq, status, code in statuses:
            assert (status, code) == ((pb.STATUS_ERROR, "INTERNAL") if seq % 3 == 1 else (pb.STATUS_OK, ""))
        reason = answers[0][1].reason
        assert reason.startswith("internal error (incident ")
        assert "RuntimeError" not in reason and "a bug" not in reason
        incident = reason.split("incident ")[1].split(";")[0]
        assert any(incident in r.getMessage() and r.exc_info for r in caplog.records)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Detect(raw_request(frames[0][:, :479].copy(), "one", 0))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "a bug" not in (info.value.details() or "")

    asyncio.run(with_server(test))


async def _collect(call) -> list:  # type: ignore[no-untyped-def]
    return [a async for a in call]


def test_the_asyncio_client_streams_frames_beside_their_answers() -> None:
    from trtserve.client import AsyncDetectionClient, detections_of
    from trtserve.repository import ModelRepository

    scenes = list(evaluation_set(12))

    async def main() -> None:
        server = Server(ServerSettings(grpc_port=0, metrics_port=None), ModelRepository(ENGINES))
        await server.start()
        try:
            async with AsyncDetectionClient(f"127.0.0.1:{server.port}", "shapes") as client:
                async def images() -> AsyncIterator:  # type: ignore[type-arg]
                    for s in scenes:
                        yield s.image_bgr

                pairs = [p async for p in client.stream_frames(images(), "cam-async")]
                assert [a.sequence for _, a in pairs] == list(range(12))
                assert all(a.status == pb.STATUS_OK and a.stream_id == "cam-async" for _, a in pairs)
                assert all(f is s.image_bgr for (f, _), s in zip(pairs, scenes))
                single = await client.detect(scenes[3].image_bgr)
                np.testing.assert_allclose(detections_of(single).boxes_xyxy,
                                           detections_of(pairs[3][1]).boxes_xyxy, atol=1e-3)
        finally:
            await server.stop()

    asyncio.run(main())


def test_per_request_thresholds_apply_and_out_of_range_ones_are_refused() -> None:
    scene = next(s for s in evaluation_set(20) if len(s.class_ids) >= 3)

    async def test(channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        request = raw_request(scene.image_bgr, "cam", 0)
        everything = await stub.Detect(request)
        request.thresholds.max_detections = 1
        assert len(everything.detections) >= 3 and len((await stub.Detect(request)).detections) == 1
        for name, value in (("score", 1.5), ("iou", -0.2)):
            bad = raw_request(scene.image_bgr, "cam", 1)
            setattr(bad.thresholds, name, value)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Detect(bad)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"thresholds.{name} is" in info.value.details() and "expected 0..1" in info.value.details()

    asyncio.run(with_server(test))
