"""``trtserve calibrate``: a model to INT8 (Q/DQ ONNX, TensorRT calibration caches, report)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from trtserve.cli.common import Subcommands, emit
from trtserve.cli.evaluate import add_dataset_options
from trtserve.errors import UsageError

if TYPE_CHECKING:
    from trtserve.datasets.labelled import LabelledDataset


def cmd_calibrate(args: argparse.Namespace) -> int:
    from trtserve.calibration.frames import FrameSource
    from trtserve.calibration.html_report import HTML_REPORT_FILE, write_calibration_html
    from trtserve.calibration.run import run_calibration
    from trtserve.config import load_model_config
    from trtserve.repository import ModelRepository

    if args.from_server is not None:
        return _from_server(args, reload=False)
    if (args.images is None) == (args.video is None):
        raise UsageError("give exactly one of --images DIR or --video FILE (or --from-server ADDR)")
    config = ModelRepository(args.repository).get(args.model)
    dataset = _eval_dataset(args, config.class_names)  # bad labels fail before calibrating, not after
    source = (FrameSource.from_images(args.images, args.num) if args.images is not None
              else FrameSource.from_video(args.video, args.num))
    if args.max_memory_mb is not None and args.max_memory_mb < 32:
        raise UsageError(f"--max-memory-mb {args.max_memory_mb:g}: expected at least 32 (default 1024)")
    report = run_calibration(config, source, args.method, args.batch, args.percentile, tuple(args.trt_version),
                             progress=not args.json, evaluate_images=args.eval_images,
                             auto_exclude_target=args.target_agreement if args.auto_exclude else None,
                             out_dir=args.out, overwrite=args.overwrite, max_memory_mb=args.max_memory_mb)
    folder = args.out if args.out is not None else config.directory
    artifacts = report.artifacts
    written = [artifacts.qdq_onnxruntime, artifacts.qdq_tensorrt, *artifacts.trt_caches.values()]
    text = (f"calibrated {config.name} on {report.frames_used} frames "
            f"({report.frames_skipped} unreadable skipped) in {report.seconds} s\n{report.summary()}\n"
            f"wrote {', '.join(written)} in {folder}")
    rewritten = [name for version, name in artifacts.trt_caches.items() if version not in args.trt_version]
    if rewritten:
        text += (f"\nrewrote {', '.join(rewritten)} from the new ranges too (the folder had caches for those TensorRT "
                 "versions; a cache left from the old calibration would disagree with the new Q/DQ models)")
    if report.memory is not None:
        m = report.memory
        plan = (f"{m['passes']} pass(es), {m['sub_batch'] or 'whole'} frames per run" if m["budget_mb"] is not None
                else "unbounded")
        text += f"\nmemory: peak RSS {m['peak_rss_mb']} MB (budget {m['budget_mb'] or 'none'} MB: {plan})"
    if args.out is not None and args.out.name != config.name:
        text += (f"\n(to serve it, the folder must be named {config.name!r}, as model.yaml's name: move it to "
                 f"REPO/{config.name} and pass --repository REPO)")
    if report.evaluation is not None:
        e = report.evaluation
        text += (f"\nmAP50-95 fp32 {e.map50_95_fp32:.4f} int8 {e.map50_95_int8:.4f}; "
                 f"int8 agreement with fp32 F1 {e.agreement_f1}")
    payload = report.as_dict()
    if dataset is not None:
        from trtserve.calibration.dataset_eval import evaluate_dataset

        evaluated = (ModelRepository(args.repository).get(args.model) if args.out is None
                     else load_model_config(args.out / (config.source_file or Path("model.yaml")).name))
        on_data = evaluate_dataset(evaluated, dataset, ("fp32", "int8"), progress=not args.json)
        payload["evaluation_data"] = on_data.as_dict()
        text += "\n" + on_data.describe()
        write_calibration_html(folder / HTML_REPORT_FILE, report, on_data)  # with the per-class figures
    text += f"\nreport to look at: {folder / HTML_REPORT_FILE}"
    emit(payload, args.json, text)
    return 0


def _eval_dataset(args: argparse.Namespace, class_names: tuple[str, ...]) -> LabelledDataset | None:
    """The labelled dataset ``--eval-data`` names (see ``trtserve eval --data``), read and checked; None without."""
    if args.eval_data is None:
        return None
    from trtserve.datasets.labelled import open_dataset

    return open_dataset(args.eval_data, args.eval_annotations, class_names, args.eval_split)


def _from_server(args: argparse.Namespace, reload: bool) -> int:
    """Pull the server's reservoir, calibrate a staged copy on it, compare, promote if better (and reload)."""
    from trtserve.calibration.from_server import promote, pull_reservoir, pulled_frames, recalibrate_staged
    from trtserve.cli.models import tls_ca_from, token_from
    from trtserve.cli.remote import RemoteServer
    from trtserve.repository import ModelRepository

    if args.video is not None:
        raise UsageError("--video cannot be mixed with --from-server; use --images DIR to mix in frames")
    unsupported = [flag for flag, given in (("--eval-images", getattr(args, "eval_images", 0)),
                                            ("--eval-data", getattr(args, "eval_data", None) is not None),
                                            ("--eval-annotations", getattr(args, "eval_annotations", None) is not None),
                                            ("--out", getattr(args, "out", None) is not None),
                                            ("--overwrite", getattr(args, "overwrite", False)))
                   if given]
    if unsupported:
        raise UsageError(f"{' and '.join(unsupported)} cannot be combined with a calibration on the server's "
                         "reservoir (it scores the new INT8 against FP32 on the reservoir frames itself); run "
                         f"`trtserve eval` on the model afterwards instead")
    config = ModelRepository(args.repository).get(args.model)
    from trtserve.calibration.run import check_not_quantized

    check_not_quantized(config)  # a QAT model: refused before pulling anything
    pull_dir = args.pull_dir or Path(".trtserve-pull") / args.model
    with RemoteServer(args.from_server, token_from(args), tls_ca_from(args)) as server:
        pulled = pull_reservoir(pull_dir, args.from_server, args.model, server.fetch(args.model))
        report = recalibrate_staged(config, pulled_frames(pull_dir), args.images, args.num if args.images else 0,
                                    args.method, tuple(args.trt_version), args.min_gain, progress=not args.json,
                                    batch=args.batch, percentile=args.percentile,
                                    auto_exclude_target=args.target_agreement if args.auto_exclude else None)
        dry_run = getattr(args, "dry_run", False)
        keep = report.better or getattr(args, "keep_worse", False)
        promoted = promote(config) if keep and not dry_run else []
        reply = server.control("reload", args.model) if reload and promoted else None
    payload = {"pull": pulled.as_dict(), "report": report.as_dict(), "promoted": promoted, "reload": reply,
               "dry_run": dry_run}
    o, n = report.old, report.new
    resumed = ", resumed" if pulled.resumed else ""
    text = (f"pulled {pulled.frames} reservoir frames ({pulled.received} this run{resumed})"
            f"; calibrated on them{f' and {report.image_frames} images' if report.image_frames else ''}\n"
            f"INT8 vs FP32 on the reservoir frames: serving F1 {o.agreement_f1:.4f} mAP50-95 {o.map50_95_vs_fp32:.4f}"
            f" | recalibrated F1 {n.agreement_f1:.4f} mAP50-95 {n.map50_95_vs_fp32:.4f} -> "
            f"{'better' if report.better else 'not better'}\n"
            + (f"promoted {', '.join(promoted)} into {config.directory}" if promoted else
               f"kept the serving model (staged files in {report.staging})")
            + (f"\nreloaded on {args.from_server}: {reply['message']}" if reply else ""))
    emit(payload, args.json, text)
    return 0


def cmd_recalibrate(args: argparse.Namespace) -> int:
    args.from_server = args.server
    args.video = None
    return _from_server(args, reload=True)


def _quantization_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=None, help="frames per batch (default: the model's fixed batch, or 8)")
    p.add_argument("--method", choices=["auto", "entropy", "minmax", "percentile"], default="auto",
                   help="auto (default): the first of entropy, percentile (--percentile), percentile 99.999 and "
                        "minmax whose INT8 model agrees with FP32 on the calibration frames at --target-agreement; "
                        "else the best of them with the most sensitive layers kept float (the report says what it "
                        "chose and why)")
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--trt-version", action="append", default=[], metavar="X.Y.Z",
                   help="also write a TensorRT calibration cache for this version (repeatable)")
    p.add_argument("--auto-exclude", action="store_true",
                   help="keep the fewest most-sensitive layers float until INT8 meets --target-agreement")
    p.add_argument("--target-agreement", type=float, default=0.97,
                   help="detection F1 vs FP32 on calibration frames that --method auto and --auto-exclude aim for "
                        "(default 0.97)")


def _calibration_options(p: argparse.ArgumentParser) -> None:
    from trtserve.cli.models import add_remote_options

    add_remote_options(p)
    p.add_argument("--pull-dir", type=Path, default=None,
                   help="where pulled frames go (default ./.trtserve-pull/MODEL); an interrupted pull resumes there")
    p.add_argument("--min-gain", type=float, default=0.0,
                   help="the new INT8 must beat the serving one's agreement F1 with FP32 by more than this")


def register(sub: Subcommands) -> None:
    """Add this group's subcommands to the ``trtserve`` parser."""
    p = sub.add_parser("calibrate", help="calibrate a model to INT8 (Q/DQ ONNX, TensorRT caches, report)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--images", type=Path, help="folder of calibration images (searched recursively)")
    p.add_argument("--video", type=Path, help="a video; frames are spread over its length")
    p.add_argument("--num", type=int, default=500, help="frames to use (default 500; 300+ recommended)")
    _quantization_options(p)
    p.add_argument("--eval-images", type=int, default=0,
                   help="after calibrating, compare FP32 and INT8 on this many held-out synthetic images "
                        "(not with --from-server)")
    add_dataset_options(p, prefix="eval-")  # --eval-data: FP32 vs INT8 on your labelled frames after calibrating
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write a calibrated copy of the model folder into DIR (new or empty) instead of the model's "
                        "own folder")
    p.add_argument("--overwrite", action="store_true",
                   help="allow replacing the INT8 artifacts, caches and report already in the model folder (or DIR)")
    p.add_argument("--max-memory-mb", type=float, default=1024.0, metavar="MB",
                   help="memory the calibration pass may hold for activations, whatever the model and --batch "
                        "(default 1024; larger models take more passes or smaller runs, not more memory)")
    p.add_argument("--from-server", metavar="ADDR", default=None,
                   help="calibrate on the server's live-frame reservoir (mixed with --images when given); new files "
                        "replace the model's only when they agree better with FP32 on those frames")
    p.add_argument("--keep-worse", action="store_true", help="with --from-server: keep the new files even when worse")
    _calibration_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("recalibrate", help="pull a server's reservoir, calibrate, evaluate, reload it there if better")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--server", "--address", dest="server", required=True, metavar="ADDR",
                   help="the server (model_control: true, a reservoir)")
    p.add_argument("--images", type=Path, default=None, help="also calibrate on these frames (e.g. the original set)")
    p.add_argument("--num", type=int, default=500, help="at most this many --images frames (default 500)")
    _quantization_options(p)
    p.add_argument("--dry-run", action="store_true", help="pull, calibrate and compare; change nothing")
    _calibration_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recalibrate)
