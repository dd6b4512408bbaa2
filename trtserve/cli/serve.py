"""``trtserve serve | stream | health``: the gRPC server, a video streamed to it, and its health probe."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtserve.cli.common import EXIT_USER_ERROR, Subcommands, native_warnings_filtered
from trtserve.errors import ConfigError, RemoteCallError, UsageError
from trtserve.reports import JsonReport

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


def run_event_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """``asyncio.run(main)`` on the loop ``event_loop`` names; ``auto`` is uvloop where it is installed, else asyncio's.
    ConfigError when ``uvloop`` is asked for and not installed (or not available on this platform)."""
    import asyncio

    if event_loop in ("uvloop", "auto"):
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise ConfigError("event_loop: uvloop is not installed (pip install uvloop; Linux and macOS only); "
                                  "use asyncio") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from trtserve.repository import ModelRepository
    from trtserve.serving.server import Server
    from trtserve.serving.settings import load_server_settings

    settings = load_server_settings(args.config, overrides={
        "host": args.host, "grpc_port": args.grpc_port, "models": args.model or None, "precision": args.precision,
        "workers": args.workers, "intra_op_threads": args.intra_op_threads,
        "batcher.max_batch_size": args.max_batch_size,
        "batcher.max_queue_delay_ms": args.max_queue_delay_ms, "batcher.instances": args.instances,
        "tls.cert_file": args.tls_cert, "tls.key_file": args.tls_key, "tls.client_ca_file": args.tls_client_ca,
        "auth.tokens_file": args.tokens_file, "metrics_port": args.metrics_port, "http_port": args.http_port,
        "drift.sample_rate": args.shadow_rate, "normalize_in_model": args.normalize_in_model,
        "event_loop": args.event_loop})

    async def run() -> None:
        server = Server(settings, ModelRepository(args.repository))
        await server.start()
        metrics = f", metrics on port {server.metrics_port}" if server.metrics_port else ""
        metrics += f", KServe HTTP on port {server.http_port}" if server.http_port else ""
        sys.stderr.write(f"trtserve: serving {list(settings.models)} ({settings.precision}) on "
                         f"{settings.host}:{server.port}{metrics}\n")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if hasattr(signal, "SIGHUP"):  # not on Windows
            loop.add_signal_handler(signal.SIGHUP, server.reload_tokens)  # re-read the tokens file
        await stop.wait()
        sys.stderr.write("trtserve: draining\n")
        await server.stop()

    from trtserve.logs import rate_limit_native_stderr

    restore_stderr = rate_limit_native_stderr()  # libjpeg / libpng print a line per bad frame a client sends
    try:
        run_event_loop(run(), settings.event_loop)
    finally:
        restore_stderr()
    return 0


@dataclass(frozen=True)
class StreamSummary(JsonReport):
    """What ``trtserve stream`` measured: frames answered with detections, and the server's own latency."""

    frames: int  # answered with detections
    errors: int  # answered with an error status
    fps: float  # answered frames per second, wall clock
    p50_ms: float  # of the server's total time per frame (its answer's timing)
    p99_ms: float


def paced(frames: Iterator[NDArray[np.uint8]], fps: float, clock: Callable[[], float] | None = None,
          sleep: Callable[[float], None] | None = None) -> Iterator[NDArray[np.uint8]]:
    """``frames`` at most ``fps`` a second: frame ``i`` is not given before ``i / fps`` seconds from the first, as a
    camera would deliver them (``--realtime``). A frame that is late is given at once: no catching up by bursts is
    needed, and the schedule never drifts (it is kept from the first frame, not from the last)."""
    import time

    now, wait = clock or time.monotonic, sleep or time.sleep
    start: float | None = None
    for i, frame in enumerate(frames):
        if start is None:
            start = now()
        due = start + i / fps
        if (ahead := due - now()) > 0:
            wait(ahead)
        yield frame


def frame_line(answer: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """One ``stream --json`` line: the frame's number and detections (xyxy in frame pixels) and the server's
    time, or its error code and reason."""
    from trtserve.cli.detect import detection_items
    from trtserve.client import detections_of
    from trtserve.v1 import detection_pb2 as pb

    if answer.status != pb.STATUS_OK:
        return {"frame": int(answer.sequence), "error": answer.error_code, "reason": answer.reason}
    return {"frame": int(answer.sequence), "detections": detection_items(detections_of(answer), names),
            "server_ms": round(1000 * answer.timing.total_seconds, 2)}


def cmd_stream(args: argparse.Namespace) -> int:
    with native_warnings_filtered():  # FFmpeg's lines about a broken source: rate-limited, never raw
        return _stream(args)


def _stream(args: argparse.Namespace) -> int:
    import itertools
    import json
    import time

    import cv2
    import grpc
    import numpy as np

    from trtserve.client import DetectionClient, detections_of
    from trtserve.errors import InvalidFrameError
    from trtserve.v1 import detection_pb2 as pb
    from trtserve.vision.draw import annotate
    from trtserve.vision.video import Video

    try:
        video = Video(int(args.source) if args.source.isdigit() else args.source)
    except InvalidFrameError as exc:
        raise UsageError(f"{exc}; SOURCE must be a video file, a camera index or an rtsp:// / http:// stream URL"
                         ) from None
    fps_in = video.fps
    source_frames = video.frames(args.frames)
    first = next(source_frames, None)  # OpenCV "opens" many files it cannot read a frame of
    if first is None:
        video.close()
        raise UsageError(f"{args.source}: no frame could be read; SOURCE must be a video file, a camera index or an "
                         "rtsp:// / http:// stream URL")
    source_frames = itertools.chain([first], source_frames)
    if args.realtime:
        source_frames = paced(source_frames, fps_in)

    writer = None
    latencies: list[float] = []
    ok_frames = errors = 0
    t0 = last = time.monotonic()
    try:
        with DetectionClient(args.server, args.model, None if args.raw else args.jpeg_quality) as client:
            names = tuple(client.model_info(args.model).classes)
            for frame, answer in client.stream_frames(source_frames, args.stream_id):
                if args.json:
                    sys.stdout.write(json.dumps(frame_line(answer, names)) + "\n")
                if answer.status != pb.STATUS_OK:
                    errors += 1
                    if not args.json:
                        sys.stderr.write(f"frame {answer.sequence}: {answer.error_code} {answer.reason}\n")
                    continue
                ok_frames += 1
                latencies.append(answer.timing.total_seconds)
                if args.out is not None:
                    if writer is None:
                        h, w = frame.shape[:2]
                        writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter.fourcc(*"mp4v"), fps_in, (w, h))
                    writer.write(annotate(frame, detections_of(answer), names))
                now = time.monotonic()
                if now - last >= 1.0 and not args.json:
                    sys.stderr.write(f"{ok_frames / (now - t0):6.1f} frames/s   server latency p50 "
                                     f"{1000 * float(np.median(latencies[-100:])):.1f} ms\n")
                    last = now
    except grpc.RpcError as exc:
        raise RemoteCallError(f"server {args.server}: {exc.code().name}: {exc.details()}") from None
    finally:
        video.close()
        if writer is not None:
            writer.release()
    elapsed = time.monotonic() - t0
    lat = np.array(latencies or [0.0]) * 1000
    s = StreamSummary(frames=ok_frames, errors=errors, fps=round(ok_frames / elapsed, 1) if elapsed else 0.0,
                      p50_ms=round(float(np.percentile(lat, 50)), 2), p99_ms=round(float(np.percentile(lat, 99)), 2))
    if args.json:  # JSON Lines: the frames, then the summary
        sys.stdout.write(json.dumps({"summary": s.as_dict()}) + "\n")
    else:
        sys.stdout.write(f"{ok_frames} frames ({errors} errors), {s.fps} frames/s, server latency p50 {s.p50_ms} ms, "
                         f"p99 {s.p99_ms} ms\n")
    return 0 if errors == 0 else EXIT_USER_ERROR


def cmd_health(args: argparse.Namespace) -> int:
    from trtserve.deploy.health import check_health, default_address

    result = check_health(args.address or default_address(), args.service, args.timeout_s)
    sys.stdout.write(f"{result.detail}\n")
    return 0 if result.serving else 1


def register(sub: Subcommands) -> None:
    """Add this group's subcommands to the ``trtserve`` parser."""
    p = sub.add_parser("serve", help="serve models over gRPC (trtserve.v1, KServe v2, health, reflection) and "
                                     "KServe v2 over HTTP")
    p.add_argument("--config", type=Path, help="server YAML (precedence: file < TRTSERVE_* env < flags)")
    p.add_argument("--host")
    p.add_argument("--grpc-port", type=int)
    p.add_argument("--model", action="append", help="model to load (repeatable; the first is the default)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    p.add_argument("--workers", type=int, help="threads that decode and letterbox frames (each engine has its own)")
    p.add_argument("--intra-op-threads", type=int,
                   help="ONNX Runtime threads per batch (default: cores / instances)")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--max-queue-delay-ms", type=float)
    p.add_argument("--instances", type=lambda v: v if v == "auto" else int(v), metavar="N|auto",
                   help="concurrent batches per model; auto: measured on the engine at load")
    p.add_argument("--normalize-in-model", action=argparse.BooleanOptionalAction, default=None,
                   help="the model normalizes the letterboxed uint8 frames itself (ONNX Runtime)")
    p.add_argument("--event-loop", choices=["asyncio", "uvloop", "auto"],
                   help="asyncio (default) | uvloop (pip install uvloop; Linux / macOS) | auto: uvloop if installed")
    p.add_argument("--tls-cert", help="server certificate (PEM); with --tls-key enables TLS")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--tls-client-ca", help="CA bundle for client certificates: enables mutual TLS")
    p.add_argument("--tokens-file", help="bearer tokens, one per line: calls without one are UNAUTHENTICATED")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default 8002; 0: any free port)")
    p.add_argument("--http-port", metavar="PORT|off",
                   help="KServe v2 HTTP/REST port (default 8000; 0: any free port; off: no HTTP)")
    p.add_argument("--shadow-rate", type=float, metavar="R",
                   help="compare this fraction of batches with the FP32 shadow, for every model (0 turns it off)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stream", help="stream a video file, camera or RTSP/HTTP URL to a server")
    p.add_argument("source", metavar="SOURCE", help="video file, camera index (0) or rtsp:// / http:// URL")
    p.add_argument("--server", "--address", dest="server", default="127.0.0.1:8001", metavar="ADDR",
                   help="the server's host:port (default 127.0.0.1:8001)")
    p.add_argument("--model", default="")
    p.add_argument("--stream-id", default="stream-0")
    p.add_argument("--out", type=Path, help="write the annotated video here")
    p.add_argument("--frames", type=int, default=0, help="stop after this many frames (0: all)")
    enc = p.add_mutually_exclusive_group()
    enc.add_argument("--jpeg-quality", type=int, default=90)
    enc.add_argument("--raw", action="store_true", help="send raw BGR pixels instead of JPEG")
    p.add_argument("--realtime", action="store_true",
                   help="send frames at the source's frame rate (a file is otherwise read as fast as answered)")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines on stdout: one line per frame (detections or error), then {\"summary\": ...}")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("health", help="ask a server's grpc.health.v1 whether it is SERVING (exit 0) or not (1)")
    p.add_argument("--server", "--address", dest="address", metavar="ADDR",
                   help="host:port (default 127.0.0.1:$TRTSERVE_GRPC_PORT or 8001); --address is the same option")
    p.add_argument("--service", default="", help="a model name, or '' (default) for the whole server")
    p.add_argument("--timeout-s", type=float, default=3.0)
    p.set_defaults(func=cmd_health)
