"""The recalibration loop as a scripted scenario, with its figures (`.venv/bin/python -m tests.bench_recalibrate`).

Serves the bundled INT8 model (a private copy of its folder) with the FP32 shadow and the calibration reservoir
on, streams a shifted domain (the synthetic scenes darkened and given a colour cast) so agreement falls, then runs
the loop — pull the reservoir, calibrate a staged copy on it, score old and new INT8 against FP32, promote, and
reload on the server while paced camera streams run — and prints: agreement before / after (on the reservoir
frames and on held-out shifted frames through the live drift window), frames lost or errored during the swap,
and client-side p99 latency during the swap against the seconds before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from trtserve.calibration.from_server import promote, pull_reservoir, pulled_frames, recalibrate_staged
from trtserve.cli.remote import RemoteServer
from trtserve.config import DriftSpec, ReservoirSpec
from trtserve.datasets.synthetic import render_scene
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.server import Server, ServerSettings
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

ENGINES = Path(__file__).resolve().parents[1] / "engines"


def shifted(image: np.ndarray) -> np.ndarray:
    """Night and a colour cast."""
    return np.clip(image.astype(np.float32) * np.array([0.55, 0.35, 0.3], np.float32), 0, 255).astype(np.uint8)


def request(image: np.ndarray, cam: str, seq: int) -> pb.DetectRequest:
    h, w = image.shape[:2]
    return pb.DetectRequest(stream_id=cam, sequence=seq, image=pb.Image(raw=pb.RawImage(
        pixels=image.tobytes(), height=h, width=w, format=pb.PIXEL_FORMAT_BGR8)))


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


async def scenario(args: argparse.Namespace, work: Path) -> dict[str, object]:
    engines = work / "engines"
    shutil.copytree(ENGINES / "shapes", engines / "shapes", ignore=shutil.ignore_patterns("cache"))
    fill = [shifted(render_scene(11, i).image_bgr) for i in range(args.fill_frames)]
    held_out = [shifted(render_scene(12, i).image_bgr) for i in range(64)]
    settings = ServerSettings(grpc_port=0, metrics_port=None, precision="int8", model_control=True,
                              batcher=BatcherConfig(max_batch_size=8, max_queue_delay_ms=5),
                              drift=DriftSpec(enabled=True, sample_rate=1.0, max_pending=64, window_frames=1000,
                                              min_window_frames=8),
                              calibration_reservoir=ReservoirSpec(enabled=True, max_frames=args.reservoir_frames))
    server = Server(settings, ModelRepository(engines))
    await server.start()
    address = f"127.0.0.1:{server.port}"
    import grpc

    out: dict[str, object] = {}
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.DetectionServiceStub(channel)

            async def burst(images: list[np.ndarray], cam: str) -> None:
                async def requests() -> AsyncIterator[pb.DetectRequest]:
                    for i, img in enumerate(images):
                        yield request(img, cam, i)

                assert all([a.status == pb.STATUS_OK async for a in stub.StreamDetect(requests())])

            def window() -> float:
                drift = server.pipelines["shapes"].drift
                assert drift is not None and drift.wait_idle(300)
                return drift.summary().agreement_f1

            await burst(fill, "fill")
            out["live_window_agreement_before"] = round(await asyncio.to_thread(window), 4)
            await burst(held_out, "held-out")  # the same window, now including the held-out frames
            t0 = time.monotonic()
            with RemoteServer(address) as remote:
                pulled = await asyncio.to_thread(pull_reservoir, work / "pull", address, "shapes",
                                                 remote.fetch("shapes"))
                config = ModelRepository(engines).get("shapes")
                report = await asyncio.to_thread(recalibrate_staged, config, pulled_frames(work / "pull"))
                out["reservoir_frames"] = pulled.frames
                out["int8_vs_fp32_on_reservoir_frames"] = {"serving": report.old.as_dict(),
                                                           "recalibrated": report.new.as_dict(),
                                                           "better": report.better}
                out["pull_and_calibrate_s"] = round(time.monotonic() - t0, 1)
                if report.better or args.always_promote:
                    promote(config)

                # paced cameras through the swap; latency per frame, client side
                sent: dict[tuple[str, int], float] = {}
                done: list[tuple[float, float, int]] = []  # (answered at, latency, status)
                stop = asyncio.Event()

                async def camera(cam: str) -> None:
                    async def requests() -> AsyncIterator[pb.DetectRequest]:
                        i = 0
                        while not stop.is_set():
                            sent[(cam, i)] = time.monotonic()
                            yield request(held_out[i % len(held_out)], cam, i)
                            i += 1
                            await asyncio.sleep(1.0 / args.fps)

                    async for a in stub.StreamDetect(requests()):
                        now = time.monotonic()
                        done.append((now, now - sent.pop((cam, a.sequence)), a.status))

                cams = [asyncio.ensure_future(camera(f"cam-{k}")) for k in range(args.streams)]
                await asyncio.sleep(args.before_s)
                swap_start = time.monotonic()
                reply = await asyncio.to_thread(remote.control, "reload", "shapes")
                swap_end = time.monotonic()
                await asyncio.sleep(args.after_s)
                stop.set()
                await asyncio.gather(*cams)
            before = [lat for t, lat, _ in done if swap_start - args.before_s + 1 <= t < swap_start]
            during = [lat for t, lat, _ in done if swap_start <= t <= swap_end + 0.5]
            out["reload"] = reply
            out["swap_s"] = round(swap_end - swap_start, 2)
            out["frames_sent_during_paced_run"] = len(done) + len(sent)
            out["frames_lost"] = len(sent)
            out["frames_errored"] = sum(s != pb.STATUS_OK for _, _, s in done)
            out["p99_before_ms"] = round(p99(before) * 1000, 1)
            out["p99_during_swap_ms"] = round(p99(during) * 1000, 1)
            out["p99_ratio"] = round(p99(during) / p99(before), 2) if before and during else None
            out["frames_before_during"] = [len(before), len(during)]
            await burst(held_out, "held-out-after")
            out["live_window_agreement_after_on_held_out"] = round(await asyncio.to_thread(window), 4)
    finally:
        await server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fill-frames", type=int, default=240)
    parser.add_argument("--reservoir-frames", type=int, default=200)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--before-s", type=float, default=8.0)
    parser.add_argument("--after-s", type=float, default=3.0)
    parser.add_argument("--always-promote", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trtserve-recal-") as work:
        result = asyncio.run(scenario(args, Path(work)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
