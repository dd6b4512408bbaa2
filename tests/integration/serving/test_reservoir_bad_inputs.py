"""The calibration reservoir's bad inputs on a real server: a folder that cannot be written refuses the start, naming
it (and nothing stays bound); a reload whose model.yaml moves the reservoir to such a folder is refused and the
serving version keeps serving, with its reservoir."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import pytest

from trtserve.config import DriftSpec, ReservoirSpec
from trtserve.datasets.synthetic import video_frames
from trtserve.errors import ConfigError
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.server import Server, ServerSettings
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ..servers import with_server
from .test_grpc_server import raw_request
from .test_model_control import copy_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unwritable_reservoir_folder_refuses_the_start_naming_it(tmp_path: Path) -> None:
    copy_model(tmp_path / "engines")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    port = _free_port()
    settings = ServerSettings(grpc_port=port, metrics_port=None, drift=DriftSpec(enabled=True, sample_rate=0.5),
                              calibration_reservoir=ReservoirSpec(enabled=True, dir=blocked))

    async def start() -> None:
        await Server(settings, ModelRepository(tmp_path / "engines")).start()

    with pytest.raises(ConfigError, match=rf"folder {blocked / 'shapes'} is not writable.*calibration_reservoir\.dir"):
        asyncio.run(start())
    with socket.socket() as s:  # the failed start bound nothing that stays
        s.bind(("127.0.0.1", port))


def test_a_reload_onto_an_unwritable_reservoir_keeps_the_old_version_and_its_reservoir(tmp_path: Path) -> None:
    folder = copy_model(tmp_path / "engines")
    good_dir = tmp_path / "reservoir"
    settings = ServerSettings(grpc_port=0, metrics_port=None, model_control=True, grace_period_s=5,
                              batcher=BatcherConfig(max_batch_size=4, max_queue_delay_ms=5),
                              drift=DriftSpec(enabled=True, sample_rate=1.0, min_window_frames=1),
                              calibration_reservoir=ReservoirSpec(enabled=True, dir=good_dir))
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder would be")
    frame = next(iter(video_frames(1))).image_bgr

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.DetectionServiceStub(channel)
        before = server.models.reservoir("shapes")
        yaml_path = folder / "model.yaml"
        yaml_path.write_text(yaml_path.read_text() + f"\ncalibration_reservoir: {{dir: {blocked}}}\n")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReloadModel(pb.ModelControlRequest(name="shapes"))
        details = info.value.details() or ""
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, details
        assert "version 1 keeps serving" in details and f"{blocked / 'shapes'} is not writable" in details
        assert server.models.reservoir("shapes") is before and before.directory == good_dir / "shapes"
        assert (await stub.Detect(raw_request(frame, "cam", 0))).status == pb.STATUS_OK

    asyncio.run(with_server(settings, ModelRepository(tmp_path / "engines"), test))
