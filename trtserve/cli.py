"""``trtserve`` command line: a thin adapter over the library.

User errors (bad configuration, missing files, undecodable images) print one line to stderr and
exit with status 2; no traceback. Pass ``--verbose`` to see debug logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trtserve import __version__
from trtserve.errors import TrtserveError

logger = logging.getLogger("trtserve")
EXIT_USER_ERROR = 2


def _detector(args: argparse.Namespace) -> Any:
    from trtserve.backends import BackendOptions
    from trtserve.detector import Detector
    from trtserve.repository import ModelRepository

    config = ModelRepository(args.repository).get(args.model)
    options = BackendOptions(intra_op_threads=args.threads)
    return Detector.open(config, getattr(args, "precision", "fp32"), options=options)


def _emit(payload: Any, as_json: bool, text: str) -> None:
    sys.stdout.write((json.dumps(payload, indent=2) if as_json else text) + "\n")


def cmd_models(args: argparse.Namespace) -> int:
    from trtserve.repository import ModelRepository

    rows: list[dict[str, Any]] = [{"name": c.name, "head": c.head.type, "precisions": c.available_precisions(),
             "input": [c.input.height_px, c.input.width_px], "classes": len(c.class_names),
             "max_batch_size": c.max_batch_size} for c in ModelRepository(args.repository).all()]
    lines = [f"{r['name']:<20} head={r['head']:<8} input={r['input'][0]}x{r['input'][1]} "
             f"classes={r['classes']} precisions={','.join(r['precisions'])}" for r in rows]
    _emit(rows, args.json, "\n".join(lines) or "(no models)")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    import cv2

    from trtserve.vision.draw import annotate

    if args.out is not None and len(args.images) != 1:
        raise TrtserveError("--out takes exactly one IMAGE; run once per image or drop --out")
    with _detector(args) as detector:
        thresholds = detector.with_thresholds(score=args.score_threshold)
        blobs = []
        for path in args.images:
            try:
                blobs.append(Path(path).read_bytes())
            except OSError as exc:
                blobs.append(b"")
                logger.debug("cannot read %s: %s", path, exc)
        results = detector.detect(blobs, thresholds)
        payload, lines, failed = [], [], 0
        names = detector.config.class_names
        for path, blob, result in zip(args.images, blobs, results):
            if result.detections is None:
                failed += 1
                reason = "cannot read file" if not blob else str(result.error)
                payload.append({"image": path, "error": reason})
                lines.append(f"{path}: error: {reason}")
                continue
            det = result.detections
            items = [{"label": names[int(c)], "class_id": int(c), "score": round(float(s), 4),
                      "box_xyxy": [round(float(v), 1) for v in b]}
                     for b, s, c in zip(det.boxes_xyxy, det.scores, det.class_ids)]
            payload.append({"image": path, "detections": items})
            lines.append(f"{path}: {len(items)} detections")
            lines += [f"  {d['label']:<10} {d['score']:.2f} {d['box_xyxy']}" for d in items]
            if args.out is not None:
                frame = detector.prepare(blob)
                if not cv2.imwrite(str(args.out), annotate(frame, det, names)):
                    raise TrtserveError(f"cannot write {args.out}; check the folder exists and the extension")
        _emit(payload, args.json, "\n".join(lines))
    return EXIT_USER_ERROR if failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from trtserve.evaluation import evaluate

    with _detector(args) as detector:
        result = evaluate(detector, args.images)
    d = result.as_dict()
    _emit(d, args.json, f"{args.model} {d['precision']}: mAP50 {d['map50']:.4f}  mAP50-95 {d['map50_95']:.4f}  "
                        f"({d['images']} images, {d['seconds']} s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from trtserve.demo import run_demo, run_demo_over_grpc

    if args.in_process:
        with _detector(args) as detector:
            result = run_demo(detector, args.out, args.video, progress=not args.json)
    else:
        shadow = args.shadow_rate if args.shadow_rate is not None else (0.25 if args.precision != "fp32" else 0.0)
        result = run_demo_over_grpc(args.repository, args.model, args.precision, args.out, args.video,
                                    progress=not args.json, shadow_rate=shadow)
    s = result.summary
    how = f"over gRPC at {s['server']}, mean batch {s['mean_batch_size']}" if s["mode"] == "grpc" \
        else f"in-process, batch {s['batch_size']}"
    text = f"{s['frames']} frames, {s['detections']} detections, {s['fps']} frames/s ({how}, {s['precision']})\n"
    if "ground_truth" in s:
        g = s["ground_truth"]
        text += f"agreement with ground truth: F1@0.5 {g['f1_iou50']}, mean IoU {g['mean_iou']}\n"
    if "drift" in s:
        d = s["drift"]
        text += (f"{s['precision']} vs the {d['shadow_precision']} shadow on {d['samples']} sampled frames "
                 f"({d['skipped']} samples skipped while it was busy): agreement F1@0.5 {d['agreement_f1']}, "
                 f"{d['out_of_range_ratio']:.4%} of activations outside the calibrated range\n")
    text += f"annotated video: {result.annotated_video}\nsummary: {result.summary_json}"
    _emit(s, args.json, text)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from trtserve.calibration import FrameSource, run_calibration
    from trtserve.repository import ModelRepository

    if (args.images is None) == (args.video is None):
        raise TrtserveError("give exactly one of --images DIR or --video FILE")
    config = ModelRepository(args.repository).get(args.model)
    source = (FrameSource.from_images(args.images, args.num) if args.images is not None
              else FrameSource.from_video(args.video, args.num))
    report = run_calibration(config, source, args.method, args.batch, args.percentile, tuple(args.trt_version),
                             progress=not args.json, evaluate_images=args.eval_images,
                             auto_exclude_target=args.target_agreement if args.auto_exclude else None)
    written = [report["artifacts"]["qdq_onnxruntime"], report["artifacts"]["qdq_tensorrt"],
               *report["artifacts"]["trt_caches"].values()]
    text = (f"calibrated {config.name} ({report['method']}) on {report['frames_used']} frames "
            f"({report['frames_skipped']} unreadable skipped) in {report['seconds']} s; "
            f"{len(report['tensors'])} tensors, {len(report['excluded'])} nodes kept float\n"
            f"wrote {', '.join(written)} in {config.directory}")
    if "evaluation" in report:
        e = report["evaluation"]
        text += (f"\nmAP50-95 fp32 {e['map50_95_fp32']:.4f} int8 {e['map50_95_int8']:.4f}; "
                 f"int8 agreement with fp32 F1 {e['agreement_f1']}")
    _emit(report, args.json, text)
    return 0


def cmd_scenes(args: argparse.Namespace) -> int:
    from trtserve.synthetic import CALIBRATION_SEED, render_scene, write_coco

    path = write_coco([render_scene(args.seed if args.seed is not None else CALIBRATION_SEED, i)
                       for i in range(args.num)], args.out)
    _emit({"images": args.num, "annotations": str(path)}, args.json, f"wrote {args.num} scenes and {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from trtserve.repository import ModelRepository
    from trtserve.server import Server
    from trtserve.server_config import load_server_settings

    settings = load_server_settings(args.config, overrides={
        "host": args.host, "grpc_port": args.grpc_port, "models": args.model or None, "precision": args.precision,
        "workers": args.workers, "intra_op_threads": args.intra_op_threads,
        "batcher.max_batch_size": args.max_batch_size,
        "batcher.max_queue_delay_ms": args.max_queue_delay_ms, "batcher.instances": args.instances,
        "tls.cert_file": args.tls_cert, "tls.key_file": args.tls_key, "tls.client_ca_file": args.tls_client_ca,
        "auth.tokens_file": args.tokens_file, "metrics_port": args.metrics_port,
        "drift.sample_rate": args.shadow_rate})

    async def run() -> None:
        server = Server(settings, ModelRepository(args.repository))
        await server.start()
        metrics = f", metrics on port {server.metrics_port}" if server.metrics_port else ""
        sys.stderr.write(f"trtserve: serving {list(settings.models)} ({settings.precision}) on "
                         f"{settings.host}:{server.port}{metrics}\n")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        sys.stderr.write("trtserve: draining\n")
        await server.stop()

    asyncio.run(run())
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    import time

    import cv2
    import grpc
    import numpy as np

    from trtserve.client import DetectionClient, detections_of
    from trtserve.v1 import detection_pb2 as pb
    from trtserve.vision.draw import annotate

    source: int | str = int(args.source) if args.source.isdigit() else args.source
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise TrtserveError(f"cannot open {args.source!r}: not a readable video file, camera index or stream URL")
    fps_in = cap.get(cv2.CAP_PROP_FPS) or 15.0

    def frames() -> Iterator[np.ndarray]:
        i = 0
        while args.frames <= 0 or i < args.frames:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
            i += 1

    writer = None
    latencies: list[float] = []
    ok_frames = errors = 0
    t0 = last = time.monotonic()
    try:
        with DetectionClient(args.server, args.model, None if args.raw else args.jpeg_quality) as client:
            names = tuple(client.model_info(args.model).classes)
            for frame, answer in client.stream_frames(frames(), args.stream_id):
                if answer.status != pb.STATUS_OK:
                    errors += 1
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
        raise TrtserveError(f"server {args.server}: {exc.code().name}: {exc.details()}") from None
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    elapsed = time.monotonic() - t0
    lat = np.array(latencies or [0.0]) * 1000
    summary = {"frames": ok_frames, "errors": errors, "fps": round(ok_frames / elapsed, 1) if elapsed else 0.0,
               "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2)}
    _emit(summary, args.json, f"{ok_frames} frames ({errors} errors), {summary['fps']} frames/s, server latency "
                              f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms")
    return 0 if errors == 0 else EXIT_USER_ERROR


def cmd_build(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from trtserve.engine_build import build_engine
    from trtserve.engine_key import GIB, BuildSettings, default_settings
    from trtserve.repository import ModelRepository

    config = ModelRepository(args.repository).get(args.model)
    base = default_settings(config, args.precision)
    max_batch = base.max_batch if args.max_batch is None else args.max_batch
    settings = BuildSettings(
        precision=args.precision, max_batch=max_batch,
        opt_batch=min(base.opt_batch, max_batch) if args.opt_batch is None else args.opt_batch,
        workspace_bytes=int(args.workspace_gb * GIB) if args.workspace_gb is not None else base.workspace_bytes,
        dla_core=args.dla_core if args.dla_core is not None else base.dla_core,
        execution_contexts=args.contexts)
    result = build_engine(config, settings, args.timing_cache)
    r = result.record
    _emit({"plan": str(result.plan), **asdict(r)}, args.json,
          f"built {result.plan} in {r.build_time_s} s\n  {r.build_path}; TensorRT {r.tensorrt_version} on {r.gpu_name} "
          f"(compute {r.compute_capability}); batch {settings.opt_batch} opt / {settings.max_batch} max")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from trtserve.doctor import diagnose, render

    report = diagnose()
    _emit(report.as_dict(), args.json, render(report))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from trtserve.benchmark import throughput

    shadow = args.what == "streams" and args.shadow_rate is not None
    args.precision = args.precision or ("int8" if shadow else "fp32")
    args.repeats = args.repeats or (2 if shadow else 1 if args.what == "streams" else 20)
    if shadow:
        from trtserve import bench_streams

        if not 0 < args.shadow_rate <= 1:
            raise TrtserveError(f"--shadow-rate {args.shadow_rate}: expected a fraction of batches in (0, 1]")
        r = bench_streams.run_shadow(args.repository, args.model, args.precision, args.streams,
                                     args.frames_per_stream, args.shadow_rate, max(1, min(args.repeats, 5)),
                                     None if args.raw else 90)
        _emit(r, args.json, (
            f"{r['streams']} streams, {r['precision']} served, FP32 shadow on {r['shadow_rate']:.0%} of batches "
            f"vs off (median of {r['repeats']} pairs):\n"
            f"  throughput {r['fps_shadow_on']} vs {r['fps_shadow_off']} frames/s "
            f"(ratio {r['shadow_throughput_ratio']})\n  p99 at {r['latency_load_fraction']:.0%} load "
            f"{r['p99_ms_shadow_on']} vs {r['p99_ms_shadow_off']} ms "
            f"(ratio {r['shadow_p99_ratio']})\n  drift agreement F1 {r['drift_agreement_f1']} over "
            f"{r['shadow_samples']} frames ({r['shadow_skipped']} samples skipped: shadow busy); metrics "
            f"{r['metrics_overhead_us_per_frame']} us per frame"))
        return 0
    if args.what == "streams":
        from trtserve import bench_streams

        r = bench_streams.run(args.repository, args.model, args.precision, args.streams, args.frames_per_stream,
                              args.server, args.kserve, None if args.raw else 90, runs=args.repeats)
        server_cpu = r["server_cpu_ms_per_frame"]
        _emit(r, args.json, (
            f"{r['streams']} streams x {r['frames_per_stream']} {r['frames']} frames over {r['protocol']}: "
            f"{r['fps']} frames/s; "
            f"raw engine at batch {r['raw_batch']}: {r['raw_backend_fps']} frames/s; efficiency {r['efficiency']}"
            + (f" (medians of {r['runs']} runs; efficiency per run {r['efficiency_runs']})" if r["runs"] > 1 else "")
            + "\n"
            f"latency p50 {r['p50_ms']} ms  p95 {r['p95_ms']} ms  p99 {r['p99_ms']} ms; mean batch {r['mean_batch']}; "
            f"dropped {r['dropped']}, errors {r['errors']}, lost {r['lost']}\n"
            f"CPU per frame: server {'(not started here)' if server_cpu is None else f'{server_cpu} ms'}, "
            f"client {r['client_cpu_ms_per_frame']} ms, "
            f"engine alone {r['engine_cpu_ms_per_frame']} ms"
            + (f"; efficiency these allow with every core busy: {r['cpu_bound_efficiency_ceiling']}"
               if r["cpu_bound_efficiency_ceiling"] is not None else "")))
        return 0
    if args.what == "calibration":
        from trtserve import bench_calibration
        from trtserve.repository import ModelRepository

        r = bench_calibration.run(ModelRepository(args.repository).get(args.model), args.frames, args.eval_images)
        _emit(r, args.json, "\n".join([
            f"calibration on {r['frames']} frames, trtserve vs ONNX Runtime quantize_static (entropy, QDQ):",
            f"  peak RSS   {r['peak_rss_mb']} MB vs {r['peak_rss_mb_ort']} MB  (ratio {r['rss_ratio_vs_ort']})",
            f"  wall time  {r['seconds']} s vs {r['seconds_ort']} s  (ratio {r['time_ratio_vs_ort']})",
            f"  mAP50-95   fp32 {r['map50_95_fp32']:.4f}  int8 {r['map50_95_int8']:.4f}  "
            f"int8 (ORT) {r['map50_95_int8_ort']:.4f}",
            f"  agreement with fp32 (F1@0.5) {r['agreement_f1']}",
            f"  int8 speed-up at batch 8: {r['int8_speedup']}x (ORT's int8: {r['int8_ort_speedup']}x)"]))
        return 0

    with _detector(args) as detector:
        rows = throughput(detector, args.batch, args.repeats)
    lines = [f"{detector.config.name} {detector.precision} on {detector.backend.name} (640x480 frames, "
             f"median of {args.repeats})"]
    lines += [f"batch {r['batch']:>3}: raw backend {r['raw_backend_fps']:>8} frames/s   end to end "
              f"{r['end_to_end_fps']:>8} frames/s   efficiency {r['efficiency']:.3f}   "
              f"x{r['speedup_vs_first']} vs batch {rows[0]['batch']}" for r in rows]
    _emit(rows, args.json, "\n".join(lines))
    return 0


# --- trtserve health: the containers' HEALTHCHECK (grpc.health.v1), see trtserve/healthcheck.py ---
def add_health_command(sub: Any) -> None:
    """Register ``trtserve health``: exit 0 when the server (or one model) is SERVING, 1 otherwise."""
    def cmd_health(args: argparse.Namespace) -> int:
        from trtserve.healthcheck import check_health, default_address

        result = check_health(args.address or default_address(), args.service, args.timeout_s)
        sys.stdout.write(f"{result.detail}\n")
        return 0 if result.serving else 1

    p = sub.add_parser("health", help="ask a server's grpc.health.v1 whether it is SERVING (exit 0) or not (1)")
    p.add_argument("--address", help="host:port (default 127.0.0.1:$TRTSERVE_GRPC_PORT or 8001)")
    p.add_argument("--service", default="", help="a model name, or '' (default) for the whole server")
    p.add_argument("--timeout-s", type=float, default=3.0)
    p.set_defaults(func=cmd_health)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtserve", description="Serve object detectors on TensorRT and "
                                     "ONNX Runtime, calibrated to INT8.")
    parser.add_argument("--version", action="version", version=f"trtserve {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser.add_argument("--repository", type=Path, default=None,
                        help="model repository folder (default: $TRTSERVE_MODEL_REPOSITORY or ./engines)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--model", default="shapes", help="model name in the repository (default: shapes)")
        p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: default)")
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    p = sub.add_parser("models", help="list the model repository")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = model_command("detect", "detect objects in images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", type=Path, help="write the annotated image here (one IMAGE only)")
    p.add_argument("--score-threshold", type=float, default=None)
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.set_defaults(func=cmd_detect)

    p = model_command("eval", "COCO mAP on the held-out synthetic set")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.add_argument("--images", type=int, default=300, help="held-out images (default 300)")
    p.set_defaults(func=cmd_eval)

    p = model_command("demo", "detect on the sample video; write an annotated video and a JSON summary")
    p.add_argument("--out", type=Path, default=Path("build/demo"), help="output folder (default build/demo)")
    p.add_argument("--video", type=Path, default=None, help="a video file instead of the bundled sample")
    p.add_argument("--precision", choices=["fp32", "int8"], default="int8",
                   help="default int8, watched by an FP32 shadow (see --shadow-rate)")
    p.add_argument("--shadow-rate", type=float, default=None, metavar="R",
                   help="fraction of batches compared with the FP32 shadow (default 0.25 for int8, 0 for fp32)")
    p.add_argument("--in-process", action="store_true", help="detect in this process instead of over gRPC")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("stream", help="stream a video file, camera or RTSP/HTTP URL to a server")
    p.add_argument("source", metavar="SOURCE", help="video file, camera index (0) or rtsp:// / http:// URL")
    p.add_argument("--server", default="127.0.0.1:8001")
    p.add_argument("--model", default="")
    p.add_argument("--stream-id", default="stream-0")
    p.add_argument("--out", type=Path, help="write the annotated video here")
    p.add_argument("--frames", type=int, default=0, help="stop after this many frames (0: all)")
    enc = p.add_mutually_exclusive_group()
    enc.add_argument("--jpeg-quality", type=int, default=90)
    enc.add_argument("--raw", action="store_true", help="send raw BGR pixels instead of JPEG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("serve", help="serve models over gRPC (trtserve.v1, health, reflection)")
    p.add_argument("--config", type=Path, help="server YAML (precedence: file < TRTSERVE_* env < flags)")
    p.add_argument("--host")
    p.add_argument("--grpc-port", type=int)
    p.add_argument("--model", action="append", help="model to load (repeatable; the first is the default)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    p.add_argument("--workers", type=int, help="decode/inference worker threads")
    p.add_argument("--intra-op-threads", type=int,
                   help="ONNX Runtime threads per batch (default: cores / instances)")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--max-queue-delay-ms", type=float)
    p.add_argument("--instances", type=int, help="concurrent batches per model")
    p.add_argument("--tls-cert", help="server certificate (PEM); with --tls-key enables TLS")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--tls-client-ca", help="CA bundle for client certificates: enables mutual TLS")
    p.add_argument("--tokens-file", help="bearer tokens, one per line: calls without one are UNAUTHENTICATED")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default 8002; 0: any free port)")
    p.add_argument("--shadow-rate", type=float, metavar="R",
                   help="compare this fraction of batches with the FP32 shadow, for every model (0 turns it off)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("calibrate", help="calibrate a model to INT8 (Q/DQ ONNX, TensorRT caches, report)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--images", type=Path, help="folder of calibration images (searched recursively)")
    p.add_argument("--video", type=Path, help="a video; frames are spread over its length")
    p.add_argument("--num", type=int, default=500, help="frames to use (default 500; 300+ recommended)")
    p.add_argument("--batch", type=int, default=None, help="frames per batch (default: the model's fixed batch, or 8)")
    p.add_argument("--method", choices=["entropy", "minmax", "percentile"], default="entropy")
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--trt-version", action="append", default=[], metavar="X.Y.Z",
                   help="also write a TensorRT calibration cache for this version (repeatable)")
    p.add_argument("--eval-images", type=int, default=0,
                   help="after calibrating, compare FP32 and INT8 on this many held-out synthetic images")
    p.add_argument("--auto-exclude", action="store_true",
                   help="keep the fewest most-sensitive layers float until INT8 meets --target-agreement")
    p.add_argument("--target-agreement", type=float, default=0.97,
                   help="detection F1 vs FP32 on calibration frames that --auto-exclude aims for (default 0.97)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("build", help="build a TensorRT engine for this host's GPU and TensorRT version")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], required=True)
    p.add_argument("--max-batch", type=int, help="largest batch (default: the model's max_batch_size)")
    p.add_argument("--opt-batch", type=int, help="batch TensorRT tunes for (default: engine.opt_batch or max)")
    p.add_argument("--workspace-gb", type=float, help="builder workspace in GiB (default: engine.workspace_gb, 2)")
    p.add_argument("--dla-core", type=int, help="build for this DLA core, with GPU fallback (Jetson)")
    p.add_argument("--timing-cache", type=Path, help="read and update this TensorRT timing cache file")
    p.add_argument("--contexts", type=int, default=2, help="optimization profiles = concurrent batches (default 2)")
    p.add_argument("--repository", type=Path, default=argparse.SUPPRESS, help="model repository folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("doctor", help="what this host has and which backends and precisions will work")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("scenes", help="write synthetic scenes (PNG + COCO annotations), e.g. to calibrate with")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num", type=int, default=300)
    p.add_argument("--seed", type=int, default=None, help="root seed (default: the calibration stream)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scenes)

    p = model_command("bench", "'streams' (default): concurrent streams against a server beside the raw engine; "
                      "'throughput': in-process, raw backend vs end to end per batch size; "
                      "'calibration': trtserve's calibrator vs ONNX Runtime's quantize_static")
    p.add_argument("what", nargs="?", choices=["streams", "throughput", "calibration"], default="streams")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams (bench streams)")
    p.add_argument("--frames-per-stream", type=int, default=150, help="frames per stream (bench streams)")
    p.add_argument("--server", help="a running server (bench streams); default: start one here")
    p.add_argument("--kserve", action="store_true", help="drive the KServe v2 API with tritonclient")
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
    p.set_defaults(func=cmd_bench)
    add_health_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
        return code
    except TrtserveError as exc:
        sys.stderr.write(f"trtserve: error: {exc}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
