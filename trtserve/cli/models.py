"""``trtserve models | detect | eval | scenes``: the model repository, detection and accuracy in this process."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from trtserve.cli.common import EXIT_USER_ERROR, Subcommands, emit, model_command, open_detector
from trtserve.errors import UsageError

logger = logging.getLogger(__name__)


def cmd_models(args: argparse.Namespace) -> int:
    if args.server is not None or args.action is not None:
        return _control(args)
    from trtserve.repository import ModelRepository

    rows: list[dict[str, Any]] = [{"name": c.name, "head": c.head.type, "precisions": c.available_precisions(),
             "input": [c.input.height_px, c.input.width_px], "classes": len(c.class_names),
             "max_batch_size": c.max_batch_size} for c in ModelRepository(args.repository).all()]
    lines = [f"{r['name']:<20} head={r['head']:<8} input={r['input'][0]}x{r['input'][1]} "
             f"classes={r['classes']} precisions={','.join(r['precisions'])}" for r in rows]
    emit(rows, args.json, "\n".join(lines) or "(no models)")
    return 0


def _control(args: argparse.Namespace) -> int:
    """``trtserve models --server ADDR load|unload|reload NAME``: model control on a running server."""
    from trtserve.cli.remote import RemoteServer

    if args.server is None or args.action is None or args.name is None:
        raise UsageError("model control needs all of --server ADDR, an action (load, unload, reload) and a model "
                         "NAME, e.g. `trtserve models --server 127.0.0.1:8001 reload shapes`")
    with RemoteServer(args.server, token_from(args)) as server:
        reply = server.control(args.action, args.name)
    emit(reply, args.json, f"{reply['name']}: {reply['state']} version {reply['version']}: {reply['message']}")
    return 0


def token_from(args: argparse.Namespace) -> str | None:
    """``--token``, else ``$TRTSERVE_TOKEN``."""
    import os

    token: str | None = args.token or os.environ.get("TRTSERVE_TOKEN") or None
    return token


def cmd_detect(args: argparse.Namespace) -> int:
    import cv2

    from trtserve.vision.draw import annotate

    if args.out is not None and len(args.images) != 1:
        raise UsageError("--out takes exactly one IMAGE; run once per image or drop --out")
    with open_detector(args) as detector:
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
                    raise UsageError(f"cannot write {args.out}; check the folder exists and the extension")
        emit(payload, args.json, "\n".join(lines))
    return EXIT_USER_ERROR if failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from trtserve.calibration.evaluation import evaluate

    with open_detector(args) as detector:
        result = evaluate(detector, args.images)
    emit(result.as_dict(), args.json, f"{args.model} {result.precision}: mAP50 {result.map50:.4f}  "
                                       f"mAP50-95 {result.map50_95:.4f}  ({result.images} images, {result.seconds} s)")
    return 0


def cmd_scenes(args: argparse.Namespace) -> int:
    from trtserve.datasets.synthetic import CALIBRATION_SEED, render_scene, write_coco

    path = write_coco([render_scene(args.seed if args.seed is not None else CALIBRATION_SEED, i)
                       for i in range(args.num)], args.out)
    emit({"images": args.num, "annotations": str(path)}, args.json, f"wrote {args.num} scenes and {path}")
    return 0


def register(sub: Subcommands) -> None:
    """Add this group's subcommands to the ``trtserve`` parser."""
    p = sub.add_parser("models", help="list the model repository; with --server, load/unload/reload a model there")
    p.add_argument("action", nargs="?", choices=["load", "unload", "reload"],
                   help="with --server: load (a loaded model is reloaded), unload or reload NAME while serving")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--server", metavar="ADDR", help="a running server (host:port) with model_control: true")
    p.add_argument("--token", help="bearer token for a server with tokens (default: $TRTSERVE_TOKEN)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = model_command(sub, "detect", "detect objects in images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", type=Path, help="write the annotated image here (one IMAGE only)")
    p.add_argument("--score-threshold", type=float, default=None)
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.set_defaults(func=cmd_detect)

    p = model_command(sub, "eval", "COCO mAP on the held-out synthetic set")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.add_argument("--images", type=int, default=300, help="held-out images (default 300)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("scenes", help="write synthetic scenes (PNG + COCO annotations), e.g. to calibrate with")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num", type=int, default=300)
    p.add_argument("--seed", type=int, default=None, help="root seed (default: the calibration stream)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scenes)
