"""NVIDIA's perf_analyzer, unchanged, drives trtserve over gRPC (unary and streaming) and HTTP for a few seconds each.

perf_analyzer reads the model's metadata and config to build its requests, sends the image from ``--input-data``,
and reads ModelStatistics before and after each measurement: it only runs when all of these agree with Triton's
conventions. The binary comes from PyPI's ``perf-analyzer`` through ``tests/tools/install_perf_analyzer.sh``
(`make test`'s tool step; it needs glibc 2.38, which that script provides where the host's is older).
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest

from trtserve.datasets.synthetic import evaluation_set
from trtserve.serving.process import free_port, start_server_process, stop_server_process

from ...conftest import ENGINES, ROOT

PERF_ANALYZER = ROOT / "build" / "perf-analyzer" / "perf_analyzer"


@dataclass(frozen=True)
class Served:
    grpc: str
    http: str
    input_data: Path


def perf_analyzer() -> Path:
    if not os.access(PERF_ANALYZER, os.X_OK):
        message = (f"perf_analyzer is not installed at {PERF_ANALYZER} (`make tools`, or "
                   "`bash tests/tools/install_perf_analyzer.sh`)")
        if os.environ.get("TRTSERVE_REQUIRE_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)
    return PERF_ANALYZER


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    perf_analyzer()
    folder = tmp_path_factory.mktemp("perf_analyzer")
    scene = next(s for s in evaluation_set(20) if len(s.class_ids) >= 2).image_bgr
    jpeg = cv2.imencode(".jpg", cv2.resize(scene, (480, 360)), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    # perf_analyzer's "b64" is the tensor's raw bytes: for BYTES, Triton's length-prefixed form of the one element
    data = {"data": [{"IMAGE": {"b64": base64.b64encode(struct.pack("<I", len(jpeg)) + jpeg).decode()}}]}
    (folder / "input.json").write_text(json.dumps(data))
    port = free_port()
    server, address = start_server_process(ENGINES, "shapes", "fp32", folder / "server.log", http_port=port)
    yield Served(address, f"127.0.0.1:{port}", folder / "input.json")
    assert stop_server_process(server) == 0
    log = (folder / "server.log").read_text()
    assert "Traceback" not in log and "NotImplementedError" not in log, log[-3000:]


# These tests assert that perf_analyzer runs unchanged and reports throughput without errors, not a stable figure: on a
# loaded 2-core CI machine consecutive windows can differ by more than 100 %, and perf_analyzer then ends with
# "Failed to obtain stable measurement" (seen once at load ~12). 1000 % accepts any three windows.
UNSTABLE_OK = ("--stability-percentage", "1000", "--max-trials", "10")


@pytest.mark.parametrize("protocol, streaming", [("grpc", False), ("grpc", True), ("http", False)])
def test_perf_analyzer_measures_throughput_without_errors(served: Served, protocol: str, streaming: bool) -> None:
    url = served.grpc if protocol == "grpc" else served.http
    cmd = [str(perf_analyzer()), "-m", "shapes", "-i", protocol, "-u", url, "--input-data", str(served.input_data),
           "--concurrency-range", "4", "--measurement-interval", "1000", *UNSTABLE_OK,
           *(["--streaming"] if streaming else [])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "error" not in out.lower(), out[-3000:]
    throughput = float(re.search(r"Throughput: ([0-9.]+) infer/sec", out).group(1))  # type: ignore[union-attr]
    assert throughput > 0
    # the server side of its report comes from ModelStatistics
    served_count = int(re.search(r"Successful request count: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert served_count > 0 and "compute infer" in out


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_drives_the_raw_tensor_interface_with_random_data(served: Served, protocol: str) -> None:
    """``shapes.raw`` (the model's own FP32 input tensor): perf_analyzer makes the tensors itself from the metadata."""
    url = served.grpc if protocol == "grpc" else served.http
    cmd = [str(perf_analyzer()), "-m", "shapes.raw", "-i", protocol, "-u", url, "--concurrency-range", "2",
           "--measurement-interval", "1000", *UNSTABLE_OK]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "error" not in out.lower(), out[-3000:]
    assert float(re.search(r"Throughput: ([0-9.]+) infer/sec", out).group(1)) > 0  # type: ignore[union-attr]
    assert int(re.search(r"Successful request count: (\d+)", out).group(1)) > 0  # type: ignore[union-attr]
