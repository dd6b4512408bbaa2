"""``trtserve bench calibration``: our calibrator against ONNX Runtime's ``quantize_static``, side by side.

Both calibrate the same FP32 model on the same frames (entropy, QDQ, per-channel weights), each in
its own child process so that its peak RSS is its own (``wait4`` resource usage). Then both INT8
models and the FP32 model are scored on the held-out set, and INT8 vs FP32 throughput is measured on
ONNX Runtime CPU at batch 8, all in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtserve.config import ModelConfig
from trtserve.errors import ServerError
from trtserve.reports import JsonReport


@dataclass(frozen=True)
class CalibrationBenchReport(JsonReport):
    """``trtserve bench calibration``: ours against ONNX Runtime's ``quantize_static`` (``_ort``), rounded as printed.

    Ratios are ours / ONNX Runtime's; speed-ups are end-to-end frames/s at batch 8 against FP32's.
    """

    frames: int  # calibration frames, the same for both
    rss_ratio_vs_ort: float  # peak RSS of the calibrating process
    time_ratio_vs_ort: float  # wall time of the calibrating process
    peak_rss_mb: float
    peak_rss_mb_ort: float
    seconds: float
    seconds_ort: float
    map50_95_fp32: float
    map50_95_int8: float
    map50_95_int8_ort: float
    map50_fp32: float
    map50_int8: float
    map50_int8_ort: float
    agreement_f1: float  # our INT8's detections against FP32's (F1 at IoU 0.5)
    int8_speedup: float
    int8_speedup_raw_backend: float  # backend.infer alone instead of end to end
    int8_ort_speedup: float
    fps_batch8: Mapping[str, float]  # fp32 | int8 | int8_ort -> end-to-end frames/s at batch 8


def _frames(folder: Path) -> list[np.ndarray]:
    import cv2

    return [np.asarray(cv2.imread(str(p), cv2.IMREAD_COLOR), np.uint8) for p in sorted(folder.glob("*.png"))]


def _child(argv: list[str]) -> None:
    """Run one calibration in this process (the parent measures its peak RSS)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("which", choices=["ours", "ort"])
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
    if args.which == "ours":
        from trtserve.calibration.frames import FrameSource
        from trtserve.calibration.run import run_calibration

        source = FrameSource.from_images(args.images, 10**9)
        run_calibration(config, source, "entropy", 8, progress=False)
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        frames = _frames(args.images)

        class Reader(CalibrationDataReader):  # type: ignore[misc]
            def __init__(self) -> None:
                self.batches: Iterator[dict[str, np.ndarray]] = iter(
                    {input_name: pre.batch([f])[0]} for f in frames)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.batches, None)

        quantize_static(str(config.onnx_path), str(args.out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Entropy)
    sys.stdout.write(json.dumps({"seconds": time.monotonic() - t0}) + "\n")


def _measure(which: str, repository: Path, model: str, images: Path, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "trtserve.bench.calibration", which, "--repository", str(repository),
           "--model", model, "--images", str(images), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    stdout = proc.stdout.read() if proc.stdout else ""
    stderr = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise ServerError(f"{which} calibration failed in its child process:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"seconds": float(result["seconds"]), "peak_rss_bytes": float(usage.ru_maxrss * 1024)}


def run(config: ModelConfig, num_frames: int = 64, eval_images: int = 300) -> CalibrationBenchReport:
    """Run the whole comparison on a scratch copy of ``config``'s model folder."""
    from trtserve.bench.throughput import ThroughputRow, throughput
    from trtserve.calibration.compare import compare_precisions
    from trtserve.calibration.evaluation import evaluate
    from trtserve.config import load_model_config
    from trtserve.datasets.synthetic import CALIBRATION_SEED, render_scene, write_coco
    from trtserve.detector import Detector

    with tempfile.TemporaryDirectory(prefix="trtserve-bench-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        shutil.copytree(config.directory, repo / config.name,
                        ignore=shutil.ignore_patterns("*.int8*", "calibration*"))
        images = root / "frames"
        write_coco([render_scene(CALIBRATION_SEED, i) for i in range(num_frames)], images)
        ort_model = root / "ort_int8.onnx"
        ours = _measure("ours", repo, config.name, images, root / "unused")
        theirs = _measure("ort", repo, config.name, images, ort_model)
        local = load_model_config(repo / config.name / "model.yaml")
        accuracy = compare_precisions(local, eval_images)
        ort_config = ModelConfig(**{**local.__dict__, "artifacts": {**local.artifacts, "int8": ort_model}})
        with Detector.open(ort_config, "int8") as detector:
            ort_map = evaluate(detector, eval_images)
        speed: dict[str, ThroughputRow] = {}
        for precision in ("fp32", "int8"):
            with Detector.open(local, precision) as detector:
                speed[precision] = throughput(detector, [8], repeats=15)[0]
        with Detector.open(ort_config, "int8") as detector:
            speed["int8_ort"] = throughput(detector, [8], repeats=15)[0]
    return CalibrationBenchReport(
        frames=num_frames,
        rss_ratio_vs_ort=round(ours["peak_rss_bytes"] / theirs["peak_rss_bytes"], 3),
        time_ratio_vs_ort=round(ours["seconds"] / theirs["seconds"], 3),
        peak_rss_mb=round(ours["peak_rss_bytes"] / 2**20, 1),
        peak_rss_mb_ort=round(theirs["peak_rss_bytes"] / 2**20, 1),
        seconds=round(ours["seconds"], 1), seconds_ort=round(theirs["seconds"], 1),
        map50_95_fp32=accuracy.map50_95_fp32, map50_95_int8=accuracy.map50_95_int8,
        map50_95_int8_ort=ort_map.map50_95, map50_fp32=accuracy.map50_fp32,
        map50_int8=accuracy.map50_int8, map50_int8_ort=ort_map.map50,
        agreement_f1=accuracy.agreement_f1,
        int8_speedup=round(speed["int8"].end_to_end_fps / speed["fp32"].end_to_end_fps, 3),
        int8_speedup_raw_backend=round(speed["int8"].raw_backend_fps / speed["fp32"].raw_backend_fps, 3),
        int8_ort_speedup=round(speed["int8_ort"].end_to_end_fps / speed["fp32"].end_to_end_fps, 3),
        fps_batch8={k: v.end_to_end_fps for k, v in speed.items()},
    )


if __name__ == "__main__":
    _child(sys.argv[1:])
