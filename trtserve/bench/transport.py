"""``trtserve bench transport``: what gRPC alone costs the server per frame, at the rates a detector is fed.

A bare ``trtserve.v1`` StreamDetect servicer (its own process on a free loopback port; every frame answered at once
with a fixed answer of nine detections, about the bundled model's) is fed the sample video's 480x360 JPEG frames by
``streams`` cameras paced at each total rate in ``rates_fps``. For each rate the server's CPU per frame is read from
``/proc`` by thread (:func:`trtserve.threads.cpu_s_by_role`): ``event_loop`` (grpc.aio's Cython layer, protobuf,
the handler) and ``other`` (gRPC core's own threads). No decode, no batching, no engine: the floor that the real
server's ``event_loop`` + ``other`` in ``trtserve bench streams`` stands on. An event-driven server pays per
wake-up, so the cost per frame falls as the rate rises and more frames share each wake-up: compare the real server
with the row nearest its throughput. Linux only (the CPU is read from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from trtserve.errors import ServerError, UsageError
from trtserve.reports import JsonReport
from trtserve.threads import cpu_delta_by_role, server_cpu_s_by_role

ANSWER_DETECTIONS = 9


@dataclass(frozen=True)
class TransportRate(JsonReport):
    offered_fps: float
    answered_fps: float
    frames: int
    lost: int  # sent but never answered
    event_loop_ms_per_frame: float
    other_ms_per_frame: float  # gRPC core's threads
    server_ms_per_frame: float  # the two together


@dataclass(frozen=True)
class TransportReport(JsonReport):
    streams: int
    seconds_per_rate: float
    frame_bytes: int  # mean encoded size of the frames sent
    rates: tuple[TransportRate, ...]


def _serve(port: int) -> None:
    """The bare servicer, in this process until it is killed."""
    import grpc

    from trtserve.v1 import detection_pb2 as pb
    from trtserve.v1 import detection_pb2_grpc as pb_grpc

    class Bare(pb_grpc.DetectionServiceServicer):
        async def StreamDetect(self, requests: AsyncIterator[pb.DetectRequest],  # noqa: N802
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DetectResponse]:
            async for request in requests:
                answer = pb.DetectResponse(stream_id=request.stream_id, sequence=request.sequence,
                                           status=pb.STATUS_OK, model="bare", precision="fp32")
                for k in range(ANSWER_DETECTIONS):
                    answer.detections.add(box=pb.Box(x_min=k, y_min=k, x_max=k + 40.0, y_max=k + 30.0), score=0.9,
                                          class_id=k % 3, label="circle")
                yield answer

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        pb_grpc.add_DetectionServiceServicer_to_server(Bare(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await server.wait_for_termination()

    asyncio.run(main())


def _start(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "trtserve.bench.transport", "--serve", str(port)],
                               stdout=subprocess.PIPE)
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        process.kill()
        raise ServerError(f"the bare gRPC servicer exited with status {process.wait()} before it was ready")
    return process


async def _feed(address: str, frames: Sequence[bytes], streams: int, rate_fps: float, seconds: float,
                pid: int) -> TransportRate:
    import grpc

    from trtserve.v1 import detection_pb2 as pb
    from trtserve.v1 import detection_pb2_grpc as pb_grpc

    per_stream = max(1, round(rate_fps * seconds / streams))
    interval_s = streams / rate_fps

    async def camera(stub: pb_grpc.DetectionServiceStub, s: int, count: int) -> int:
        start = time.perf_counter() + s * interval_s / streams  # out of phase

        async def requests() -> AsyncIterator[pb.DetectRequest]:
            for i in range(count):
                await asyncio.sleep(max(0.0, start + i * interval_s - time.perf_counter()))
                yield pb.DetectRequest(stream_id=f"cam{s}", sequence=i, image=pb.Image(encoded=frames[i % len(frames)]))

        return sum([1 async for _ in stub.StreamDetect(requests())])

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DetectionServiceStub(channel)
        await asyncio.gather(*(camera(stub, s, 3) for s in range(streams)))  # connected and warm
        before, t0 = server_cpu_s_by_role(pid), time.perf_counter()
        answered = sum(await asyncio.gather(*(camera(stub, s, per_stream) for s in range(streams))))
        elapsed, after = time.perf_counter() - t0, server_cpu_s_by_role(pid)
    if before is None or after is None:
        raise ServerError(f"the bare servicer's CPU could not be read from /proc/{pid} (did it exit?)")
    delta = cpu_delta_by_role(before, after)  # gRPC threads that ended meanwhile: under other
    loop_ms, other_ms = (1000 * delta[k] / max(1, answered) for k in ("event_loop", "other"))
    return TransportRate(rate_fps, round(answered / elapsed, 1), answered, streams * per_stream - answered,
                         round(loop_ms, 3), round(other_ms, 3), round(loop_ms + other_ms, 3))


def run(rates_fps: Sequence[float] = (100, 400, 1600), streams: int = 8, seconds: float = 5.0) -> TransportReport:
    """Feed the bare servicer at each rate (see the module docstring); returns the figures per rate."""
    from trtserve.bench.streams import _sample_frames
    from trtserve.serving.process import free_port

    if streams < 1 or seconds <= 0 or not rates_fps or min(rates_fps) <= 0:
        raise UsageError("bench transport needs streams >= 1, seconds > 0 and rates above 0 frames/s")
    if not sys.platform.startswith("linux"):
        raise UsageError("bench transport reads the server's CPU per thread from /proc: run it on Linux")
    frames: list[bytes] = _sample_frames(30, 90)  # type: ignore[assignment]  # JPEG bytes at a quality
    port = free_port()
    process = _start(port)
    try:
        rates = tuple(asyncio.run(_feed(f"127.0.0.1:{port}", frames, streams, r, seconds, process.pid))
                      for r in rates_fps)
    finally:
        process.kill()
        process.wait()
    return TransportReport(streams, seconds, round(sum(map(len, frames)) / len(frames)), rates)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the bare servicer of trtserve bench transport")
    parser.add_argument("--serve", type=int, required=True, metavar="PORT")
    _serve(parser.parse_args().serve)
