"""``trtserve eval``: a model's COCO mAP, on the held-out synthetic set or on the user's own labelled frames
(``--data``: COCO JSON or the Ultralytics/YOLO layout), each precision side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trtserve.cli.common import Subcommands, emit, model_command

if TYPE_CHECKING:
    from trtserve.backends.base import BackendOptions
    from trtserve.config import ModelConfig

ALL = "all"


def dataset_precisions(config: ModelConfig, wanted: str | None) -> tuple[str, ...]:
    """The precisions ``--precision`` names; ``all`` (and no flag) is fp32 plus int8 where the model has it."""
    if wanted not in (None, ALL):
        return (str(wanted),)
    return ("fp32", "int8") if "int8" in config.available_precisions() else ("fp32",)


def cmd_eval(args: argparse.Namespace) -> int:
    from trtserve.repository import ModelRepository

    config = ModelRepository(args.repository).get(args.model)
    if args.data is not None:
        from trtserve.calibration.dataset_eval import evaluate_dataset
        from trtserve.datasets.labelled import open_dataset

        dataset = open_dataset(args.data, args.annotations, config.class_names, args.split)
        result = evaluate_dataset(config, dataset, dataset_precisions(config, args.precision),
                                  progress=sys.stderr.isatty(), options=_options(args), multi_label=args.multi_label,
                                  iou_threshold=args.iou_threshold)
        emit(result.as_dict(), args.json, result.describe())
        return 0
    if args.annotations is not None:
        from trtserve.errors import UsageError

        raise UsageError("--annotations needs --data, the folder of the images it lists")
    from trtserve.calibration.evaluation import evaluate
    from trtserve.detector import Detector

    precisions = ("fp32", "int8") if args.precision == ALL else (args.precision or "fp32",)
    results = []
    for precision in precisions:
        with Detector.open(config, precision, options=_options(args)) as detector:
            results.append(evaluate(detector, args.images, args.multi_label, args.iou_threshold))
    label = ", multi-label" if args.multi_label else ""
    text = "\n".join(f"{args.model} {r.precision}: mAP50 {r.map50:.4f}  mAP50-95 {r.map50_95:.4f}  "
                     f"({r.images} images{label}, {r.seconds} s)" for r in results)
    emit(results[0].as_dict() if len(results) == 1 else [r.as_dict() for r in results], args.json, text)
    return 0


def _options(args: argparse.Namespace) -> BackendOptions:
    from trtserve.backends.base import BackendOptions

    return BackendOptions(intra_op_threads=args.threads)


def add_dataset_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--data`` / ``--annotations`` / ``--split`` (``--eval-data`` ... with ``prefix='eval-'``)."""
    p.add_argument(f"--{prefix}data", type=Path, default=None, metavar="PATH",
                   help="your labelled frames: a YOLO data.yaml (or its folder), or with --"
                        f"{prefix}annotations the COCO images folder")
    p.add_argument(f"--{prefix}annotations", type=Path, default=None, metavar="FILE",
                   help="COCO instances JSON of the images in --" + f"{prefix}data")
    p.add_argument(f"--{prefix}split", default="val", metavar="KEY",
                   help="the data.yaml split to evaluate on (default val)")


def register(sub: Subcommands) -> None:
    """Add ``eval`` to the ``trtserve`` parser."""
    p = model_command(sub, "eval", "COCO mAP per precision: on your labelled frames (--data), else on the held-out "
                                   "synthetic set")
    p.add_argument("--precision", choices=["fp32", "int8", ALL], default=None,
                   help="default: fp32; with --data, fp32 and int8 (where calibrated) side by side")
    p.add_argument("--images", type=int, default=300, help="held-out synthetic images without --data (default 300)")
    add_dataset_options(p)
    p.add_argument("--multi-label", action="store_true",
                   help="score every class above threshold at each box, as Ultralytics val does (higher mAP than "
                        "the one label per box the model serves, which pycocotools scores by default)")
    p.add_argument("--iou-threshold", type=float, default=None, metavar="IOU",
                   help="NMS IoU while evaluating (default: the model's head.iou_threshold; Ultralytics val uses 0.7)")
    p.set_defaults(func=cmd_eval)
