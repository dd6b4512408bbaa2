"""``trtserve bench``: N concurrent camera streams x M frames against a server, beside the raw engine.

Against ``--server ADDR``, or (default) a ``trtserve serve`` process started here on a free port. Frames
are the sample video's, encoded once before the clock starts. Reports throughput, client-side latency
percentiles, the server's mean batch size (from GetModel), drops and errors, then measures the raw
backend's throughput at that batch size in this process — after the load, so the two never share
the CPU — and reports ``efficiency`` = fps / raw_backend_fps. The raw figure is the better of one call on
all the runtime's threads and the server's own arrangement (``instances`` calls at once on cores /
instances threads each); the p99 bound uses one batch's time as the server computes it.

It also says where each frame's CPU time went (this client, the server when it runs here, the engine alone)
and, for a CPU backend, the efficiency those costs allow with every core busy.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.datasets.synthetic import video_frames
from trtserve.errors import UsageError
from trtserve.reports import JsonReport
from trtserve.threads import cpu_delta_by_role, server_cpu_s_by_role


@dataclass(frozen=True)
class StreamsReport(JsonReport):
    """What :func:`run` measured (see the module docstring), rounded as printed.

    Throughput, raw-engine figures, efficiency and CPU costs are medians over the ``runs`` unpaced runs;
    the latency percentiles come from the one paced run at ``latency_load_fraction`` of the peak.
    """

    protocol: str  # trtserve.v1 | kserve | kserve-http
    frames: str  # what was sent: jpeg | raw (BGR pixels)
    streams: int
    frames_per_stream: int
    runs: int
    frames_sent: int  # over all the runs, the paced one included
    answered: int  # frames that got an answer of any kind (detections, DROPPED or an error)
    fps: float  # answered with detections, per second, unpaced
    raw_backend_fps: float  # the better of raw_one_call_fps and raw_concurrent_fps
    raw_one_call_fps: float  # one backend call at a time, on all the runtime's threads
    raw_concurrent_fps: float  # ``instances`` calls at once: the server's arrangement
    instances: int  # the server's
    batch_compute_ms: float  # one batch of raw_batch frames, as the server computes it
    efficiency: float  # fps / raw_backend_fps
    efficiency_runs: tuple[float, ...]  # per unpaced run
    p50_ms: float
    p95_ms: float
    p99_ms: float
    latency_load_fraction: float  # of the peak fps, the paced run's offered load
    paced_fps: float
    p99_bound_ms: float  # max_queue_delay_ms + 3 batches
    peak_p99_ms: float  # p99 of the first unpaced run (its own backlog)
    mean_batch: float  # the server's, over the unpaced runs
    raw_batch: int  # the batch size the raw engine was measured at
    dropped: int
    errors: int
    lost: int  # sent but never answered
    max_queue_delay_ms: float  # the server's
    engine_device: str
    engine_cpu_ms_per_frame: float
    client_cpu_ms_per_frame: float
    server_cpu_ms_per_frame: float | None  # None when the server did not run here
    cpu_bound_efficiency_ceiling: float | None  # None unless the server ran here on a CPU engine
    # server CPU per frame minus the engine's inside the server (decode, letterbox, normalize, head, gRPC, asyncio),
    # median over the runs; None when the server did not run here
    server_cpu_outside_engine_ms_per_frame: float | None = None
    # the engine's CPU per frame inside the server (GetModel stats.engine_cpu_seconds, plus its runtime's worker
    # threads when the server runs here), median over the runs; None from a server that does not report it
    engine_in_server_cpu_ms_per_frame: float | None = None
    # the server's CPU per frame by thread (trtserve.threads): engine (normalize, the engine calls, the head), runtime
    # (ONNX Runtime's intra-op workers), decode (header checks, decode, letterbox), event_loop (gRPC, protobuf,
    # batching, answers), drift, other (gRPC core's threads, ...); medians over the runs; None when the server did not
    # run here or off Linux
    server_cpu_ms_per_frame_by_thread: dict[str, float] | None = None
    frames_per_request: int = 1  # --kserve: images per ModelInfer request


@dataclass(frozen=True)
class ShadowReport(JsonReport):
    """What :func:`run_shadow` measured: the FP32 shadow off against on, medians over ``repeats`` pairs."""

    streams: int
    frames_per_stream: int
    frames: str  # jpeg | raw
    precision: str  # served; the shadow is FP32
    shadow_rate: float  # fraction of batches the shadow compared when on
    repeats: int  # off/on pairs
    latency_load_fraction: float  # of the first shadow-off peak, the paced runs' offered load
    fps_shadow_off: float
    fps_shadow_on: float
    p99_ms_shadow_off: float
    p99_ms_shadow_on: float
    shadow_throughput_ratio: float  # on / off
    shadow_p99_ratio: float  # on / off
    shadow_throughput_ratios: tuple[float, ...]  # per pair: the spread is the noise
    shadow_p99_ratios: tuple[float, ...]
    drift_agreement_f1: float | None  # the last shadow-on server's drift window (None: no shadow-on run)
    drift_out_of_range_ratio: float | None
    shadow_samples: int  # frames compared, over the shadow-on servers
    shadow_skipped: int  # sampled batches skipped while the shadow was busy
    metrics_overhead_us_per_frame: float
    metrics_overhead_fraction: float  # of a frame's time at fps_shadow_on
    lost: int  # sent but never answered, over every run


def _concurrent_calls(call: Callable[[], object], threads: int, calls_each: int) -> tuple[float, float]:
    """``threads`` threads making ``calls_each`` calls at once (after one warm-up each): calls per second, and
    CPU seconds per call (this process, all threads)."""
    def work(n: int) -> None:
        for _ in range(n):
            call()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [1] * threads))
        t0, cpu0 = time.perf_counter(), time.process_time()
        list(pool.map(work, [calls_each] * threads))
        calls = threads * calls_each
        return calls / (time.perf_counter() - t0), (time.process_time() - cpu0) / calls


def _answered(load: dict[str, Any]) -> int:
    """Frames of a load run that got an answer of any kind (detections, DROPPED or an error)."""
    return int(load["ok"] + load["dropped"] + load["errors"])


def _percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values) * 1000, q)), 2) if values else 0.0


Record = Callable[[float | None, str], None]  # (when the frame was sent, or None; ok | dropped | errors)
Camera = Callable[[int, AsyncIterator[tuple[int, Any]], Record], Awaitable[None]]


def _sample_frames(count: int, jpeg_quality: int | None) -> list[bytes] | list[NDArray[np.uint8]]:
    """The sample video's first ``count`` frames: JPEG bytes, or with ``jpeg_quality`` None BGR pixels."""
    video = video_frames(count)
    if jpeg_quality is None:
        return [s.image_bgr for s in video]
    return [cv2.imencode(".jpg", s.image_bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])[1].tobytes() for s in video]


async def _paced(frames: Sequence[Any], stream: int, streams: int, interval_s: float
                 ) -> AsyncIterator[tuple[int, Any]]:
    """A camera's frames: as fast as taken, or one every ``interval_s`` (cameras out of phase)."""
    start = time.perf_counter() + stream * interval_s / max(1, streams)
    for i, blob in enumerate(frames):
        if interval_s:
            await asyncio.sleep(max(0.0, start + i * interval_s - time.perf_counter()))
        yield i, blob


async def _measure(address: str, model: str, streams: int, frames: Sequence[Any], interval_s: float,
                   camera: Camera, server_pid: int | None = None) -> dict[str, Any]:
    """Run ``streams`` cameras at once; latencies, answer counts, the server's mean batch over the run, and the
    CPU seconds this client and (when ``server_pid`` is a local process) the server used meanwhile."""
    import grpc

    from trtserve.v1 import detection_pb2 as pb
    from trtserve.v1 import detection_pb2_grpc as pb_grpc

    latencies: list[float] = []
    counts = {"ok": 0, "dropped": 0, "errors": 0}
    by_outcome: dict[str, list[float]] = {}  # ok | dropped | an error's code name -> latencies (seconds)

    def record(sent_s: float | None, key: str) -> None:
        outcome = key
        if key.startswith("errors:"):  # "errors:<code>" from cameras that know the code
            key, outcome = "errors", key.removeprefix("errors:")
        if sent_s is not None:
            latencies.append(time.perf_counter() - sent_s)
            by_outcome.setdefault(outcome, []).append(latencies[-1])
        counts[key] += 1

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DetectionServiceStub(channel)
        before = await stub.GetModel(pb.GetModelRequest(name=model))
        t0, client0, server0 = time.perf_counter(), time.process_time(), server_cpu_s_by_role(server_pid)
        await asyncio.gather(*(camera(s, _paced(frames, s, streams, interval_s), record) for s in range(streams)))
        elapsed = time.perf_counter() - t0
        client_cpu_s, server1 = time.process_time() - client0, server_cpu_s_by_role(server_pid)
        after = await stub.GetModel(pb.GetModelRequest(name=model))
    batches = after.stats.batches - before.stats.batches
    mean_batch = (after.stats.frames - before.stats.frames) / batches if batches else 0.0
    engine_cpu_s = after.stats.engine_cpu_seconds - before.stats.engine_cpu_seconds  # 0 from a server without it
    server_cpu_s = by_role = None
    if server0 is not None and server1 is not None:
        server_cpu_s, by_role = server1[0] - server0[0], cpu_delta_by_role(server0, server1)
    return {"elapsed_s": elapsed, "latencies": latencies, "mean_batch": mean_batch, "client_cpu_s": client_cpu_s,
            "server_cpu_s": server_cpu_s, "server_cpu_s_by_role": by_role, "engine_cpu_in_server_s": engine_cpu_s,
            "latencies_by_outcome": by_outcome,
            **counts}


async def _native_load(address: str, model: str, streams: int,
                       frames: Sequence[bytes] | Sequence[NDArray[np.uint8]], interval_s: float = 0.0,
                       server_pid: int | None = None, policy: str | None = None) -> dict[str, Any]:
    """One trtserve.v1 StreamDetect per camera; frames are JPEG bytes or raw BGR pixels. ``policy``: the calls'
    overload policy (``block`` | ``drop_oldest``; None: the server's default)."""
    import grpc

    from trtserve.client import Frame, make_request
    from trtserve.v1 import detection_pb2 as pb
    from trtserve.v1 import detection_pb2_grpc as pb_grpc

    images = [make_request(Frame(f), model, jpeg_quality=None).image if isinstance(f, np.ndarray)
              else pb.Image(encoded=f) for f in frames]  # built once, before the clock starts

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DetectionServiceStub(channel)

        async def camera(stream: int, paced: AsyncIterator[tuple[int, pb.Image]], record: Record) -> None:
            sent: dict[int, float] = {}

            async def requests() -> AsyncIterator[pb.DetectRequest]:
                async for i, image in paced:
                    sent[i] = time.perf_counter()
                    yield pb.DetectRequest(model=model, stream_id=f"bench-{stream}", sequence=i, image=image)

            metadata = (("x-trtserve-overload-policy", policy),) if policy else None
            async for answer in stub.StreamDetect(requests(), metadata=metadata):
                record(sent.pop(answer.sequence), {pb.STATUS_OK: "ok", pb.STATUS_DROPPED: "dropped"}.get(
                    answer.status, f"errors:{answer.error_code or 'UNKNOWN'}"))

        return await _measure(address, model, streams, images, interval_s, camera, server_pid)


async def _kserve_load(address: str, model: str, streams: int, frames: Sequence[bytes],
                       interval_s: float = 0.0, server_pid: int | None = None, frames_per_request: int = 1
                       ) -> dict[str, Any]:
    """The same load over KServe v2: one ModelStreamInfer per camera through tritonclient's asyncio client.
    ``frames_per_request`` > 1: a camera's frames go ``frames_per_request`` to a request (``IMAGE`` of shape [N], as
    a gateway that gathers frames sends them; the last request of a camera may hold fewer); each frame's latency
    runs from its request's send."""
    import tritonclient.grpc.aio as tca
    from tritonclient.grpc import InferInput

    from trtserve.serving.settings import ServerSettings

    client = tca.InferenceServerClient(address)

    async def camera(stream: int, paced: AsyncIterator[tuple[int, bytes]], record: Record) -> None:
        sent: dict[str, tuple[float, int]] = {}  # request id -> (sent at, frames), in the order sent
        # with several frames per request, as many frames of a camera in flight as one frame per request leaves (the
        # server reads stream_max_in_flight requests ahead, whatever they carry, and refuses frames past its queue):
        # the server's default, not read from the server measured. One frame per request: unbounded here, as before
        # (the server's flow control holds the rest)
        slots = (asyncio.Semaphore(max(1, ServerSettings.stream_max_in_flight // frames_per_request))
                 if frames_per_request > 1 else None)

        def request(i: int, blobs: list[bytes]) -> dict[str, Any]:
            tensor = InferInput("IMAGE", [len(blobs)], "BYTES")
            tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_))
            request_id = f"{stream}-{i}"
            sent[request_id] = (time.perf_counter(), len(blobs))
            return {"model_name": model, "inputs": [tensor], "request_id": request_id}

        async def requests() -> AsyncIterator[dict[str, Any]]:
            gathered: list[bytes] = []
            async for i, blob in paced:
                gathered.append(blob)
                if len(gathered) == frames_per_request:
                    if slots is not None:
                        await slots.acquire()
                    yield request(i, gathered)
                    gathered = []
            if gathered:
                if slots is not None:
                    await slots.acquire()
                yield request(-1, gathered)

        async for result, error in client.stream_infer(requests()):
            if slots is not None:
                slots.release()
            if error is not None:  # an error names no request: the oldest one, as a stream answers in order
                _, count = sent.pop(next(iter(sent)))
                for _ in range(count):
                    record(None, "errors")
            else:
                sent_s, count = sent.pop(result.get_response().id)
                for _ in range(count):
                    record(sent_s, "ok")

    try:
        return await _measure(address, model, streams, frames, interval_s, camera, server_pid)
    finally:
        await client.close()


async def _http_load(address: str, model: str, streams: int, frames: Sequence[bytes],
                     interval_s: float = 0.0, server_pid: int | None = None, http_address: str = "",
                     in_flight: int = 4) -> dict[str, Any]:
    """The same load over KServe v2 HTTP/REST through tritonclient.http's asyncio client (binary tensors): per
    camera at most ``in_flight`` requests at once, as a ModelStreamInfer stream holds (stream_max_in_flight)."""
    import tritonclient.http.aio as tha
    from tritonclient.http import InferInput

    client = tha.InferenceServerClient(http_address, conn_limit=streams * in_flight)

    async def camera(stream: int, paced: AsyncIterator[tuple[int, bytes]], record: Record) -> None:
        slots = asyncio.Semaphore(in_flight)
        running: set[asyncio.Task[None]] = set()

        async def one(blob: bytes) -> None:
            tensor = InferInput("IMAGE", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[blob]], dtype=np.object_))
            sent = time.perf_counter()
            try:
                await client.infer(model, [tensor])
            except Exception:  # tritonclient's InferenceServerException, or the connection failing
                record(None, "errors")
            else:
                record(sent, "ok")
            finally:
                slots.release()

        async for _, blob in paced:
            await slots.acquire()
            task = asyncio.create_task(one(blob))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.wait(running)

    try:
        return await _measure(address, model, streams, frames, interval_s, camera, server_pid)
    finally:
        await client.close()


def run(repository: Path | None, model: str, precision: str, streams: int, frames_per_stream: int,
        server: str | None = None, kserve: bool = False, jpeg_quality: int | None = 90, load_fraction: float = 0.7,
        runs: int = 1, http: bool = False, http_server: str | None = None, server_args: Sequence[str] = (),
        frames_per_request: int = 1) -> StreamsReport:
    """Run the load and the raw-engine measurement; returns the report (see the module docstring).

    ``runs`` unpaced runs (peak throughput), each followed by the raw engine measured at the same batch
    size while the server is idle (so the two never share the CPU, and a slow spell of the machine
    touches both sides of a pair); throughput, raw figures, efficiency and CPU accounting are the
    medians over the runs. Then one run of cameras paced at ``load_fraction`` of the median peak, whose
    latency percentiles are the ones reported (an unpaced run only measures its own backlog).
    ``jpeg_quality`` None sends raw BGR pixels (trtserve.v1 only): what a client that decodes video itself
    sends, and the server then does no JPEG decoding. ``http`` drives KServe v2 over HTTP/REST instead (at
    ``http_server``; with ``server`` given and no ``http_server``, its host on port 8000). ``server_args``: more
    ``trtserve serve`` flags for the server started here (``--normalize-in-model``, ``--event-loop uvloop``, ...).
    """
    from contextlib import ExitStack

    from trtserve.bench.throughput import median_seconds
    from trtserve.client import DetectionClient
    from trtserve.detector import Detector
    from trtserve.repository import ModelRepository
    from trtserve.serving.process import start_server_process, stop_server_process
    from trtserve.serving.settings import serving_backend_options

    if (kserve or http) and jpeg_quality is None:
        raise UsageError("--raw frames are benchmarked over trtserve.v1 only (the KServe model input is "
                            "encoded image bytes); drop --raw, or --kserve / --http")
    if kserve and http:
        raise UsageError("--kserve (gRPC) and --http are two protocols; bench one at a time")
    if runs < 1:
        raise UsageError(f"--repeats {runs}: expected at least 1 run")
    if frames_per_request < 1:
        raise UsageError(f"--frames-per-request {frames_per_request}: expected at least 1")
    if frames_per_request > 1 and not kserve:
        raise UsageError("--frames-per-request applies to --kserve (a KServe request carries [N] images; a trtserve.v1 "
                         "message carries one frame)")
    frames = _sample_frames(frames_per_stream, jpeg_quality)
    config = ModelRepository(repository).get(model)
    process = None
    log = Path("build/bench-server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    if server is None:
        from trtserve.serving.process import free_port

        http_port = free_port() if http else None
        process, server = start_server_process(repository, model, precision, log, http_port=http_port,
                                               extra_args=server_args)
        http_server = f"127.0.0.1:{http_port}" if http else None
    elif http and http_server is None:
        http_server = f"{server.rsplit(':', 1)[0]}:8000"
    pairs: list[dict[str, Any]] = []
    try:
        with DetectionClient(server, model) as client:
            settings = client.model_info(model).batcher
            max_queue_delay_ms, instances = settings.max_queue_delay_ms, max(1, settings.instances)
            if frames_per_request > settings.max_batch_size:
                raise UsageError(f"--frames-per-request {frames_per_request} is over the model's max batch "
                                 f"({settings.max_batch_size}), the most images a request may carry")
        load: Callable[..., Coroutine[Any, Any, dict[str, Any]]] = (
            functools.partial(_http_load, http_address=http_server or "") if http
            else functools.partial(_kserve_load, frames_per_request=frames_per_request) if kserve else _native_load)
        pid = process.pid if process is not None else None
        with ExitStack() as stack:
            first = asyncio.run(load(server, model, streams, frames, server_pid=pid))  # type: ignore[arg-type]
            # the engine at the server's mean batch size, two ways: one call on all of ONNX Runtime's threads,
            # and the server's arrangement (``instances`` calls at once, cores / instances threads each); the
            # better one is the physical limit
            batch = max(1, round(first["mean_batch"]))
            images = [f if isinstance(f, np.ndarray) else
                      np.asarray(cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR))
                      for f in (list(frames) * batch)[:batch]]
            one = stack.enter_context(Detector.open(config, precision))
            arranged = stack.enter_context(Detector.open(config, precision, options=serving_backend_options(instances)))
            feeds: dict[str, NDArray[np.generic]] = {one.input_name: one.preprocessor.batch(images)[0]}

            def infer_one() -> object:
                return one.backend.infer(feeds)

            def infer_arranged() -> object:
                return arranged.backend.infer(feeds)

            batch_s = median_seconds(infer_arranged, repeats=10)
            for k in range(runs):
                result = first if k == 0 else asyncio.run(
                    load(server, model, streams, frames, server_pid=pid))  # type: ignore[arg-type]
                raw_s = median_seconds(infer_one, repeats=20)
                calls_per_s, cpu_s_per_call = _concurrent_calls(infer_arranged, instances, 10)
                pairs.append({"load": result, "raw_one_call_fps": batch / raw_s,
                              "raw_concurrent_fps": calls_per_s * batch, "engine_cpu_s_per_call": cpu_s_per_call})
            device = arranged.backend.device
        peak_fps = float(np.median([p["load"]["ok"] / p["load"]["elapsed_s"] for p in pairs]))
        paced = asyncio.run(load(server, model, streams, frames,  # type: ignore[arg-type]
                                 streams / (load_fraction * peak_fps))) \
            if peak_fps and load_fraction > 0 else pairs[0]["load"]  # nothing answered: no pace to set
    finally:
        if process is not None:
            stop_server_process(process)

    for p in pairs:
        r = p["load"]
        p["fps"] = r["ok"] / r["elapsed_s"]
        p["raw_fps"] = max(p["raw_one_call_fps"], p["raw_concurrent_fps"])
        p["efficiency"] = p["fps"] / p["raw_fps"]
        # where each answered frame's CPU went. On a CPU backend whose engine alone keeps every core busy (the
        # server's arrangement, measured above), efficiency can reach at most the engine's share of it (the
        # rest is decoding, letterboxing, NMS, gRPC on both ends): an estimate, not a bound, when the raw
        # figure comes from one call that leaves cores idle
        p["engine_ms"] = 1000 * p["engine_cpu_s_per_call"] / batch
        p["client_ms"] = 1000 * r["client_cpu_s"] / max(1, _answered(r))
        p["server_ms"] = 1000 * r["server_cpu_s"] / max(1, _answered(r)) if r["server_cpu_s"] is not None else None
        p["ceiling"] = (p["engine_ms"] / (p["server_ms"] + p["client_ms"])
                        if p["server_ms"] and device == "cpu" else None)
        roles = r.get("server_cpu_s_by_role")
        p["by_thread_ms"] = ({k: 1000 * v / max(1, _answered(r)) for k, v in roles.items()}
                             if roles is not None else None)
        # the engine's own CPU inside the server: GetModel's engine_cpu_seconds (thread CPU time around each backend
        # call, on the calling thread) and its runtime's worker threads (ONNX Runtime's intra-op pool, when
        # intra_op_threads > 1), so that the server's work outside it is not blurred by the engine running slower
        # or faster there than alone; a server that does not report it (older) falls back on the engine alone
        p["engine_in_server_ms"] = (1000 * r["engine_cpu_in_server_s"] / max(1, _answered(r))
                                    + (p["by_thread_ms"]["runtime"] if p["by_thread_ms"] is not None else 0.0)
                                    if r["engine_cpu_in_server_s"] > 0 else None)
        engine_in_server = p["engine_in_server_ms"] if p["engine_in_server_ms"] is not None else p["engine_ms"]
        p["outside_ms"] = p["server_ms"] - engine_in_server if p["server_ms"] is not None else None

    def median(key: str, digits: int) -> float:
        return round(float(np.median([p[key] for p in pairs])), digits)

    def median_if_known(key: str, digits: int) -> float | None:
        """None when some run lacks the figure (no server CPU time unless it runs here; no ceiling off CPU)."""
        return None if any(p[key] is None for p in pairs) else median(key, digits)

    loads = [p["load"] for p in pairs]
    lat = paced["latencies"]
    sent = streams * frames_per_stream * (runs + 1)
    return StreamsReport(
        protocol="kserve-http" if http else "kserve" if kserve else "trtserve.v1",
        frames="raw" if jpeg_quality is None else "jpeg",
        streams=streams, frames_per_stream=frames_per_stream, runs=runs,
        frames_sent=sent, answered=sum(_answered(r) for r in (*loads, paced)),
        fps=median("fps", 1), raw_backend_fps=median("raw_fps", 1),
        raw_one_call_fps=median("raw_one_call_fps", 1), raw_concurrent_fps=median("raw_concurrent_fps", 1),
        instances=instances, batch_compute_ms=round(batch_s * 1000, 2),
        efficiency=median("efficiency", 3), efficiency_runs=tuple(round(p["efficiency"], 3) for p in pairs),
        p50_ms=_percentile_ms(lat, 50), p95_ms=_percentile_ms(lat, 95), p99_ms=_percentile_ms(lat, 99),
        latency_load_fraction=load_fraction, paced_fps=round(paced["ok"] / paced["elapsed_s"], 1),
        p99_bound_ms=round(max_queue_delay_ms + 3 * 1000 * batch_s, 2),  # one batch as the server computes it
        peak_p99_ms=_percentile_ms(loads[0]["latencies"], 99),
        mean_batch=round(float(np.median([r["mean_batch"] for r in loads])), 2), raw_batch=batch,
        dropped=sum(r["dropped"] for r in (*loads, paced)), errors=sum(r["errors"] for r in (*loads, paced)),
        lost=sent - sum(_answered(r) for r in (*loads, paced)),
        max_queue_delay_ms=max_queue_delay_ms,
        engine_device=device, engine_cpu_ms_per_frame=median("engine_ms", 3),
        client_cpu_ms_per_frame=median("client_ms", 3), server_cpu_ms_per_frame=median_if_known("server_ms", 3),
        cpu_bound_efficiency_ceiling=median_if_known("ceiling", 3),
        server_cpu_outside_engine_ms_per_frame=median_if_known("outside_ms", 3),
        engine_in_server_cpu_ms_per_frame=median_if_known("engine_in_server_ms", 3),
        frames_per_request=frames_per_request,
        server_cpu_ms_per_frame_by_thread=(
            None if any(p["by_thread_ms"] is None for p in pairs) else
            {k: round(float(np.median([p["by_thread_ms"][k] for p in pairs])), 3) for k in pairs[0]["by_thread_ms"]}),
    )


def _metrics_overhead_us(model: str, precision: str, repeats: int = 20000) -> float:
    """Microseconds of metric updates per frame: one frame_ok (5 stage observations + counter) + a batch share."""
    from trtserve.monitoring.metrics import Metrics, ModelMetrics

    m = ModelMetrics(Metrics(process=False), model, precision)
    t0 = time.perf_counter()
    for _ in range(repeats):
        m.frame_ok(0.001, 0.002, 0.003, 0.0005, 0.0065)
        m.batch_size.observe(4)
    return (time.perf_counter() - t0) / repeats * 1e6


def run_shadow(repository: Path | None, model: str, precision: str, streams: int, frames_per_stream: int,
               shadow_rate: float, repeats: int = 2, jpeg_quality: int | None = 90, load_fraction: float = 0.7
               ) -> ShadowReport:
    """The same load with the FP32 shadow off and on (``shadow_rate``), alternating, each on a fresh server.

    Throughput is the unpaced peak; p99 is measured with cameras paced at ``load_fraction`` of the
    shadow-off peak, the same offered load for both. Ratios are medians over ``repeats`` pairs.
    """
    from trtserve.client import DetectionClient
    from trtserve.serving.process import start_server_process, stop_server_process

    if precision == "fp32":
        raise UsageError("the shadow is the FP32 model: benchmark a quantized precision (--precision int8)")
    frames = _sample_frames(frames_per_stream, jpeg_quality)
    log = Path("build/bench-shadow-server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    interval_s = 0.0
    drift: Any = None
    for k in range(repeats):
        for mode in (("off", "on") if k % 2 == 0 else ("on", "off")):  # ABBA: drift in the machine cancels out
            rate = shadow_rate if mode == "on" else 0.0
            process, server = start_server_process(repository, model, precision, log,
                                                   extra_args=["--shadow-rate", str(rate)])
            try:
                asyncio.run(_native_load(server, model, streams, frames[:16]))  # warm-up: arenas, first batches
                peak = asyncio.run(_native_load(server, model, streams, frames))
                fps = peak["ok"] / peak["elapsed_s"]
                if not interval_s:  # pace both modes from the first shadow-off peak
                    interval_s = streams / (load_fraction * fps)
                paced = asyncio.run(_native_load(server, model, streams, frames, interval_s))
                with DetectionClient(server, model) as client:
                    info = client.model_info(model)
                if mode == "on":
                    drift = info.drift
                runs[mode].append({"fps": fps, "p99_ms": _percentile_ms(paced["latencies"], 99),
                                   "lost": 2 * streams * frames_per_stream - _answered(peak) - _answered(paced),
                                   "samples": info.drift.samples, "skipped": info.drift.skipped})
            finally:
                stop_server_process(process)

    def med(mode: str, key: str) -> float:
        return float(np.median([r[key] for r in runs[mode]]))

    overhead_us = _metrics_overhead_us(model, precision)
    fps_ratios = [on["fps"] / off["fps"] for on, off in zip(runs["on"], runs["off"])]
    p99_ratios = [on["p99_ms"] / off["p99_ms"] for on, off in zip(runs["on"], runs["off"])]
    return ShadowReport(
        streams=streams, frames_per_stream=frames_per_stream, frames="raw" if jpeg_quality is None else "jpeg",
        precision=precision, shadow_rate=shadow_rate, repeats=repeats, latency_load_fraction=load_fraction,
        fps_shadow_off=round(med("off", "fps"), 1), fps_shadow_on=round(med("on", "fps"), 1),
        p99_ms_shadow_off=round(med("off", "p99_ms"), 2), p99_ms_shadow_on=round(med("on", "p99_ms"), 2),
        shadow_throughput_ratio=round(float(np.median(fps_ratios)), 3),
        shadow_p99_ratio=round(float(np.median(p99_ratios)), 3),
        shadow_throughput_ratios=tuple(round(r, 3) for r in fps_ratios),  # per pair: the spread is the noise
        shadow_p99_ratios=tuple(round(r, 3) for r in p99_ratios),
        drift_agreement_f1=round(drift.agreement_f1, 4) if drift is not None else None,
        drift_out_of_range_ratio=round(drift.out_of_range_ratio, 6) if drift is not None else None,
        shadow_samples=sum(r["samples"] for r in runs["on"]),
        shadow_skipped=sum(r["skipped"] for r in runs["on"]),
        metrics_overhead_us_per_frame=round(overhead_us, 2),
        metrics_overhead_fraction=round(overhead_us * 1e-6 * med("on", "fps"), 5),
        lost=sum(r["lost"] for mode in runs for r in runs[mode]),
    )
