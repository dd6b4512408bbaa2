"""A reload on a TensorRT host rebuilds the engine before the swap (TensorRT and CUDA contract doubles, real server).

``trtserve recalibrate`` promotes a new INT8 Q/DQ model (or calibration cache) into the model's folder and asks the
server to reload. On a ``backend: tensorrt`` model no engine then fits the new sources: the server builds one on
this host, with the settings of the engine it replaces, while the old version serves on, and switches only once
the new engine is loaded and warmed. A build that fails leaves the old version serving, with TensorRT's reason in
the reload's error and in GetModel's ``last_control_error``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import onnx
import pytest
from onnx import helper, numpy_helper

from trtserve.datasets.synthetic import video_frames
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.server import Server, ServerSettings
from trtserve.tensorrt import builder
from trtserve.tensorrt.keys import BuildSettings, records, sha256_of
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ...doubles.gpu_host import install
from ..servers import with_server
from .test_grpc_server import raw_request
from .test_model_control import copy_model

SETTINGS = ServerSettings(grpc_port=0, metrics_port=None, model_control=True, grace_period_s=5, precision="int8",
                          batcher=BatcherConfig(max_batch_size=4, max_queue_delay_ms=5))


def _tensorrt_model(root: Path) -> Path:
    folder = copy_model(root / "engines")
    yaml_path = folder / "model.yaml"
    yaml_path.write_text(yaml_path.read_text() + "\nbackend: tensorrt\n")
    return folder


def _recalibrated(qdq: Path, factor: float) -> None:
    """Replace the Q/DQ model (a symlink to the bundled one) by one whose first activation scale moved, as a new
    calibration writes it: a new file, atomically renamed over the old name."""
    model = onnx.load(str(qdq))
    inits = {i.name: i for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
    scale = inits[node.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * factor, scale.name))
    tmp = qdq.with_name(".new.onnx")
    onnx.save(model, str(tmp))
    os.replace(tmp, qdq)


def _unparseable(qdq: Path) -> None:
    """A Q/DQ model with a node TensorRT's parser (the double's) does not support."""
    model = onnx.load(str(qdq))
    first = model.graph.node[0].output[0]
    model.graph.node.append(helper.make_node("Einsum", [first, first], ["unused_einsum"], name="bad_einsum",
                                             equation="nchw,nchw->nchw"))
    tmp = qdq.with_name(".new.onnx")
    onnx.save(model, str(tmp))
    os.replace(tmp, qdq)


def test_a_reload_rebuilds_the_engine_before_the_swap_and_a_failed_build_keeps_the_old(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = install(monkeypatch, "10.3.0")
    folder = _tensorrt_model(tmp_path)
    repository = ModelRepository(tmp_path / "engines")
    config = repository.get("shapes")
    # the engine an operator built on this host, with settings other than the defaults (3 contexts)
    builder.build_engine(config, BuildSettings("int8", max_batch=8, opt_batch=4, execution_contexts=3))
    qdq = folder / "model.int8.tensorrt.onnx"
    frames = [s.image_bgr for s in video_frames(20)]
    real_build = builder.build_engine
    seen_during_build: list[bool] = []

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        old = server.pipelines["shapes"]
        assert old.detector.backend.name == "tensorrt"
        old_plan = old.detector.backend.model_path

        def watched_build(*args: object, **kwargs: object) -> object:  # the real build, noting who serves then
            seen_during_build.append(server.pipelines["shapes"] is old)
            return real_build(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(builder, "build_engine", watched_build)
        _recalibrated(qdq, 1.25)
        started = asyncio.Event()

        async def requests() -> AsyncIterator[pb.DetectRequest]:
            for i in range(40):
                if i == 5:
                    started.set()
                yield raw_request(frames[i % len(frames)], "cam", i)
                await asyncio.sleep(0.01)

        streaming = asyncio.ensure_future(_collect(stub.StreamDetect(requests())))
        await started.wait()
        reply = await stub.ReloadModel(pb.ModelControlRequest(name="shapes"))
        answers = await streaming
        assert reply.version == 2 and reply.state == pb.MODEL_STATE_READY, reply
        assert seen_during_build == [True]  # built once, while version 1 still served
        assert [a.sequence for a in answers] == list(range(40))
        assert {a.status for a in answers} == {pb.STATUS_OK}
        new = server.pipelines["shapes"].detector.backend
        assert new.model_path != old_plan
        fresh = {plan: record for plan, record in records(config)}[new.model_path]
        assert fresh.onnx_sha256 == sha256_of(qdq)  # keyed by the new sources
        assert (fresh.settings["max_batch"], fresh.settings["execution_contexts"]) == (8, 3)  # the old settings
        assert new.execution_contexts == 3  # type: ignore[attr-defined]
        assert (await stub.Detect(raw_request(frames[0], "cam", 99))).status == pb.STATUS_OK

        # a new model TensorRT cannot build: the reload fails, version 2 keeps serving, the status says why
        _unparseable(qdq)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReloadModel(pb.ModelControlRequest(name="shapes"))
        details = info.value.details() or ""
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, details
        assert "version 2 keeps serving" in details and "cannot parse" in details and "Einsum" in details, details
        assert server.pipelines["shapes"].detector.backend is new
        assert (await stub.Detect(raw_request(frames[1], "cam", 100))).status == pb.STATUS_OK
        model = await stub.GetModel(pb.GetModelRequest(name="shapes"))
        assert model.version == 2 and "Einsum" in model.last_control_error

    asyncio.run(with_server(SETTINGS, repository, test))
    assert host.cuda.live() == 0  # every version's buffers and streams released


async def _collect(call: AsyncIterator[pb.DetectResponse]) -> list[pb.DetectResponse]:
    return [a async for a in call]


def test_at_start_a_stale_engine_is_not_rebuilt_without_auto_build(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a reload while serving rebuilds: a server starting on changed sources says which command builds it."""
    install(monkeypatch, "10.3.0")
    folder = _tensorrt_model(tmp_path)
    repository = ModelRepository(tmp_path / "engines")
    builder.build_engine(repository.get("shapes"), BuildSettings("int8", max_batch=8, opt_batch=8))
    _recalibrated(folder / "model.int8.tensorrt.onnx", 0.8)
    from trtserve.errors import ModelLoadError

    async def start() -> None:
        await Server(SETTINGS, repository).start()

    with pytest.raises(ModelLoadError, match=r"changed since.*Build one with: trtserve build shapes --precision int8"):
        asyncio.run(start())
