"""``trtserve bench hostile``: what hostile and flooding clients cost the others, against a real server.

Two measurements, each side by side in one run against ``trtserve serve`` processes started here (goodput under
overload, per overload policy, is ``trtserve bench overload``'s, which uses this module's unary load):

* **interference**: a well-behaved camera (one StreamDetect call, paced) alone, then beside two clients sending
  decoder bombs (``bombs``) at about 1 KB/s each; alternated ``repeats`` times, medians of the camera's p50;
* **flood**: a server with ``batcher.max_queue_size: 4`` under 8, then 64 concurrent closed-loop unary Detect
  calls: how fast a refused frame is answered RESOURCE_EXHAUSTED (p50 / p99), the calls per second the server
  answered, and that every call got an answer. With closed-loop callers a refusal's latency is at least
  concurrency / calls per second (Little's law): past a few callers it measures gRPC's per-call cost, not the
  refusal.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtserve.reports import JsonReport

logger = logging.getLogger(__name__)

# interference: the good camera's pace, the hostile clients' byte rate
GOOD_FPS = 20.0
HOSTILE_BYTES_PER_S = 1024.0


@dataclass(frozen=True)
class InterferenceReport(JsonReport):
    good_p50_ms_alone: float  # medians over the repeats
    good_p50_ms_beside_bombs: float
    p50_ratio: float  # beside / alone (target <= 1.2)
    bombs_sent: int
    bombs_refused: int  # answered INVALID_ARGUMENT (every bomb should be)
    bomb_answer_p50_ms: float
    repeats: int


@dataclass(frozen=True)
class FloodReport(JsonReport):
    max_queue_size: int
    concurrent_calls: int
    calls: int
    calls_per_s: float
    queueing_bound_ms: float  # concurrent_calls / calls_per_s: the least p50 any server answering that fast allows
    ok: int
    refused: int  # RESOURCE_EXHAUSTED
    refusal_p50_ms: float  # target <= 10
    refusal_p99_ms: float
    other_errors: int
    lost: int  # calls with no answer at all


@dataclass(frozen=True)
class HostileReport(JsonReport):
    model: str
    precision: str
    interference: InterferenceReport
    flood: tuple[FloodReport, ...]


def _ms(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.array(values) * 1000, q)), 2) if values else 0.0


def _jpegs(count: int) -> list[bytes]:
    import cv2

    from trtserve.datasets.synthetic import video_frames

    return [cv2.imencode(".jpg", s.image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            for s in video_frames(count)]


def default_bombs() -> list[bytes]:
    """Small files that each declare a huge or malformed image (see trtserve.bench.bombs for what each is)."""
    from trtserve.bench.bombs import BOMBS

    return [build() for build in BOMBS.values()]


async def _good_camera(address: str, model: str, frames: Sequence[bytes], seconds: float) -> list[float]:
    """One paced StreamDetect call for ``seconds``: each answered frame's round trip (seconds)."""
    import grpc

    from trtserve.v1 import detection_pb2 as pb
    from trtserve.v1 import detection_pb2_grpc as pb_grpc

    sent: dict[int, float] = {}
    latencies: list[float] = []
    count = int(seconds * GOOD_FPS)

    async def requests():  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / GOOD_FPS - time.perf_counter()))
            sent[i] = time.perf_counter()
            yield pb.DetectRequest(model=model, stream_id="good", sequence=i,
                                   image=pb.Image(encoded=frames[i % len(frames)]))

    async with grpc.aio.insecure_channel(address) as channel:
        async for answer in pb_grpc.DetectionServiceStub(channel).StreamDetect(requests()):
            if answer.status == pb.STATUS_OK:
                latencies.append(time.perf_counter() - sent[answer.sequence])
    return latencies


async def _hostile_client(address: str, model: str, bombs: Sequence[bytes], stop: asyncio.Event,
                          answers: list[tuple[str, float]]) -> None:
    """Unary Detect calls carrying bombs, paced at HOSTILE_BYTES_PER_S, until ``stop``."""
    import grpc

    from trtserve.v1 import detection_pb2 as pb
    from trtserve.v1 import detection_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DetectionServiceStub(channel)
        i = 0
        while not stop.is_set():
            bomb = bombs[i % len(bombs)]
            i += 1
            t0 = time.perf_counter()
            try:
                await stub.Detect(pb.DetectRequest(model=model, stream_id="bomb", sequence=i,
                                                   image=pb.Image(encoded=bomb)), timeout=30)
                answers.append(("OK", time.perf_counter() - t0))
            except grpc.aio.AioRpcError as exc:
                answers.append((exc.code().name, time.perf_counter() - t0))
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, len(bomb) / HOSTILE_BYTES_PER_S
                                                        - (time.perf_counter() - t0)))
            except asyncio.TimeoutError:
                pass


async def _interference_pair(address: str, model: str, frames: Sequence[bytes], bombs: Sequence[bytes],
                             seconds: float) -> tuple[float, float, list[tuple[str, float]]]:
    alone = await _good_camera(address, model, frames, seconds)
    stop, answers = asyncio.Event(), []  # type: ignore[var-annotated]
    hostile = [asyncio.create_task(_hostile_client(address, model, bombs, stop, answers)) for _ in range(2)]
    try:
        beside = await _good_camera(address, model, frames, seconds)
    finally:
        stop.set()
        await asyncio.gather(*hostile)
    return statistics.median(alone), statistics.median(beside), answers


async def _unary_load(address: str, model: str, frames: Sequence[bytes], offered_fps: float | None,
                      concurrency: int, seconds: float) -> dict[str, list[float] | int]:
    """Unary Detect calls for ``seconds``: open loop at ``offered_fps`` (a call started on schedule whatever is
    pending), or with ``offered_fps`` None ``concurrency`` closed-loop callers. Latencies by outcome."""
    import grpc

    from trtserve.v1 import detection_pb2 as pb
    from trtserve.v1 import detection_pb2_grpc as pb_grpc

    result: dict[str, list[float]] = {"OK": [], "RESOURCE_EXHAUSTED": [], "other": []}
    others: dict[str, tuple[int, str]] = {}  # code -> (count, the first one's details): said at the end
    started = 0

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DetectionServiceStub(channel)

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                await stub.Detect(pb.DetectRequest(model=model, stream_id="load", sequence=i,
                                                   image=pb.Image(encoded=frames[i % len(frames)])), timeout=60)
                key = "OK"
            except grpc.aio.AioRpcError as exc:
                key = exc.code().name if exc.code().name in result else "other"
                if key == "other":
                    count, details = others.get(exc.code().name, (0, str(exc.details())))
                    others[exc.code().name] = (count + 1, details)
            result[key].append(time.perf_counter() - t0)

        end = time.perf_counter() + seconds
        if offered_fps is None:
            async def caller(c: int) -> None:
                nonlocal started
                while time.perf_counter() < end:
                    started += 1
                    await one(started)

            await asyncio.gather(*(caller(c) for c in range(concurrency)))
        else:
            tasks = []
            start = time.perf_counter()
            while (now := time.perf_counter()) < end:
                started += 1
                tasks.append(asyncio.create_task(one(started)))
                await asyncio.sleep(max(0.0, start + started / offered_fps - now))
            await asyncio.gather(*tasks)
    for code, (count, details) in others.items():
        logger.warning("%d calls answered %s, the first: %s", count, code, details)
    answered = sum(len(v) for v in result.values())
    return {**result, "started": started, "lost": started - answered}


def _config_file(folder: Path, max_queue_size: int | None) -> list[str]:
    if max_queue_size is None:
        return []
    path = folder / f"queue-{max_queue_size}.yaml"
    path.write_text(f"batcher:\n  max_queue_size: {max_queue_size}\n", encoding="utf-8")
    return ["--config", str(path)]


def _flood(report: dict[str, list[float] | int], queue: int, concurrency: int, seconds: float) -> FloodReport:
    ok, refused, other = report["OK"], report["RESOURCE_EXHAUSTED"], report["other"]
    assert isinstance(ok, list) and isinstance(refused, list) and isinstance(other, list)
    started, lost = int(report["started"]), int(report["lost"])  # type: ignore[arg-type]
    rate = (started - lost) / seconds
    bound_ms = round(1000 * concurrency / rate, 2) if rate else 0.0
    return FloodReport(queue, concurrency, started, round(rate, 1), bound_ms, len(ok), len(refused),
                       _ms(refused, 50), _ms(refused, 99), len(other), lost)


def run(repository: Path | None, model: str, precision: str = "fp32", seconds: float = 5.0, repeats: int = 3,
        bombs: Callable[[], list[bytes]] = default_bombs, flood_calls: tuple[int, ...] = (8, 64)) -> HostileReport:
    """Measure the three (see the module docstring); ``seconds`` per load phase."""
    from trtserve.serving.process import start_server_process, stop_server_process

    frames = _jpegs(30)
    hostile_files = bombs()
    log_dir = Path("build")
    log_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server, address = start_server_process(repository, model, precision, log_dir / "bench-hostile.log")
        try:
            pairs = [asyncio.run(_interference_pair(address, model, frames, hostile_files, seconds))
                     for _ in range(repeats)]
            alone = statistics.median(p[0] for p in pairs)
            beside = statistics.median(p[1] for p in pairs)
            bomb_answers = [a for p in pairs for a in p[2]]
            interference = InterferenceReport(
                round(alone * 1000, 2), round(beside * 1000, 2), round(beside / alone, 3), len(bomb_answers),
                sum(code == "INVALID_ARGUMENT" for code, _ in bomb_answers),
                _ms([t for _, t in bomb_answers], 50), repeats)
        finally:
            stop_server_process(server)
        queue = 4
        server, address = start_server_process(repository, model, precision, log_dir / "bench-hostile-flood.log",
                                               extra_args=_config_file(Path(tmp), queue))
        try:
            floods = tuple(_flood(asyncio.run(_unary_load(address, model, frames, None, n, seconds)), queue, n,
                                  seconds) for n in flood_calls)
        finally:
            stop_server_process(server)
    return HostileReport(model, precision, interference, floods)
