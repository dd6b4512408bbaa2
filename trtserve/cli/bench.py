"""``trtserve demo | bench``: the scripted demo run and the benchmarks."""

from __future__ import annotations

import argparse
from pathlib import Path

from trtserve.cli.common import Subcommands, emit, model_command, open_detector
from trtserve.errors import UsageError


def cmd_demo(args: argparse.Namespace) -> int:
    from trtserve.bench.demo import run_demo, run_demo_over_grpc

    if args.in_process:
        with open_detector(args) as detector:
            result = run_demo(detector, args.out, args.video, progress=not args.json)
    else:
        shadow = args.shadow_rate if args.shadow_rate is not None else (0.25 if args.precision != "fp32" else 0.0)
        result = run_demo_over_grpc(args.repository, args.model, args.precision, args.out, args.video,
                                    progress=not args.json, shadow_rate=shadow)
    s = result.summary
    how = f"over gRPC at {s.server}, mean batch {s.mean_batch_size}" if s.mode == "grpc" \
        else f"in-process, batch {s.batch_size}"
    text = f"{s.frames} frames, {s.detections} detections, {s.fps} frames/s ({how}, {s.precision})\n"
    if s.ground_truth is not None:
        g = s.ground_truth
        text += f"agreement with ground truth: F1@0.5 {g.f1_iou50}, mean IoU {g.mean_iou}\n"
    if s.drift is not None:
        d = s.drift
        text += (f"{s.precision} vs the {d.shadow_precision} shadow on {d.samples} sampled frames "
                 f"({d.skipped} samples skipped while it was busy): agreement F1@0.5 {d.agreement_f1}, "
                 f"{d.out_of_range_ratio:.4%} of activations outside the calibrated range\n")
    text += f"annotated video: {result.annotated_video}\nsummary: {result.summary_json}"
    emit(s.as_dict(), args.json, text)
    return 0


def serve_flags(args: argparse.Namespace) -> list[str]:
    """The ``trtserve serve`` flags a bench passes to the server it starts (--normalize-in-model, --event-loop,
    --instances)."""
    flags: list[str] = []
    if args.normalize_in_model is not None:
        flags.append("--normalize-in-model" if args.normalize_in_model else "--no-normalize-in-model")
    if args.event_loop:
        flags += ["--event-loop", args.event_loop]
    if args.instances:
        flags += ["--instances", str(args.instances)]
    return flags


def cmd_bench(args: argparse.Namespace) -> int:
    shadow = args.what == "streams" and args.shadow_rate is not None
    args.precision = args.precision or ("int8" if shadow else "fp32")
    args.repeats = args.repeats or (2 if shadow else 1 if args.what == "streams" else 3 if args.what == "hostile"
                                    else 20)
    if args.what == "streams":
        from trtserve.bench import streams as bench_streams
    if shadow:
        if not 0 < args.shadow_rate <= 1:
            raise UsageError(f"--shadow-rate {args.shadow_rate}: expected a fraction of batches in (0, 1]")
        r = bench_streams.run_shadow(args.repository, args.model, args.precision, args.streams,
                                     args.frames_per_stream, args.shadow_rate, max(1, min(args.repeats, 5)),
                                     None if args.raw else 90)
        emit(r.as_dict(), args.json, (
            f"{r.streams} streams, {r.precision} served, FP32 shadow on {r.shadow_rate:.0%} of batches "
            f"vs off (median of {r.repeats} pairs):\n"
            f"  throughput {r.fps_shadow_on} vs {r.fps_shadow_off} frames/s "
            f"(ratio {r.shadow_throughput_ratio})\n  p99 at {r.latency_load_fraction:.0%} load "
            f"{r.p99_ms_shadow_on} vs {r.p99_ms_shadow_off} ms "
            f"(ratio {r.shadow_p99_ratio})\n  drift agreement F1 {r.drift_agreement_f1} over "
            f"{r.shadow_samples} frames ({r.shadow_skipped} samples skipped: shadow busy); metrics "
            f"{r.metrics_overhead_us_per_frame} us per frame"))
        return 0
    if args.what == "streams":
        s = bench_streams.run(args.repository, args.model, args.precision, args.streams, args.frames_per_stream,
                              args.server, args.kserve, None if args.raw else 90, runs=args.repeats,
                              http=args.http, server_args=serve_flags(args),
                              frames_per_request=args.frames_per_request)
        server_cpu = s.server_cpu_ms_per_frame
        emit(s.as_dict(), args.json, (
            f"{s.streams} streams x {s.frames_per_stream} {s.frames} frames over {s.protocol}: "
            f"{s.fps} frames/s; "
            f"raw engine at batch {s.raw_batch}: {s.raw_backend_fps} frames/s; efficiency {s.efficiency}"
            + (f" (medians of {s.runs} runs; efficiency per run {list(s.efficiency_runs)})" if s.runs > 1 else "")
            + "\n"
            f"latency p50 {s.p50_ms} ms  p95 {s.p95_ms} ms  p99 {s.p99_ms} ms; mean batch {s.mean_batch}; "
            f"dropped {s.dropped}, errors {s.errors}, lost {s.lost}\n"
            f"CPU per frame: server {'(not started here)' if server_cpu is None else f'{server_cpu} ms'}, "
            f"client {s.client_cpu_ms_per_frame} ms, "
            f"engine alone {s.engine_cpu_ms_per_frame} ms"
            + (f"; server outside the engine {s.server_cpu_outside_engine_ms_per_frame} ms"
               if s.server_cpu_outside_engine_ms_per_frame is not None else "")
            + (f"; efficiency these allow with every core busy: {s.cpu_bound_efficiency_ceiling}"
               if s.cpu_bound_efficiency_ceiling is not None else "")
            + ("\nserver CPU per frame by thread (ms): " + ", ".join(
                f"{k} {v}" for k, v in s.server_cpu_ms_per_frame_by_thread.items())
               if s.server_cpu_ms_per_frame_by_thread is not None else "")))
        return 0
    if args.what == "hostile":
        from trtserve.bench import hostile as bench_hostile

        h = bench_hostile.run(args.repository, args.model, args.precision, args.seconds, max(1, args.repeats))
        i = h.interference
        lines = [
            f"{h.model} {h.precision}: a camera at {bench_hostile.GOOD_FPS:g} fps alone vs beside 2 clients sending "
            f"decoder bombs at {bench_hostile.HOSTILE_BYTES_PER_S:g} B/s each (medians of {i.repeats}):",
            f"  camera p50 {i.good_p50_ms_alone} ms vs {i.good_p50_ms_beside_bombs} ms (ratio {i.p50_ratio}); "
            f"{i.bombs_refused} of {i.bombs_sent} bombs refused, answered in {i.bomb_answer_p50_ms} ms p50",
            *(f"flood of {f.concurrent_calls} concurrent unary calls on max_queue_size {f.max_queue_size}: {f.ok} ok, "
              f"{f.refused} refused in {f.refusal_p50_ms} ms p50 / {f.refusal_p99_ms} ms p99 ({f.calls_per_s} calls/s "
              f"answered: at least {f.queueing_bound_ms} ms of queueing), {f.other_errors} other errors, {f.lost} lost"
              for f in h.flood)]
        emit(h.as_dict(), args.json, "\n".join(lines))
        return 0
    if args.what == "overload":
        from trtserve.bench import overload as bench_overload

        o = bench_overload.run(args.repository, args.model, args.precision, args.streams, args.seconds,
                               server=args.server, server_args=tuple(serve_flags(args)))
        lines = [f"{o.model} {o.precision}: {o.streams} StreamDetect cameras, peak {o.peak_fps} frames/s (closed loop, "
                 "block); then offered open loop:"]
        lines += [f"  {p.offered_x_peak:g}x {p.mode:<11} ({p.offered_fps} offered/s): goodput {p.goodput_fps}/s = "
                  f"{p.goodput_ratio} x peak; {p.refused} refused in {p.refusal_p50_ms} ms p50 / {p.refusal_p99_ms} "
                  f"ms p99; ok p50 {p.ok_p50_ms} ms p99 {p.ok_p99_ms} ms; {p.other_errors} other errors; lost {p.lost}"
                  + ("\n      no frame answered OK" if p.client_cpu_ms_per_ok is None else
                     f"\n      CPU per frame answered OK: client {p.client_cpu_ms_per_ok} ms")
                  + ("" if p.server_cpu_ms_per_ok_by_thread is None else ", server " + ", ".join(
                      f"{k} {v}" for k, v in p.server_cpu_ms_per_ok_by_thread.items()))
                  for p in o.phases]
        emit(o.as_dict(), args.json, "\n".join(lines))
        return 0
    if args.what == "transport":
        from trtserve.bench import transport as bench_transport

        t = bench_transport.run(args.rates or (100, 400, 1600), args.streams, args.seconds)
        lines = [f"a bare trtserve.v1 StreamDetect servicer, {t.streams} paced cameras, {t.frame_bytes}-byte JPEG "
                 f"frames, {t.seconds_per_rate:g} s per rate: server CPU per frame (ms)"]
        lines += [f"  {r.offered_fps:g} frames/s offered ({r.answered_fps} answered): event loop "
                  f"{r.event_loop_ms_per_frame} + gRPC threads {r.other_ms_per_frame} = {r.server_ms_per_frame}; "
                  f"lost {r.lost}" for r in t.rates]
        emit(t.as_dict(), args.json, "\n".join(lines))
        return 0
    if args.what == "calibration":
        from trtserve.bench import calibration as bench_calibration
        from trtserve.repository import ModelRepository

        c = bench_calibration.run(ModelRepository(args.repository).get(args.model), args.frames, args.eval_images,
                                  rounds=args.repeats)
        emit(c.as_dict(), args.json, c.describe())
        return 0

    from trtserve.bench.throughput import throughput

    with open_detector(args) as detector:
        rows = throughput(detector, args.batch, args.repeats)
    lines = [f"{detector.config.name} {detector.precision} on {detector.backend.name} (640x480 frames, "
             f"median of {args.repeats})"]
    lines += [f"batch {r.batch:>3}: raw backend {r.raw_backend_fps:>8} frames/s   end to end "
              f"{r.end_to_end_fps:>8} frames/s   efficiency {r.efficiency:.3f}   "
              f"x{r.speedup_vs_first} vs batch {rows[0].batch}" for r in rows]
    emit([r.as_dict() for r in rows], args.json, "\n".join(lines))
    return 0


def register(sub: Subcommands) -> None:
    """Add this group's subcommands to the ``trtserve`` parser."""
    p = model_command(sub, "demo", "detect on the sample video; write an annotated video and a JSON summary")
    p.add_argument("--out", type=Path, default=Path("build/demo"), help="output folder (default build/demo)")
    p.add_argument("--video", type=Path, default=None, help="a video file instead of the bundled sample")
    p.add_argument("--precision", choices=["fp32", "int8"], default="int8",
                   help="default int8, watched by an FP32 shadow (see --shadow-rate)")
    p.add_argument("--shadow-rate", type=float, default=None, metavar="R",
                   help="fraction of batches compared with the FP32 shadow (default 0.25 for int8, 0 for fp32)")
    p.add_argument("--in-process", action="store_true", help="detect in this process instead of over gRPC")
    p.set_defaults(func=cmd_demo)

    p = model_command(sub, "bench", "'streams' (default): concurrent streams against a server beside the raw engine; "
                      "'throughput': in-process, raw backend vs end to end per batch size; "
                      "'calibration': trtserve's calibrator vs ONNX Runtime's quantize_static; "
                      "'hostile': decoder bombs beside a camera, and a unary flood on a full queue; "
                      "'overload': goodput under 2x/4x overload per StreamDetect policy (block, drop_oldest) and "
                      "unary; 'transport': what gRPC alone costs the server per frame, at several rates (a bare "
                      "servicer)")
    p.add_argument("what", nargs="?",
                   choices=["streams", "throughput", "calibration", "hostile", "overload", "transport"],
                   default="streams")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="bench hostile, overload: seconds per phase; transport: per rate (default 5)")
    p.add_argument("--rates", type=float, nargs="+", metavar="FPS",
                   help="bench transport: total frames/s offered, one run each (default 100 400 1600)")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams (bench streams)")
    p.add_argument("--frames-per-stream", type=int, default=150, help="frames per stream (bench streams)")
    p.add_argument("--server", "--address", dest="server", metavar="ADDR",
                   help="a running server (bench streams); default: start one here")
    p.add_argument("--kserve", action="store_true", help="drive the KServe v2 API with tritonclient")
    p.add_argument("--http", action="store_true",
                   help="bench streams: drive KServe v2 over HTTP/REST with tritonclient.http (binary tensors; "
                        "with --server, its host's port 8000)")
    p.add_argument("--frames-per-request", type=int, default=1, metavar="N",
                   help="bench streams --kserve: each camera's frames go N to a ModelInfer request (IMAGE [N], as a "
                        "gateway gathering frames sends them; default 1)")
    p.add_argument("--raw", action="store_true",
                   help="bench streams: send raw BGR pixels instead of JPEG (trtserve.v1; no decoding in the server)")
    p.add_argument("--frames", type=int, default=64, help="calibration frames (bench calibration)")
    p.add_argument("--eval-images", type=int, default=300, help="held-out images (bench calibration)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--repeats", type=int, default=None,
                   help="bench throughput: timing repeats (default 20); bench streams: load runs, each beside the "
                        "raw engine, medians reported (default 1); with --shadow-rate: off/on pairs (default 2, "
                        "at most 5)")
    p.add_argument("--precision", choices=["fp32", "int8"], default=None,
                   help="default fp32; int8 with --shadow-rate (the shadow is FP32)")
    p.add_argument("--shadow-rate", type=float, metavar="R",
                   help="bench streams with the FP32 shadow on R of the batches against off, in one run")
    p.add_argument("--normalize-in-model", action=argparse.BooleanOptionalAction, default=None,
                   help="bench streams / overload: the server started here normalizes in the model (uint8 input)")
    p.add_argument("--event-loop", choices=["asyncio", "uvloop", "auto"],
                   help="bench streams / overload: the event loop of the server started here")
    p.add_argument("--instances", metavar="N|auto", help="bench streams / overload: batcher.instances of the server")
    p.set_defaults(func=cmd_bench)
