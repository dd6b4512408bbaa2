"""``trtserve bench calibration``: our calibrator against ONNX Runtime's ``quantize_static``, side by side.

All calibrate the same FP32 model on the same frames, each in its own child process so that its peak RSS is
its own (``wait4`` resource usage):

* ``trtserve`` -- ``trtserve calibrate``'s default (method ``auto``, the ``onnxruntime`` placement);
* ``ort`` -- ``quantize_static`` as ONNX Runtime recommends it for x86 (QDQ, uint8 activations, per-channel
  int8 weights, entropy) with the same nodes kept float as trtserve keeps (the detection head);
* ``ort_default`` -- ``quantize_static`` with int8 activations and nothing kept float.

Then FP32 and the three INT8 models are scored on the held-out set (COCO mAP, and INT8's detection agreement
with FP32), and their speed is measured on ONNX Runtime CPU at batch 8: the rounds go through the four models
in turn (so load on a shared machine falls on all of them alike) and each figure is the median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from trtserve.config import ModelConfig
from trtserve.errors import ServerError
from trtserve.reports import JsonReport

VARIANTS = ("fp32", "int8", "int8_ort", "int8_ort_default")
LABELS = {"fp32": "FP32", "int8": "trtserve INT8", "int8_ort": "ORT quantize_static (u8/s8, head float)",
          "int8_ort_default": "ORT quantize_static (s8/s8, all)"}
SPEED_BATCH = 8


@dataclass(frozen=True)
class PrecisionRow(JsonReport):
    """One model of the comparison, rounded as printed."""

    variant: str  # fp32 | int8 | int8_ort | int8_ort_default
    map50: float
    map50_95: float
    delta_map50_95_pt: float  # against FP32, in points (x100)
    agreement_f1: float  # detections against FP32's (F1 at IoU 0.5); 1.0 for FP32 itself
    engine_fps: float  # backend.infer alone at batch 8, median of the rounds
    engine_speedup: float  # against FP32's engine_fps
    end_to_end_fps: float  # Detector.detect of 640x480 frames at batch 8, median of the rounds
    end_to_end_speedup: float


@dataclass(frozen=True)
class CalibrationBenchReport(JsonReport):
    """``trtserve bench calibration``: ours against ONNX Runtime's ``quantize_static`` (``_ort``), rounded as printed.

    Ratios are ours / ONNX Runtime's (the tuned ``ort`` configuration); speed-ups are against FP32 in this run.
    """

    model: str
    frames: int  # calibration frames, the same for all
    eval_images: int
    rounds: int  # speed rounds (each figure is their median)
    load_average: tuple[float, float, float]  # os.getloadavg() when the speed rounds started
    method: str  # what trtserve's default chose (method auto), and why
    rss_ratio_vs_ort: float  # peak RSS of the calibrating process
    time_ratio_vs_ort: float  # wall time of the calibrating process
    peak_rss_mb: float
    peak_rss_mb_ort: float
    seconds: float
    seconds_ort: float
    rows: tuple[PrecisionRow, ...]

    def row(self, variant: str) -> PrecisionRow:
        return next(r for r in self.rows if r.variant == variant)

    def describe(self) -> str:
        """The table ``trtserve bench calibration`` prints."""
        lines = [f"{self.model}: calibration on {self.frames} frames, scored on {self.eval_images} held-out images; "
                 f"speed at batch {SPEED_BATCH}, median of {self.rounds} interleaved rounds "
                 f"(load average {self.load_average[0]:.1f})",
                 f"  trtserve's default chose: {self.method}",
                 f"  calibrating: peak RSS {self.peak_rss_mb} MB vs ORT's {self.peak_rss_mb_ort} MB "
                 f"(ratio {self.rss_ratio_vs_ort}); wall {self.seconds} s vs {self.seconds_ort} s "
                 f"(ratio {self.time_ratio_vs_ort})",
                 f"  {'':<42} {'mAP50':>6} {'mAP50-95':>8} {'dmAP pt':>7} {'F1 vs fp32':>10} "
                 f"{'engine fps':>10} {'x fp32':>6} {'e2e fps':>8} {'x fp32':>6}"]
        lines += [f"  {LABELS[r.variant]:<42} {r.map50:>6.4f} {r.map50_95:>8.4f} {r.delta_map50_95_pt:>+7.2f} "
                  f"{r.agreement_f1:>10.4f} {r.engine_fps:>10.1f} {r.engine_speedup:>6.2f} {r.end_to_end_fps:>8.1f} "
                  f"{r.end_to_end_speedup:>6.2f}" for r in self.rows]
        return "\n".join(lines)


def _frames(folder: Path) -> list[np.ndarray]:
    import cv2

    return [np.asarray(cv2.imread(str(p), cv2.IMREAD_COLOR), np.uint8) for p in sorted(folder.glob("*.png"))]


def _child(argv: list[str]) -> None:
    """Run one calibration in this process (the parent measures its peak RSS)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("which", choices=["ours", "ort", "ort_default"])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from trtserve.repository import ModelRepository
    from trtserve.vision.preprocess import Preprocessor

    config = ModelRepository(args.repository).get(args.model)
    pre = Preprocessor(config.input)
    input_name = config.input.name or "images"
    t0 = time.monotonic()
    chosen = ""
    if args.which == "ours":
        from trtserve.calibration.frames import FrameSource
        from trtserve.calibration.run import run_calibration

        source = FrameSource.from_images(args.images, 10**9)
        report = run_calibration(config, source, batch=8, progress=False)  # the default method
        choice = report.method_choice
        chosen = report.method if choice is None else f"auto -> {choice['chosen']} ({choice['reason']})"
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        from calibrators.calibrate import prepare_model
        from calibrators.graph import plan_quantization

        frames = _frames(args.images)

        class Reader(CalibrationDataReader):  # type: ignore[misc]
            def __init__(self) -> None:
                self.batches: Iterator[dict[str, np.ndarray]] = iter(
                    {input_name: pre.batch([f])[0]} for f in frames)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.batches, None)

        tuned = args.which == "ort"
        # the same nodes trtserve keeps float (its head walk), by their names in the FP32 model
        head = list(plan_quantization(prepare_model(config.onnx_path), "onnxruntime").excluded_nodes) if tuned else []
        quantize_static(str(config.onnx_path), str(args.out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8 if tuned else QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Entropy,
                        nodes_to_exclude=head)
    sys.stdout.write(json.dumps({"seconds": time.monotonic() - t0, "method": chosen}) + "\n")


def _measure(which: str, repository: Path, model: str, images: Path, out: Path) -> dict[str, object]:
    cmd = [sys.executable, "-m", "trtserve.bench.calibration", which, "--repository", str(repository),
           "--model", model, "--images", str(images), "--out", str(out)]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:  # no pipe fills up
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out_text, err_text = stdout.read(), stderr.read()
    if proc.returncode != 0:
        raise ServerError(f"{which} calibration failed in its child process:\n{err_text[-3000:]}")
    result = json.loads(out_text.strip().splitlines()[-1])
    return {"seconds": float(result["seconds"]), "method": str(result["method"]),
            "peak_rss_bytes": float(usage.ru_maxrss * 1024)}


def _agreement(answers: list, reference: list) -> float:  # type: ignore[type-arg]
    from trtserve.vision.matching import MatchCounts, match

    total = MatchCounts()
    for a, b in zip(answers, reference):
        if a.detections is None or b.detections is None:
            continue
        total += match(a.detections.boxes_xyxy, a.detections.scores, a.detections.class_ids,
                       b.detections.boxes_xyxy, b.detections.class_ids)
    return round(total.f1, 4)


def _speed(configs: Mapping[str, tuple[ModelConfig, str]], rounds: int) -> dict[str, tuple[float, float]]:
    """(engine, end-to-end) frames/s at batch 8 of each model: the median of ``rounds`` interleaved rounds."""
    from trtserve.datasets.synthetic import render_scene
    from trtserve.detector import Detector

    frames = [render_scene(99, i, (640, 480)).image_bgr for i in range(SPEED_BATCH)]
    detectors = {k: Detector.open(c, p) for k, (c, p) in configs.items()}
    try:
        feeds: dict[str, dict[str, NDArray[np.generic]]] = {
            k: {d.input_name: d.preprocessor.batch(frames)[0]} for k, d in detectors.items()}
        for k, d in detectors.items():  # warm up
            for _ in range(2):
                d.backend.infer(feeds[k])
                d.detect(frames)
        engine: dict[str, list[float]] = {k: [] for k in detectors}
        e2e: dict[str, list[float]] = {k: [] for k in detectors}
        for _ in range(rounds):
            for k, d in detectors.items():
                t0 = time.perf_counter()
                d.backend.infer(feeds[k])
                engine[k].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                d.detect(frames)
                e2e[k].append(time.perf_counter() - t0)
    finally:
        for d in detectors.values():
            d.close()
    return {k: (SPEED_BATCH / statistics.median(engine[k]), SPEED_BATCH / statistics.median(e2e[k]))
            for k in detectors}


def run(config: ModelConfig, num_frames: int = 64, eval_images: int = 300, rounds: int = 15) -> CalibrationBenchReport:
    """Run the whole comparison on a scratch copy of ``config``'s model folder."""
    from trtserve.calibration.evaluation import evaluate
    from trtserve.config import load_model_config
    from trtserve.datasets.synthetic import CALIBRATION_SEED, evaluation_set, render_scene, write_coco
    from trtserve.detector import Detector

    with tempfile.TemporaryDirectory(prefix="trtserve-bench-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        shutil.copytree(config.directory, repo / config.name,
                        ignore=shutil.ignore_patterns("*.int8*", "calibration*"))
        images = root / "frames"
        write_coco([render_scene(CALIBRATION_SEED, i) for i in range(num_frames)], images)
        ours = _measure("ours", repo, config.name, images, root / "unused")
        ort_paths = {"int8_ort": root / "ort_int8.onnx", "int8_ort_default": root / "ort_default_int8.onnx"}
        theirs = _measure("ort", repo, config.name, images, ort_paths["int8_ort"])
        _measure("ort_default", repo, config.name, images, ort_paths["int8_ort_default"])
        local = load_model_config(repo / config.name / "model.yaml")
        configs: dict[str, tuple[ModelConfig, str]] = {"fp32": (local, "fp32"), "int8": (local, "int8")}
        for key, path in ort_paths.items():
            configs[key] = (ModelConfig(**{**local.__dict__, "artifacts": {**local.artifacts, "int8": path}}), "int8")
        scenes = [s.image_bgr for s in evaluation_set(eval_images)]
        scores, answers = {}, {}
        for key, (cfg, precision) in configs.items():
            with Detector.open(cfg, precision) as detector:
                scores[key] = evaluate(detector, eval_images)
                answers[key] = detector.detect(scenes)
        load = os.getloadavg()
        speed = _speed(configs, rounds)
    base = scores["fp32"]
    rows = tuple(PrecisionRow(
        variant=key, map50=round(scores[key].map50, 4), map50_95=round(scores[key].map50_95, 4),
        delta_map50_95_pt=round((scores[key].map50_95 - base.map50_95) * 100, 2),
        agreement_f1=1.0 if key == "fp32" else _agreement(answers[key], answers["fp32"]),
        engine_fps=round(speed[key][0], 1), engine_speedup=round(speed[key][0] / speed["fp32"][0], 3),
        end_to_end_fps=round(speed[key][1], 1), end_to_end_speedup=round(speed[key][1] / speed["fp32"][1], 3))
        for key in VARIANTS)
    ours_rss, ort_rss = float(ours["peak_rss_bytes"]), float(theirs["peak_rss_bytes"])  # type: ignore[arg-type]
    ours_s, ort_s = float(ours["seconds"]), float(theirs["seconds"])  # type: ignore[arg-type]
    return CalibrationBenchReport(
        model=config.name, frames=num_frames, eval_images=eval_images, rounds=rounds,
        load_average=(round(load[0], 2), round(load[1], 2), round(load[2], 2)), method=str(ours["method"]),
        rss_ratio_vs_ort=round(ours_rss / ort_rss, 3) if ort_rss else 0.0,
        time_ratio_vs_ort=round(ours_s / ort_s, 3), peak_rss_mb=round(ours_rss / 2**20, 1),
        peak_rss_mb_ort=round(ort_rss / 2**20, 1), seconds=round(ours_s, 1), seconds_ort=round(ort_s, 1), rows=rows)


if __name__ == "__main__":
    _child(sys.argv[1:])
