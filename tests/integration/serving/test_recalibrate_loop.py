"""The loop over a real server: live frames fill the reservoir (drift shadow at rate 1), the reservoir is pulled
(interrupted once, then resumed), a staged calibration on it is scored and promoted, and the model is reloaded
while streams run through the swap — every frame answered exactly once, none with an error."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from trtserve.calibration.from_server import PulledFrame, promote, pull_reservoir, pulled_frames, recalibrate_staged
from trtserve.cli.remote import RemoteServer
from trtserve.config import DriftSpec, ReservoirSpec
from trtserve.datasets.synthetic import video_frames
from trtserve.errors import CalibrationInputError, RemoteCallError
from trtserve.monitoring.reservoir import Reservoir
from trtserve.repository import ModelRepository
from trtserve.serving.server import Server
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from .test_grpc_server import raw_request
from .test_model_control import SETTINGS, copy_model


def shifted(image: np.ndarray) -> np.ndarray:
    """Night and a colour cast: darker, bluer frames than the calibration set saw."""
    return np.clip(image.astype(np.float32) * np.array([0.55, 0.35, 0.3], np.float32), 0, 255).astype(np.uint8)


def test_pull_calibrate_and_reload_while_streaming(tmp_path: Path) -> None:
    frames = [shifted(s.image_bgr) for s in video_frames(48)]
    engines = tmp_path / "engines"
    model_dir = copy_model(engines)
    settings = replace(SETTINGS, precision="int8",
                       drift=DriftSpec(enabled=True, sample_rate=1.0, max_pending=64, min_window_frames=8),
                       calibration_reservoir=ReservoirSpec(enabled=True, max_frames=40, dir=tmp_path / "reservoir"))

    async def main() -> None:
        server = Server(settings, ModelRepository(engines))
        await server.start()
        address = f"127.0.0.1:{server.port}"
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.DetectionServiceStub(channel)

                async def burst(cam: str, n: int, gap_s: float = 0.0) -> list[pb.DetectResponse]:
                    async def requests() -> AsyncIterator[pb.DetectRequest]:
                        for i in range(n):
                            yield raw_request(frames[i % len(frames)], cam, i)
                            await asyncio.sleep(gap_s)

                    return [a async for a in stub.StreamDetect(requests())]

                warm = await burst("cam-0", 48)
                assert all(a.status == pb.STATUS_OK for a in warm)
                drift = server.pipelines["shapes"].drift
                assert drift is not None and await asyncio.to_thread(drift.wait_idle, 120)
                reservoir = server.models.reservoir("shapes")
                assert 0 < len(reservoir) <= 40

                pull_dir = tmp_path / "pull"
                with RemoteServer(address) as remote:
                    fetch = remote.fetch("shapes")
                    calls = {"n": 0}

                    def broken(after_id: int, up_to_id: int) -> Iterator[PulledFrame]:
                        for k, frame in enumerate(fetch(after_id, up_to_id)):
                            if k == 5:
                                raise RemoteCallError("connection lost (simulated)")
                            calls["n"] += 1
                            yield frame

                    with pytest.raises(RemoteCallError):
                        await asyncio.to_thread(pull_reservoir, pull_dir, address, "shapes", broken)
                    with pytest.raises(CalibrationInputError, match="incomplete"):
                        pulled_frames(pull_dir)
                    result = await asyncio.to_thread(pull_reservoir, pull_dir, address, "shapes", fetch)
                    assert result.resumed and result.complete and result.received == len(reservoir) - 5
                    assert result.frames == len(reservoir)
                    paths = pulled_frames(pull_dir)
                    config = ModelRepository(engines).get("shapes")
                    report = await asyncio.to_thread(recalibrate_staged, config, paths)
                    assert report.reservoir_frames == len(reservoir) and 0 <= report.old.agreement_f1 <= 1
                    old_int8 = (model_dir / "model.int8.onnx").read_bytes()
                    moved = promote(config)
                    assert "model.int8.onnx" in moved and (model_dir / "model.int8.onnx").read_bytes() != old_int8
                    assert not (model_dir / ".staging").exists()

                    streams = [asyncio.ensure_future(burst(f"cam-{k}", 40, 0.02)) for k in range(1, 3)]
                    await asyncio.sleep(0.3)
                    reply = await asyncio.to_thread(remote.control, "reload", "shapes")
                    answers = await asyncio.gather(*streams)
                assert reply["version"] == 2 and reply["state"] == "READY"
                for got in answers:
                    assert [a.sequence for a in got] == list(range(40))
                    assert {a.status for a in got} == {pb.STATUS_OK}, {a.reason for a in got}
                assert server.models.reservoir("shapes") is reservoir  # kept across versions
        finally:
            await server.stop()
        again = Reservoir.open("shapes", tmp_path / "reservoir" / "shapes", settings.calibration_reservoir)
        assert len(again) == len(reservoir)  # persistent

    asyncio.run(main())
