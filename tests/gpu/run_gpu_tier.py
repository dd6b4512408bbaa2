"""Run the GPU tier on a host with an NVIDIA GPU and TensorRT, and print what ran beside ``trtexec``.

    python -m tests.gpu.run_gpu_tier [--model shapes] [--batches 1,8] [--dla] [--no-pytest] [--json OUT]

1. runs ``pytest tests/gpu`` (the agreement and throughput checks; ``--no-pytest`` skips it);
2. for each precision this TensorRT builds (fp32, fp16, int8; with ``--dla`` also fp16 / int8 on each DLA core),
   builds the engine with ``trtserve build``'s code, measures trtserve's tensorrt backend (frames/s per batch
   size, host-to-host, as served) and runs ``trtexec`` on the same ONNX with the same build path (same flags,
   Q/DQ model or calibration cache, shapes) for its GPU-compute throughput;
3. prints one table (TensorRT version, GPU, precision, DLA or not, batch, trtserve frames/s, trtexec frames/s,
   detections agreeing with FP32 ONNX Runtime) — the figures the README's "What is verified where" is missing.

Everything that needs a GPU is imported lazily, so ``--help`` and the helpers (trtexec command line, output
parsing, the table) work and are tested anywhere (tests/unit/tensorrt/test_gpu_runner.py).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Row:
    tensorrt: str
    gpu: str
    precision: str
    dla_core: int | None
    batch: int
    trtserve_fps: float | None
    trtexec_fps: float | None
    agreement: float | None  # F1 at IoU 0.5 against FP32 ONNX Runtime's detections
    note: str = ""


def parse_trtexec_throughput(output: str) -> float | None:
    """Queries per second from trtexec's performance summary (``Throughput: 1234.5 qps``), or None."""
    found = re.findall(r"Throughput:\s*([0-9.]+)\s*qps", output)
    return float(found[-1]) if found else None


def trtexec_command(trtexec: str, onnx: Path, precision: str, quantization: str, strongly_typed: bool,
                    shapes: dict[str, list[list[int]]], batch: int, calibration_cache: Path | None = None,
                    dla_core: int | None = None, workspace_mib: int = 2048, major: int = 10) -> list[str]:
    """trtexec flags for the build path trtserve took (``trtserve.tensorrt.plan.BuildPath``) at one batch size."""
    def dims(shape: list[int]) -> str:
        return "x".join(str(d) for d in shape)

    command = [trtexec, f"--onnx={onnx}", f"--memPoolSize=workspace:{workspace_mib}"]
    if shapes:
        command += ["--minShapes=" + ",".join(f"{n}:{dims(s[0])}" for n, s in shapes.items()),
                    "--optShapes=" + ",".join(f"{n}:{dims(s[1])}" for n, s in shapes.items()),
                    "--maxShapes=" + ",".join(f"{n}:{dims(s[2])}" for n, s in shapes.items()),
                    "--shapes=" + ",".join(f"{n}:{dims([batch, *s[1][1:]])}" for n, s in shapes.items())]
    if strongly_typed and major == 10:
        command.append("--stronglyTyped")  # the default (and only mode) on 11.x
    elif precision == "fp16" and major < 11:
        command.append("--fp16")
    elif precision == "int8" and quantization == "implicit":
        command += ["--int8", "--fp16"] + ([f"--calib={calibration_cache}"] if calibration_cache else [])
    if dla_core is not None:
        command += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    return command


def format_table(rows: list[Row]) -> str:
    header = ["TensorRT", "GPU", "precision", "DLA", "batch", "trtserve frames/s", "trtexec frames/s", "ratio",
              "agrees with FP32", "note"]

    def fmt(value: float | None, spec: str = ".0f") -> str:
        return "-" if value is None else format(value, spec)

    lines = [header]
    for r in rows:
        ratio = r.trtserve_fps / r.trtexec_fps if r.trtserve_fps and r.trtexec_fps else None
        lines.append([r.tensorrt, r.gpu, r.precision, "-" if r.dla_core is None else f"core {r.dla_core}",
                      str(r.batch), fmt(r.trtserve_fps), fmt(r.trtexec_fps), fmt(ratio, ".2f"),
                      fmt(r.agreement, ".3f"), r.note])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu.run_gpu_tier", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="model of the repository (default: the bundled shapes)")
    parser.add_argument("--repository", type=Path, default=ROOT / "engines", help="model repository (copied first)")
    parser.add_argument("--batches", default="1,8", help="batch sizes to time, comma separated (default: 1,8)")
    parser.add_argument("--iterations", type=int, default=50, help="timed batches per point (default: 50)")
    parser.add_argument("--dla", action="store_true", help="also build fp16 / int8 on every DLA core (Jetson)")
    parser.add_argument("--trtexec", default=None, help="trtexec binary (default: PATH, /usr/src/tensorrt/bin)")
    parser.add_argument("--no-pytest", action="store_true", help="do not run pytest tests/gpu first")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batches {args.batches!r}: expected comma-separated integers, e.g. 1,8")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error("--batches needs positive batch sizes")
    return args


def find_trtexec(explicit: str | None) -> str | None:
    for candidate in (explicit, shutil.which("trtexec"), "/usr/src/tensorrt/bin/trtexec"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _agreement(engine: Any, reference: Any, frames: list[Any]) -> float:
    """F1 at IoU 0.5 of the engine's detections against FP32 ONNX Runtime's, as the README reports INT8's."""
    from trtserve.vision.matching import MatchCounts, match

    counts = MatchCounts()
    for a, b in zip(engine.detect(frames), reference.detect(frames)):
        if a.detections is None or b.detections is None:
            continue
        d, r = a.detections, b.detections
        counts = counts + match(d.boxes_xyxy, d.scores, d.class_ids, r.boxes_xyxy, r.class_ids, 0.5)
    return counts.f1


def measure(args: argparse.Namespace) -> list[Row]:
    """Build, time and compare every precision on this host (needs TensorRT, cuda-python and a GPU)."""
    import numpy as np

    from trtserve.backends.tensorrt import TensorRTBackend
    from trtserve.datasets.synthetic import evaluation_set
    from trtserve.detector import Detector
    from trtserve.errors import TrtserveError
    from trtserve.repository import ModelRepository
    from trtserve.tensorrt.builder import build_engine, import_tensorrt
    from trtserve.tensorrt.cuda import CudaRuntime
    from trtserve.tensorrt.keys import BuildSettings
    from trtserve.tensorrt.plan import TrtVersion

    trt = import_tensorrt()
    version = TrtVersion.parse(trt.__version__)
    gpu = CudaRuntime().device().gpu_name
    work = Path(tempfile.mkdtemp(prefix="trtserve-gpu-"))
    shutil.copytree(args.repository / args.model, work / args.model, ignore=shutil.ignore_patterns("cache"))
    config = ModelRepository(work).get(args.model)
    trtexec = find_trtexec(args.trtexec)
    frames = [s.image_bgr for s in evaluation_set(32)]
    max_batch = max(args.batch_sizes)
    dla_cores = int(getattr(trt.Builder(trt.Logger()), "num_DLA_cores", 0)) if args.dla else 0
    plans = [(p, None) for p in ("fp32", "fp16", "int8")] + \
        [(p, core) for core in range(dla_cores) for p in ("fp16", "int8")]
    rows: list[Row] = []
    with Detector.open(config, "fp32") as reference:
        for precision, dla_core in plans:
            settings = BuildSettings(precision, max_batch, max_batch, dla_core=dla_core, execution_contexts=1)
            try:
                built = build_engine(config, settings)
            except TrtserveError as exc:
                rows.append(Row(str(version), gpu, precision, dla_core, 0, None, None, None, f"not built: {exc}"))
                continue
            with Detector.open(config, precision, backend="tensorrt") as engine:
                agreement = _agreement(engine, reference, frames)
            path = built.path
            with TensorRTBackend(built.plan).load() as backend:
                name, (_, opt_shape, _) = next(iter(built.record.profile.items()))
                for batch in args.batch_sizes:
                    x = np.random.default_rng(0).random((batch, *opt_shape[1:]), dtype=np.float32)
                    backend.infer({name: x})  # warm-up
                    started = time.perf_counter()
                    for _ in range(args.iterations):
                        backend.infer({name: x})
                    fps = args.iterations * batch / (time.perf_counter() - started)
                    theirs, note = None, "trtexec not found" if trtexec is None else ""
                    if trtexec is not None:
                        onnx = built.plan.parent / f"{path.onnx.stem}.fp16.onnx" if path.convert_fp16 else path.onnx
                        command = trtexec_command(trtexec, onnx, precision, path.quantization, path.strongly_typed,
                                                  built.record.profile, batch, path.calibration_cache, dla_core,
                                                  major=version.major)
                        proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
                        qps = parse_trtexec_throughput(proc.stdout + proc.stderr)
                        theirs = qps * batch if qps is not None else None
                        note = "" if qps is not None else f"trtexec failed (exit {proc.returncode})"
                    rows.append(Row(str(version), gpu, precision, dla_core, batch, fps, theirs,
                                    agreement if batch == args.batch_sizes[0] else None, note))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status = 0
    if not args.no_pytest:
        status = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-s", str(ROOT / "tests" / "gpu")],
                                cwd=ROOT).returncode
    try:
        rows = measure(args)
    except Exception as exc:  # a host without TensorRT / a GPU: say so, with what pytest already reported
        sys.stderr.write(f"run_gpu_tier: cannot measure on this host: {type(exc).__name__}: {exc}\n")
        return status or 2
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
