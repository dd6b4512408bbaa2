"""``trtserve bench overload``: goodput when more frames arrive than the server can answer, per overload policy.

Against a ``trtserve serve`` process started here (or ``--server``): first the peak — ``streams`` closed-loop
StreamDetect cameras, as fast as answered (``block``) — then the same cameras offered open loop at 2x and 4x that
rate (each camera sends on its schedule whatever is pending), once per stream overload policy:

* ``block``: the server stops reading a call with ``stream_max_in_flight`` frames in it; HTTP/2 flow control holds
  the rest in the client, which sends late; nothing is refused;
* ``drop_oldest``: a newer frame of a stream replaces the one waiting, which is answered ``STATUS_DROPPED`` at once;

and, for the admission refusals, unary Detect calls offered open loop at the same rates (past ``max_queue_size``
admitted frames, ``RESOURCE_EXHAUSTED`` before decoding; :func:`trtserve.bench.hostile._unary_load`).

Per row: goodput (answered OK per second over the phase) / peak, how many frames were refused (DROPPED or
RESOURCE_EXHAUSTED) and how fast (p50 / p99 from send to answer), the OK answers' p50, and frames lost (sent
and never answered: must be 0); and where the CPU went per frame answered OK — this client's (on the server's
cores when the server runs here, it pays for every refused frame too) and, for a server started here, the server's
by thread (:func:`trtserve.threads.cpu_s_by_role`) — which says how much of a goodput below the peak is the
refusals' cost on each side.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtserve.bench.hostile import _unary_load
from trtserve.bench.streams import _answered, _native_load, _percentile_ms, _sample_frames
from trtserve.errors import UsageError
from trtserve.reports import JsonReport
from trtserve.threads import cpu_delta_by_role, server_cpu_s_by_role

POLICIES = ("block", "drop_oldest")
REFUSALS = ("dropped", "RESOURCE_EXHAUSTED")  # the answers that refuse a frame because of load


@dataclass(frozen=True)
class OverloadPhase(JsonReport):
    mode: str  # block | drop_oldest (StreamDetect) | unary (Detect)
    offered_x_peak: float
    offered_fps: float
    seconds: float  # the phase's length, its tail included
    sent: int
    goodput_fps: float  # answered OK per second
    goodput_ratio: float  # goodput / peak (target >= 0.95 at 2x)
    refused: int  # STATUS_DROPPED or RESOURCE_EXHAUSTED
    refusal_p50_ms: float  # from send to the refusal (target <= 10 for RESOURCE_EXHAUSTED)
    refusal_p99_ms: float
    ok_p50_ms: float
    ok_p99_ms: float
    other_errors: int
    lost: int  # sent and never answered (must be 0)
    client_cpu_ms_per_ok: float | None  # this process's CPU over the phase, per frame answered OK (None: none was)
    # the server's CPU per frame answered OK by thread (engine, runtime, decode, drift, event_loop, other); None
    # unless the server was started here (Linux), or when no frame was answered OK
    server_cpu_ms_per_ok_by_thread: dict[str, float] | None = None


@dataclass(frozen=True)
class OverloadReport(JsonReport):
    model: str
    precision: str
    streams: int
    peak_fps: float  # closed-loop StreamDetect, block
    phases: tuple[OverloadPhase, ...]
    lost: int  # over every phase


async def _stream_phase(address: str, model: str, streams: int, frames: list[bytes], offered_fps: float,
                        seconds: float, policy: str) -> dict[str, Any]:
    per_stream = max(1, round(seconds * offered_fps / streams))
    cycled: list[bytes] = [frames[i % len(frames)] for i in range(per_stream)]
    result = await _native_load(address, model, streams, cycled, streams / offered_fps, policy=policy)
    result["sent"] = streams * per_stream
    return result


def run(repository: Path | None, model: str, precision: str = "fp32", streams: int = 8, seconds: float = 5.0,
        factors: tuple[float, ...] = (2.0, 4.0), server: str | None = None,
        server_args: tuple[str, ...] = ()) -> OverloadReport:
    """Measure the peak, then every (factor, mode) phase (see the module docstring); ``seconds`` per phase."""
    from trtserve.serving.process import start_server_process, stop_server_process

    if streams < 1 or seconds <= 0:
        raise UsageError(f"--streams {streams} --seconds {seconds}: expected at least 1 stream and some seconds")
    frames: list[bytes] = _sample_frames(30, 90)  # type: ignore[assignment]
    process = None
    if server is None:
        log = Path("build/bench-overload.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        process, server = start_server_process(repository, model, precision, log, extra_args=server_args)
    phases: list[OverloadPhase] = []
    pid = process.pid if process is not None else None  # the server's CPU is read only where it runs here
    try:
        asyncio.run(_native_load(server, model, streams, frames[:8]))  # warm-up: arenas, first batches
        peak_run = asyncio.run(_native_load(server, model, streams, [frames[i % 30] for i in range(150)],
                                            policy="block"))
        peak = peak_run["ok"] / peak_run["elapsed_s"]
        if not peak:
            raise UsageError(f"the server answered no frame of {model} OK; see build/bench-overload.log")
        for factor in factors:
            offered = factor * peak
            for mode in (*POLICIES, "unary"):
                client0, server0 = time.process_time(), server_cpu_s_by_role(pid)
                if mode == "unary":
                    load = asyncio.run(_unary_load(server, model, frames, offered, 0, seconds))
                    ok, refused = load["OK"], load["RESOURCE_EXHAUSTED"]
                    assert isinstance(ok, list) and isinstance(refused, list) and isinstance(load["other"], list)
                    sent, lost = int(load["started"]), int(load["lost"])  # type: ignore[arg-type]
                    other, elapsed = len(load["other"]), seconds  # type: ignore[arg-type]
                else:
                    r = asyncio.run(_stream_phase(server, model, streams, frames, offered, seconds, mode))
                    by = r["latencies_by_outcome"]
                    ok = by.get("ok", [])
                    refused = [t for k in REFUSALS for t in by.get(k, [])]
                    sent, elapsed = r["sent"], r["elapsed_s"]
                    other = r["errors"] - len(by.get("RESOURCE_EXHAUSTED", []))
                    lost = sent - _answered(r)
                client_s, server1 = time.process_time() - client0, server_cpu_s_by_role(pid)
                goodput = len(ok) / elapsed
                per_ok = 1000 / len(ok) if ok else None  # no frame answered OK: no per-frame figure
                by_thread = (None if server0 is None or server1 is None or per_ok is None else
                             {k: round(v * per_ok, 3) for k, v in cpu_delta_by_role(server0, server1).items()})
                phases.append(OverloadPhase(
                    mode, factor, round(offered, 1), round(elapsed, 2), sent, round(goodput, 1),
                    round(goodput / peak, 3), len(refused), _percentile_ms(refused, 50), _percentile_ms(refused, 99),
                    _percentile_ms(ok, 50), _percentile_ms(ok, 99), other, lost,
                    None if per_ok is None else round(client_s * per_ok, 3), by_thread))
    finally:
        if process is not None:
            stop_server_process(process)
    return OverloadReport(model, precision, streams, round(peak, 1), tuple(phases), sum(p.lost for p in phases))
