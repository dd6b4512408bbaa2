"""Issue 18's target "perf_analyzer's reported throughput over gRPC within 15 % of ``trtserve bench --kserve`` at the
same concurrency" — a script, not a test (its figures depend on the machine):

    .venv/bin/python tests/bench_perf_analyzer.py [--streams 2] [--repeats 3] [--frames-per-stream 100] [--http]

One ``trtserve serve`` (FP32, the bundled model unless ``--model``) serves every run. Each repeat runs, one after the
other against it: NVIDIA's perf_analyzer over gRPC with ``--streaming`` and without, at concurrency ``C = streams x
stream_max_in_flight`` (the server answers at most ``stream_max_in_flight`` = 4 requests of one ModelStreamInfer
stream at once, so ``bench --kserve --streams S`` keeps ``4 S`` requests in flight), and ``trtserve bench --kserve
--streams S`` (one tritonclient ModelStreamInfer stream per camera, unpaced). perf_analyzer sends the same JPEG frames
the bench sends (the sample video, quality 90), from ``--input-data``. Printed: each run's throughput, the medians,
the ratios of perf_analyzer's median to bench's, and the median of the per-repeat ratios (each repeat's runs are
back to back, so a change in the machine's load between repeats cancels out of its ratio). ``--http`` also runs
``trtserve bench --streams 8 --http`` once (its own server) for the HTTP efficiency figure. perf_analyzer is the one
``make tools`` installs (build/perf-analyzer/perf_analyzer). The machine's load (``uptime``) is printed before and
after.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trtserve.bench.streams import _sample_frames  # noqa: E402  (the bench's own frames)
from trtserve.serving.process import start_server_process, stop_server_process  # noqa: E402

PERF_ANALYZER = ROOT / "build" / "perf-analyzer" / "perf_analyzer"
IN_FLIGHT_PER_STREAM = 4  # the server's default stream_max_in_flight


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def input_data(folder: Path, frames: int) -> Path:
    """perf_analyzer's --input-data: the bench's JPEG frames, each as Triton's length-prefixed BYTES element."""
    blobs = _sample_frames(frames, 90)
    data = {"data": [{"IMAGE": {"b64": base64.b64encode(struct.pack("<I", len(b)) + b).decode()}} for b in blobs]}
    path = folder / "input.json"
    path.write_text(json.dumps(data))
    return path


def perf_analyzer(model: str, address: str, data: Path, concurrency: int, streaming: bool, window_ms: int) -> float:
    cmd = [str(PERF_ANALYZER), "-m", model, "-i", "grpc", "-u", address, "--input-data", str(data),
           "--concurrency-range", str(concurrency), "--measurement-interval", str(window_ms),
           "--stability-percentage", "100", "--max-trials", "3", *(["--streaming"] if streaming else [])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    found = re.search(r"Throughput: ([0-9.]+) infer/sec", out)
    if result.returncode != 0 or found is None or "error" in out.lower():
        raise SystemExit(f"perf_analyzer failed ({result.returncode}):\n{out[-3000:]}")
    return float(found.group(1))


def bench(model: str, args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "trtserve.cli", "--repository", str(ROOT / "engines"), "bench", "--model", model,
           "--json", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"trtserve bench failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--streams", type=int, default=2, help="bench --kserve cameras (perf_analyzer: 4x that)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames-per-stream", type=int, default=100)
    parser.add_argument("--window-ms", type=int, default=3000, help="perf_analyzer's measurement interval")
    parser.add_argument("--http", action="store_true", help="also: trtserve bench --streams 8 --http, once")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not os.access(PERF_ANALYZER, os.X_OK):
        raise SystemExit(f"perf_analyzer is not installed at {PERF_ANALYZER}: run `make tools`")
    concurrency = args.streams * IN_FLIGHT_PER_STREAM
    load_before = uptime()
    runs: dict[str, list[float]] = {"perf_analyzer_streaming": [], "perf_analyzer_unary": [], "bench_kserve": []}
    with tempfile.TemporaryDirectory(prefix="trtserve-pa-bench-") as tmp:
        folder = Path(tmp)
        data = input_data(folder, args.frames_per_stream)
        server, address = start_server_process(ROOT / "engines", args.model, "fp32", folder / "server.log")
        try:
            for k in range(args.repeats):
                runs["perf_analyzer_streaming"].append(
                    perf_analyzer(args.model, address, data, concurrency, True, args.window_ms))
                runs["bench_kserve"].append(float(bench(args.model, [
                    "--server", address, "--kserve", "--streams", str(args.streams),
                    "--frames-per-stream", str(args.frames_per_stream)])["fps"]))
                runs["perf_analyzer_unary"].append(
                    perf_analyzer(args.model, address, data, concurrency, False, args.window_ms))
                if not args.json:
                    done = ", ".join(f"{name} {values[-1]:.1f}/s" for name, values in runs.items())
                    print(f"repeat {k + 1}: {done}", flush=True)
        finally:
            stop_server_process(server)
    medians = {name: round(statistics.median(values), 1) for name, values in runs.items()}
    reference = medians["bench_kserve"]

    def paired(name: str) -> float | None:
        ratios = [a / b for a, b in zip(runs[name], runs["bench_kserve"]) if b]
        return round(statistics.median(ratios), 3) if ratios else None

    report: dict[str, Any] = {
        "model": args.model, "streams": args.streams, "concurrency": concurrency, "repeats": args.repeats,
        "runs": runs, "medians_per_s": medians,
        "ratio_streaming_to_bench": round(medians["perf_analyzer_streaming"] / reference, 3) if reference else None,
        "ratio_unary_to_bench": round(medians["perf_analyzer_unary"] / reference, 3) if reference else None,
        "paired_ratio_streaming": paired("perf_analyzer_streaming"),
        "paired_ratio_unary": paired("perf_analyzer_unary"),
        "load_before": load_before}
    if args.http:
        http = bench(args.model, ["--streams", "8", "--http"])
        report["http"] = {"fps": http["fps"], "raw_backend_fps": http["raw_backend_fps"],
                          "efficiency": http["efficiency"]}
    report["load_after"] = uptime()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"\n{args.model}: perf_analyzer at concurrency {concurrency} vs trtserve bench --kserve --streams "
          f"{args.streams} ({args.repeats} repeats, one server, medians)")
    for name, value in medians.items():
        print(f"  {name:26s} {value:8.1f} infer/s   runs {[round(v, 1) for v in runs[name]]}")
    print(f"  perf_analyzer --streaming / bench --kserve  {report['ratio_streaming_to_bench']}")
    print(f"  perf_analyzer (unary)     / bench --kserve  {report['ratio_unary_to_bench']}")
    print(f"  median of per-repeat ratios: streaming {report['paired_ratio_streaming']}, "
          f"unary {report['paired_ratio_unary']}")
    if "http" in report:
        h = report["http"]
        print(f"  bench --streams 8 --http: {h['fps']} fps, raw engine {h['raw_backend_fps']} fps, "
              f"efficiency {h['efficiency']}")
    print(f"  load before: {load_before}\n  load after:  {report['load_after']}")


if __name__ == "__main__":
    main()
