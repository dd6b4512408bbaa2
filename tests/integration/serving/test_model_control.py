"""Model control over a real server: reload under streaming load, failed reloads, concurrent reloads, unload/load,
KServe's RepositoryModelLoad/Unload, and the repository poll."""

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from trtserve.datasets.synthetic import video_frames
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.server import Server, ServerSettings
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ...conftest import ENGINES
from ..servers import with_server
from .test_grpc_server import raw_request

SETTINGS = ServerSettings(grpc_port=0, metrics_port=None, model_control=True, grace_period_s=5,
                          batcher=BatcherConfig(max_batch_size=8, max_queue_delay_ms=5))


def copy_model(root: Path) -> Path:
    """A private copy of the bundled model's folder (ONNX files linked)."""
    dst = root / "shapes"
    dst.mkdir(parents=True)
    for f in (ENGINES / "shapes").iterdir():
        if f.is_file():
            if f.suffix == ".onnx":
                (dst / f.name).symlink_to(f)
            else:
                shutil.copy(f, dst / f.name)
    return dst


async def serving(tmp_path: Path, test: Callable[[Server, grpc.aio.Channel], Awaitable[None]],
                  settings: ServerSettings = SETTINGS) -> None:
    copy_model(tmp_path / "engines")
    await with_server(settings, ModelRepository(tmp_path / "engines"), test)


def test_a_reload_under_streaming_load_answers_every_frame_once_and_switches_version(tmp_path: Path) -> None:
    frames = [s.image_bgr for s in video_frames(40)]
    per_stream, streams = 60, 3

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        old = server.pipelines["shapes"]
        started = asyncio.Event()

        async def requests(cam: str) -> AsyncIterator[pb.DetectRequest]:
            for i in range(per_stream):
                if i == 10:
                    started.set()
                yield raw_request(frames[i % len(frames)], cam, i)
                await asyncio.sleep(0.01)

        async def stream(cam: str) -> list[pb.DetectResponse]:
            return [a async for a in stub.StreamDetect(requests(cam))]

        calls = [asyncio.ensure_future(stream(f"cam-{k}")) for k in range(streams)]
        await started.wait()
        reply = await stub.ReloadModel(pb.ModelControlRequest(name="shapes"))
        answers = await asyncio.gather(*calls)
        assert reply.version == 2 and reply.state == pb.MODEL_STATE_READY, reply
        assert "version 2 serving" in reply.message
        assert server.pipelines["shapes"] is not old
        for k, got in enumerate(answers):
            assert [a.sequence for a in got] == list(range(per_stream)), f"cam-{k}"
            assert {a.status for a in got} == {pb.STATUS_OK}, [a.reason for a in got if a.reason][:3]
        info = await stub.GetModel(pb.GetModelRequest(name="shapes"))
        assert info.version == 2 and info.last_control_error == ""
        assert old.batcher.stats.items > 0 and server.pipelines["shapes"].batcher.stats.items > 0

    asyncio.run(serving(tmp_path, test))


def test_failed_unknown_and_concurrent_reloads_leave_the_old_version_serving(tmp_path: Path) -> None:
    frame = next(iter(video_frames(1))).image_bgr

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        yaml_path = tmp_path / "engines" / "shapes" / "model.yaml"
        good = yaml_path.read_text()
        yaml_path.write_text(good.replace("head:", "head:\n  type: yolov99\n", 1) if "type:" not in good
                             else good.replace("type: yolov8", "type: yolov99"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReloadModel(pb.ModelControlRequest(name="shapes"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "version 1 keeps serving" in (info.value.details() or "") and "yolov99" in (info.value.details() or "")
        assert (await stub.Detect(raw_request(frame, "cam", 0))).status == pb.STATUS_OK
        model = await stub.GetModel(pb.GetModelRequest(name="shapes"))
        assert model.version == 1 and "yolov99" in model.last_control_error

        yaml_path.write_text(good)
        onnx = tmp_path / "engines" / "shapes" / "model.onnx"
        target = onnx.resolve()
        onnx.unlink()
        onnx.write_bytes(b"not an onnx model")  # a broken model file
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReloadModel(pb.ModelControlRequest(name="shapes"))
        assert "version 1 keeps serving" in (info.value.details() or ""), info.value.details()
        assert (await stub.Detect(raw_request(frame, "cam", 0))).status == pb.STATUS_OK
        onnx.unlink()
        onnx.symlink_to(target)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LoadModel(pb.ModelControlRequest(name="cars"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "cars" in (info.value.details() or "")

        results = await asyncio.gather(stub.ReloadModel(pb.ModelControlRequest(name="shapes")),
                                       stub.ReloadModel(pb.ModelControlRequest(name="shapes")),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        done = [r for r in results if not isinstance(r, BaseException)]
        assert len(done) == 1 and len(refused) == 1, results
        assert refused[0].code() == grpc.StatusCode.ABORTED and "already running" in (refused[0].details() or "")
        assert done[0].version == 2
        assert (await stub.Detect(raw_request(frame, "cam", 1))).status == pb.STATUS_OK

    asyncio.run(serving(tmp_path, test))


def test_unload_then_load_and_kserve_repository_calls_and_control_off(tmp_path: Path) -> None:
    frame = next(iter(video_frames(1))).image_bgr

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        kserve = kpb_grpc.GRPCInferenceServiceStub(channel)
        reply = await stub.UnloadModel(pb.ModelControlRequest(name="shapes"))
        assert reply.state == pb.MODEL_STATE_UNAVAILABLE and "shapes" not in server.pipelines
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Detect(raw_request(frame, "cam", 0))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReloadModel(pb.ModelControlRequest(name="shapes"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "load it instead" in (info.value.details() or "")
        await kserve.RepositoryModelLoad(kpb.RepositoryModelLoadRequest(model_name="shapes"))
        assert (await stub.Detect(raw_request(frame, "cam", 1))).status == pb.STATUS_OK
        assert (await stub.GetModel(pb.GetModelRequest(name="shapes"))).version == 2
        await kserve.RepositoryModelUnload(kpb.RepositoryModelUnloadRequest(model_name="shapes"))
        assert not (await kserve.ModelReady(kpb.ModelReadyRequest(name="shapes"))).ready

    asyncio.run(serving(tmp_path, test))

    async def off(server: Server, channel: grpc.aio.Channel) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.DetectionServiceStub(channel).ReloadModel(pb.ModelControlRequest(name="shapes"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "model_control: true" in (info.value.details() or "")

    asyncio.run(serving(tmp_path / "off", off, replace(SETTINGS, model_control=False)))


def test_the_repository_poll_reloads_a_model_whose_files_changed(tmp_path: Path) -> None:
    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        yaml_path = tmp_path / "engines" / "shapes" / "model.yaml"
        await asyncio.sleep(0.5)
        assert (await stub.GetModel(pb.GetModelRequest(name="shapes"))).version == 1  # nothing changed
        yaml_path.write_text(yaml_path.read_text() + "\n# edited\n")
        os.utime(yaml_path, ns=(time.time_ns(), time.time_ns()))
        for _ in range(100):
            if (await stub.GetModel(pb.GetModelRequest(name="shapes"))).version == 2:
                break
            await asyncio.sleep(0.1)
        assert (await stub.GetModel(pb.GetModelRequest(name="shapes"))).version == 2
        await asyncio.sleep(0.6)
        assert (await stub.GetModel(pb.GetModelRequest(name="shapes"))).version == 2  # once, not per poll

    asyncio.run(serving(tmp_path, test, replace(SETTINGS, model_control=False, repository_poll_s=0.15)))


def _series(server: Server, family: str) -> list[dict[str, str]]:
    return [s.labels for f in server.metrics.registry.collect() if f.name == family for s in f.samples]


def test_unknown_and_path_like_model_names_are_refused_before_any_state_or_metric(tmp_path: Path) -> None:
    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        kserve = kpb_grpc.GRPCInferenceServiceStub(channel)
        hostile = ["x" * 20_000, "../x", "../engines/shapes", "shapes/", "/etc"]
        for name in hostile:
            for call in (lambda n: stub.LoadModel(pb.ModelControlRequest(name=n)),
                         lambda n: kserve.RepositoryModelLoad(kpb.RepositoryModelLoadRequest(model_name=n)),
                         lambda n: stub.ReloadModel(pb.ModelControlRequest(name=n)),
                         lambda n: stub.UnloadModel(pb.ModelControlRequest(name=n)),
                         lambda n: kserve.RepositoryModelUnload(kpb.RepositoryModelUnloadRequest(model_name=n))):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(name)
                details = info.value.details() or ""
                assert info.value.code() == grpc.StatusCode.NOT_FOUND, (name[:20], details)
                assert len(details) < 400 and str(tmp_path) not in details, details
                assert "shapes" in details, details  # the models there are, so the caller can correct the name
        assert list(server.models._status) == ["shapes"]
        assert {s["model"] for s in _series(server, "trtserve_model_loads")} == {"shapes"}
        assert {s["model"] for s in _series(server, "trtserve_model_version")} == {"shapes"}
        assert (await stub.GetModel(pb.GetModelRequest(name="shapes"))).version == 1

    asyncio.run(serving(tmp_path, test))


def test_a_reload_keeps_the_model_ready_and_its_kserve_batch_statistics(tmp_path: Path) -> None:
    frame = next(iter(video_frames(1))).image_bgr

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        kserve = kpb_grpc.GRPCInferenceServiceStub(channel)

        def ready() -> list[float]:
            return [s.value for f in server.metrics.registry.collect() if f.name == "trtserve_model_ready"
                    for s in f.samples if s.labels["model"] == "shapes"]

        async def statistics() -> kpb.ModelStatistics:
            reply = await kserve.ModelStatistics(kpb.ModelStatisticsRequest(name="shapes"))
            return reply.model_stats[0]

        for i in range(3):
            assert (await stub.Detect(raw_request(frame, "cam", i))).status == pb.STATUS_OK
        before = await statistics()
        assert before.execution_count == 3 and sum(b.compute_infer.count for b in before.batch_stats) == 3
        seen: list[list[float]] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                seen.append(ready())
                await asyncio.sleep(0)  # every turn of the loop: the old version's drain and close yield to it

        watcher = asyncio.ensure_future(watch())
        assert (await stub.ReloadModel(pb.ModelControlRequest(name="shapes"))).version == 2
        done.set()
        await watcher
        seen.append(ready())
        assert seen and all(values == [1.0] for values in seen), [v for v in seen if v != [1.0]][:3]
        assert (await stub.Detect(raw_request(frame, "cam", 3))).status == pb.STATUS_OK
        after = await statistics()
        assert after.execution_count == 4 and after.inference_count == 4
        assert sum(b.compute_infer.count for b in after.batch_stats) == after.execution_count, after.batch_stats
        assert after.last_inference >= before.last_inference > 0
        await stub.UnloadModel(pb.ModelControlRequest(name="shapes"))
        assert ready() == [0.0]

    asyncio.run(serving(tmp_path, test))


def test_a_reload_with_new_reservoir_settings_reconfigures_the_one_reservoir_of_its_folder(tmp_path: Path) -> None:
    from trtserve.config import ReservoirSpec

    folder = tmp_path / "reservoir"
    settings = replace(SETTINGS, calibration_reservoir=ReservoirSpec(enabled=True, max_frames=50, dir=folder))
    image = next(iter(video_frames(1))).image_bgr[:256, :256]

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        reservoir = server.models.reservoir("shapes")
        for _ in range(6):
            assert reservoir.offer(image, 0.5)
        yaml_path = tmp_path / "engines" / "shapes" / "model.yaml"
        good = yaml_path.read_text()
        yaml_path.write_text(good + "\ncalibration_reservoir:\n  max_frames: 3\n")
        assert (await stub.ReloadModel(pb.ModelControlRequest(name="shapes"))).version == 2
        assert server.models.reservoir("shapes") is reservoir  # the same object: one writer on the folder
        assert reservoir.spec.max_frames == 3 and len(reservoir) == 3
        assert len(list((folder / "shapes").glob("*.png"))) == 3

        yaml_path.write_text(good + "\ncalibration_reservoir:\n  max_frames: 1\n")
        onnx = tmp_path / "engines" / "shapes" / "model.onnx"
        target = onnx.resolve()
        onnx.unlink()
        onnx.write_bytes(b"not an onnx model")  # the reload fails after its reservoir was asked for
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ReloadModel(pb.ModelControlRequest(name="shapes"))
        assert server.models.reservoir("shapes") is reservoir
        assert reservoir.spec.max_frames == 3 and len(reservoir) == 3  # the serving version's settings stand
        onnx.unlink()
        onnx.symlink_to(target)

        yaml_path.write_text(good + f"\ncalibration_reservoir:\n  dir: {tmp_path / 'elsewhere'}\n")
        assert (await stub.ReloadModel(pb.ModelControlRequest(name="shapes"))).version == 3
        moved = server.models.reservoir("shapes")
        assert moved is not reservoir and moved.directory == tmp_path / "elsewhere" / "shapes"

    asyncio.run(serving(tmp_path, test, settings))
