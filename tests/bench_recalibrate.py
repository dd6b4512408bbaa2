"""The recalibration loop as a scripted scenario, with its figures (`.venv/bin/python -m tests.bench_recalibrate`).

Serves the bundled INT8 model (a private copy of its folder) with the FP32 shadow and the calibration reservoir
on, streams a shifted domain (by default the synthetic scenes under a strong sodium-light cast, :data:`SHIFT`) so
agreement falls and calibration coverage rises, then runs the loop — pull the reservoir, calibrate a staged copy on
it, score old and new INT8 against FP32, promote, and reload on the server while paced camera streams run — and
prints: agreement before / after (on the reservoir frames, on held-out shifted frames scored offline, and through
the live drift window), frames lost or errored during the swap, and client-side p99 latency during the swap against
the seconds before it. ``--survey`` instead measures each shift in :data:`SHIFTS` (agreement and coverage, one
drift window each), which is how the default shift was picked.
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

import cv2
import numpy as np

from trtserve.calibration.from_server import promote, pull_reservoir, pulled_frames, recalibrate_staged, score_int8
from trtserve.cli.remote import RemoteServer
from trtserve.config import DriftSpec, ReservoirSpec, load_model_config
from trtserve.datasets.synthetic import render_scene
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.server import Server, ServerSettings
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

ENGINES = Path(__file__).resolve().parents[1] / "engines"


def _clip(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0, 255).astype(np.uint8)


def _noise(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _clip(image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32))


# Shifts of the synthetic scenes (BGR uint8 -> BGR uint8); `--survey` measures each against the served INT8 model.
SHIFTS = {
    "night_cast": lambda img, i: _clip(img.astype(np.float32) * np.array([0.55, 0.35, 0.3], np.float32)),
    "sodium_cast": lambda img, i: _clip(img.astype(np.float32) * np.array([0.15, 0.7, 1.0], np.float32)
                                        + np.array([0, 20, 70], np.float32)),
    "inverted": lambda img, i: (255 - img).astype(np.uint8),
    "low_contrast": lambda img, i: _clip(128 + (img.astype(np.float32) - 128) * 0.3),
    "fog": lambda img, i: _clip(0.35 * img.astype(np.float32) + 0.65 * 210),
    "overexposed": lambda img, i: _clip(img.astype(np.float32) * 2.2 + 30),
    "overexposed_strong": lambda img, i: _clip(img.astype(np.float32) * 3.0 + 60),
    "sodium_strong": lambda img, i: _clip(img.astype(np.float32) * np.array([0.05, 0.6, 1.4], np.float32)
                                          + np.array([0, 30, 90], np.float32)),
    "noise_40": lambda img, i: _noise(img, 40.0, i),
    "noise_70": lambda img, i: _noise(img, 70.0, i),
}
SHIFT = "sodium_strong"  # the default: lowered agreement most in the survey and set off the coverage alert


def shifted(image: np.ndarray, index: int = 0, shift: str | None = None) -> np.ndarray:
    """``image`` under ``shift`` (default :data:`SHIFT`)."""
    return SHIFTS[shift or SHIFT](image, index)


def request(image: np.ndarray, cam: str, seq: int) -> pb.DetectRequest:
    h, w = image.shape[:2]
    return pb.DetectRequest(stream_id=cam, sequence=seq, image=pb.Image(raw=pb.RawImage(
        pixels=image.tobytes(), height=h, width=w, format=pb.PIXEL_FORMAT_BGR8)))


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


async def scenario(args: argparse.Namespace, work: Path) -> dict[str, object]:
    engines = work / "engines"
    shutil.copytree(ENGINES / "shapes", engines / "shapes", ignore=shutil.ignore_patterns("cache"))
    fill = [shifted(render_scene(11, i).image_bgr, i, args.shift) for i in range(args.fill_frames)]
    held_out = [shifted(render_scene(12, i).image_bgr, i, args.shift) for i in range(args.held_out_frames)]
    held_dir = work / "held-out"  # scored offline, old and new INT8 against FP32 (never offered to the reservoir)
    held_dir.mkdir()
    for i, img in enumerate(held_out):
        cv2.imwrite(str(held_dir / f"{i:04d}.png"), img)
    settings = ServerSettings(grpc_port=0, metrics_port=None, precision="int8", model_control=True,
                              batcher=BatcherConfig(max_batch_size=8, max_queue_delay_ms=5),
                              drift=DriftSpec(enabled=True, sample_rate=1.0, max_pending=64, window_frames=1000,
                                              min_window_frames=8),
                              calibration_reservoir=ReservoirSpec(enabled=True, max_frames=args.reservoir_frames))
    server = Server(settings, ModelRepository(engines))
    await server.start()
    address = f"127.0.0.1:{server.port}"
    import grpc

    out: dict[str, object] = {"shift": args.shift}
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
            drift = server.pipelines["shapes"].drift
            assert drift is not None
            out["live_window_out_of_range_before"] = round(drift.summary().out_of_range_ratio, 5)
            await burst(held_out, "held-out")  # the same window, now including the held-out frames
            t0 = time.monotonic()
            with RemoteServer(address) as remote:
                pulled = await asyncio.to_thread(pull_reservoir, work / "pull", address, "shapes",
                                                 remote.fetch("shapes"))
                config = ModelRepository(engines).get("shapes")
                report = await asyncio.to_thread(recalibrate_staged, config, pulled_frames(work / "pull"),
                                                 method=args.method)
                out["method"] = args.method
                out["reservoir_frames"] = pulled.frames
                out["int8_vs_fp32_on_reservoir_frames"] = {"serving": report.old.as_dict(),
                                                           "recalibrated": report.new.as_dict(),
                                                           "better": report.better}
                out["pull_and_calibrate_s"] = round(time.monotonic() - t0, 1)
                held = sorted(held_dir.glob("*.png"))
                staged = load_model_config(Path(report.staging) / "model.yaml")
                old_held, new_held = await asyncio.to_thread(score_int8, config, config, held), \
                    await asyncio.to_thread(score_int8, config, staged, held)
                out["int8_vs_fp32_on_held_out_shifted_frames"] = {"frames": len(held), "serving": old_held.as_dict(),
                                                                  "recalibrated": new_held.as_dict()}
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


async def survey(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """Each shift's INT8-vs-FP32 agreement and calibration coverage, as the live drift window measures them: the
    served INT8 model, the FP32 shadow at rate 1, ``--survey-frames`` shifted frames per shift (a window each)."""
    engines = work / "engines"
    shutil.copytree(ENGINES / "shapes", engines / "shapes", ignore=shutil.ignore_patterns("cache"))
    n = args.survey_frames
    settings = ServerSettings(grpc_port=0, metrics_port=None, precision="int8",
                              batcher=BatcherConfig(max_batch_size=8, max_queue_delay_ms=5),
                              drift=DriftSpec(enabled=True, sample_rate=1.0, max_pending=64, window_frames=n,
                                              min_window_frames=8))
    server = Server(settings, ModelRepository(engines))
    await server.start()
    import grpc

    out: dict[str, object] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.DetectionServiceStub(channel)
            scenes = [render_scene(11, i).image_bgr for i in range(n)]
            for name in ["none", *(args.shifts.split(",") if args.shifts else SHIFTS)]:
                images = scenes if name == "none" else [shifted(img, i, name) for i, img in enumerate(scenes)]

                async def requests(images: list[np.ndarray] = images, cam: str = name
                                   ) -> AsyncIterator[pb.DetectRequest]:
                    for i, img in enumerate(images):
                        yield request(img, cam, i)

                assert all([a.status == pb.STATUS_OK async for a in stub.StreamDetect(requests())])
                drift = server.pipelines["shapes"].drift
                assert drift is not None and await asyncio.to_thread(drift.wait_idle, 300)
                summary = drift.summary()
                out[name] = {"agreement_f1": round(summary.agreement_f1, 4),
                             "out_of_range_ratio": round(summary.out_of_range_ratio, 5),
                             "missed": summary.missed, "extra": summary.extra}
                print(name, out[name], flush=True)
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
    parser.add_argument("--held-out-frames", type=int, default=64)
    parser.add_argument("--method", choices=["auto", "entropy", "minmax", "percentile"], default="percentile",
                        help="the staged calibration method (entropy collapses on the overexposed scenes: README)")
    parser.add_argument("--shift", choices=sorted(SHIFTS), default=SHIFT)
    parser.add_argument("--survey", action="store_true", help="measure every shift's agreement and coverage only")
    parser.add_argument("--survey-frames", type=int, default=120)
    parser.add_argument("--shifts", default="", help="with --survey: these shifts only (comma-separated)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trtserve-recal-") as work:
        result = asyncio.run((survey if args.survey else scenario)(args, Path(work)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
