"""``trtserve calibrate``: a model to INT8 (Q/DQ ONNX, TensorRT calibration caches, report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from trtserve.cli.common import Subcommands, emit
from trtserve.errors import UsageError


def cmd_calibrate(args: argparse.Namespace) -> int:
    from trtserve.calibration.frames import FrameSource
    from trtserve.calibration.run import run_calibration
    from trtserve.repository import ModelRepository

    if (args.images is None) == (args.video is None):
        raise UsageError("give exactly one of --images DIR or --video FILE")
    config = ModelRepository(args.repository).get(args.model)
    source = (FrameSource.from_images(args.images, args.num) if args.images is not None
              else FrameSource.from_video(args.video, args.num))
    report = run_calibration(config, source, args.method, args.batch, args.percentile, tuple(args.trt_version),
                             progress=not args.json, evaluate_images=args.eval_images,
                             auto_exclude_target=args.target_agreement if args.auto_exclude else None)
    artifacts = report.artifacts
    written = [artifacts.qdq_onnxruntime, artifacts.qdq_tensorrt, *artifacts.trt_caches.values()]
    text = (f"calibrated {config.name} ({report.method}) on {report.frames_used} frames "
            f"({report.frames_skipped} unreadable skipped) in {report.seconds} s; "
            f"{len(report.tensors)} tensors, {len(report.excluded)} nodes kept float\n"
            f"wrote {', '.join(written)} in {config.directory}")
    if report.evaluation is not None:
        e = report.evaluation
        text += (f"\nmAP50-95 fp32 {e.map50_95_fp32:.4f} int8 {e.map50_95_int8:.4f}; "
                 f"int8 agreement with fp32 F1 {e.agreement_f1}")
    emit(report.as_dict(), args.json, text)
    return 0


def register(sub: Subcommands) -> None:
    """Add this group's subcommands to the ``trtserve`` parser."""
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
