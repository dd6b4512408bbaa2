"""``trtserve calibrate MODEL --from-server ADDR`` and ``trtserve recalibrate MODEL --server ADDR [--dry-run]`` as a
user runs them, against a real server in this process whose calibration reservoir holds frames — with the bad inputs:
an interrupted pull (exit 2, resumed by the same command, never calibrated on half-done), a model the server does
not serve, an unknown model, and a reload of a broken model (the old version keeps serving)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import pytest

from trtserve.calibration.from_server import STAGING, STATE_FILE, PulledFrame
from trtserve.cli.remote import RemoteServer
from trtserve.config import ReservoirSpec
from trtserve.datasets.synthetic import CALIBRATION_SEED, render_scene
from trtserve.errors import RemoteCallError
from trtserve.monitoring.reservoir import Reservoir
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.server import Server, ServerSettings
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ..serving.test_grpc_server import raw_request
from .test_remote_cli import _repository, _run

FRAMES = 10


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_calibrate_and_recalibrate_commands_against_a_real_server(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    engines = _repository(tmp_path / "engines")
    other = engines / "cars"  # in the repository, not served
    other.mkdir()
    for f in (engines / "shapes").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "model.yaml").write_text((other / "model.yaml").read_text().replace("name: shapes", "name: cars"))
    spec = ReservoirSpec(enabled=True, max_frames=50, dir=tmp_path / "reservoir")
    held = Reservoir.open("shapes", tmp_path / "reservoir" / "shapes", spec)
    for i in range(FRAMES):  # as a drift shadow would have left them: letterboxed to the model's input
        assert held.offer(cv2.resize(render_scene(CALIBRATION_SEED, i).image_bgr, (256, 256)), 0.9)
    settings = ServerSettings(grpc_port=0, metrics_port=None, model_control=True, grace_period_s=5,
                              batcher=BatcherConfig(max_batch_size=8, max_queue_delay_ms=5), calibration_reservoir=spec)
    repo = ["--repository", str(engines)]
    shapes = engines / "shapes"
    frame = render_scene(CALIBRATION_SEED, 0).image_bgr

    async def main_() -> None:
        server = Server(settings, ModelRepository(engines))
        await server.start()
        address = f"127.0.0.1:{server.port}"

        async def cli(*argv: str) -> tuple[int, str, str]:
            return await asyncio.to_thread(_run, capsys, *repo, *argv)

        async def serves() -> bool:
            async with grpc.aio.insecure_channel(address) as channel:
                reply = await pb_grpc.DetectionServiceStub(channel).Detect(raw_request(frame, "check", 0))
            return bool(reply.status == pb.STATUS_OK)

        try:
            # an unknown model, and one the server does not serve: exit 2, one line, nothing pulled or staged
            code, _, err = await cli("calibrate", "nosuch", "--from-server", address, "--pull-dir",
                                     str(tmp_path / "p0"))
            assert code == 2 and "nosuch" in err and err.count("\n") == 1 and "Traceback" not in err, err
            code, _, err = await cli("recalibrate", "cars", "--server", address, "--pull-dir", str(tmp_path / "p1"))
            assert code == 2 and "NOT_FOUND" in err and "'cars'" in err and "no calibration reservoir" in err, err
            assert not list((tmp_path / "p1").glob("*.png")) and not (other / STAGING).exists()

            # an interrupted pull: exit 2 saying how to resume, the frames so far kept, nothing calibrated on them
            files_before = _digest(shapes)
            real_fetch = RemoteServer.fetch

            def cut_after_four(self: RemoteServer, model: str) -> object:
                fetch = real_fetch(self, model)

                def broken(after_id: int, up_to_id: int) -> Iterator[PulledFrame]:
                    for k, pulled in enumerate(fetch(after_id, up_to_id)):
                        if k == 4:
                            raise RemoteCallError(f"pulling the calibration reservoir of {model!r} (interrupted; "
                                                  "run the same command again to resume) on the test's network: "
                                                  "UNAVAILABLE: connection reset")
                        yield pulled

                return broken

            pull = ["--pull-dir", str(tmp_path / "pull")]
            monkeypatch.setattr(RemoteServer, "fetch", cut_after_four)
            code, _, err = await cli("calibrate", "shapes", "--from-server", address, *pull)
            assert code == 2 and "run the same command again to resume" in err, err
            state = json.loads((tmp_path / "pull" / STATE_FILE).read_text())
            assert state["complete"] is False and len(list((tmp_path / "pull").glob("*.png"))) == 4
            assert not (shapes / STAGING).exists() and _digest(shapes) == files_before
            monkeypatch.setattr(RemoteServer, "fetch", real_fetch)
            code, out, err = await cli("calibrate", "shapes", "--from-server", address, *pull, "--json")
            assert code == 0, err
            payload = json.loads(out)
            assert payload["pull"] == {"directory": str(tmp_path / "pull"), "frames": FRAMES, "received": FRAMES - 4,
                                       "resumed": True, "complete": True}
            assert payload["report"]["reservoir_frames"] == FRAMES
            assert payload["report"]["calibration"]["frames_used"] == FRAMES and payload["reload"] is None
            # the model's TensorRT calibration caches are rewritten with the new ranges, none left stale
            assert payload["report"]["calibration"]["artifacts"]["trt_caches"] == {
                "10.3.0": "calibration.trt100300.cache", "8.5.2": "calibration.trt8502.cache",
                "8.6.2": "calibration.trt8602.cache"}
            promoted = payload["promoted"]

            # recalibrate --dry-run: pulls, calibrates and compares, changes nothing here or on the server
            files_now = _digest(shapes)
            code, out, err = await cli("recalibrate", "shapes", "--server", address, "--pull-dir",
                                       str(tmp_path / "pull-dry"), "--dry-run", "--json")
            assert code == 0, err
            dry = json.loads(out)
            assert dry["dry_run"] and dry["promoted"] == [] and dry["reload"] is None
            assert _digest(shapes) == files_now and server.models.status("shapes").version == 1

            # recalibrate for real (--min-gain -1: promote whatever it scores): files promoted, version 2 serving
            code, out, err = await cli("recalibrate", "shapes", "--server", address, "--pull-dir",
                                       str(tmp_path / "pull-real"), "--min-gain", "-1", "--json")
            assert code == 0, err
            done = json.loads(out)
            assert "model.yaml" in done["promoted"] and done["reload"]["version"] == 2, (done, promoted)
            assert server.models.status("shapes").version == 2 and await serves()

            # a reload of a broken model: exit 2 naming the cause, version 2 keeps serving
            yaml_path = shapes / "model.yaml"
            good = yaml_path.read_text()
            yaml_path.write_text(good.replace("max_batch_size:", "max_batch_size: -3\nunused_key:", 1))
            code, _, err = await cli("models", "--server", address, "reload", "shapes")
            assert code == 2 and "version 2 keeps serving" in err and "FAILED_PRECONDITION" in err, err
            assert server.models.status("shapes").version == 2 and await serves()
            yaml_path.write_text(good)
        finally:
            await server.stop()

    asyncio.run(main_())
