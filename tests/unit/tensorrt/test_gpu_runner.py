"""The GPU-tier runner's host-independent parts: its command line, trtexec's flags and output, the table."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.gpu.run_gpu_tier import ROOT, Row, format_table, parse_args, parse_trtexec_throughput, trtexec_command

SHAPES = {"images": [[1, 3, 256, 256], [8, 3, 256, 256], [8, 3, 256, 256]]}


def test_help_runs_anywhere() -> None:
    out = subprocess.run([sys.executable, "-m", "tests.gpu.run_gpu_tier", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "trtexec" in out.stdout and "--dla" in out.stdout


def test_bad_batches_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--batches", "1,4"]).batch_sizes == [1, 4]
    with pytest.raises(SystemExit):
        parse_args(["--batches", "one"])
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_trtexec_throughput_is_read_from_its_summary() -> None:
    log = ("[I] === Performance summary ===\n[I] Throughput: 812.345 qps\n[I] Latency: min = 1.1 ms\n")
    assert parse_trtexec_throughput(log) == pytest.approx(812.345)
    assert parse_trtexec_throughput("[E] Engine could not be created") is None


@pytest.mark.parametrize("major, precision, quantization, strongly_typed, wanted, unwanted", [
    (8, "fp16", "none", False, ["--fp16"], ["--stronglyTyped"]),
    (8, "int8", "implicit", False, ["--int8", "--fp16", "--calib=c.cache"], ["--stronglyTyped"]),
    (10, "int8", "explicit", True, ["--stronglyTyped"], ["--int8", "--fp16"]),
    (11, "int8", "explicit", True, [], ["--stronglyTyped", "--int8", "--fp16"]),  # strongly typed is the default
    (11, "fp16", "none", True, [], ["--fp16"]),  # an FP16 ONNX, no precision flags
])
def test_trtexec_gets_the_build_path_trtserve_took(major: int, precision: str, quantization: str,
                                                  strongly_typed: bool, wanted: list[str], unwanted: list[str]) -> None:
    command = trtexec_command("trtexec", Path("m.onnx"), precision, quantization, strongly_typed, SHAPES, 4,
                              Path("c.cache"), None, major=major)
    assert command[:2] == ["trtexec", "--onnx=m.onnx"]
    assert "--shapes=images:4x3x256x256" in command and "--maxShapes=images:8x3x256x256" in command
    assert all(flag in command for flag in wanted) and not any(flag in command for flag in unwanted)
    dla = trtexec_command("trtexec", Path("m.onnx"), "fp16", "none", False, SHAPES, 1, None, 1, major=8)
    assert dla[-2:] == ["--useDLACore=1", "--allowGPUFallback"]


def test_the_table_has_one_row_per_run_with_the_ratio() -> None:
    rows = [Row("10.3.0", "Orin", "int8", 0, 8, 900.0, 1000.0, 0.981), Row("10.3.0", "Orin", "fp32", None, 1, None,
                                                                          None, None, "not built: x")]
    table = format_table(rows).splitlines()
    assert table[0].split()[:5] == ["TensorRT", "GPU", "precision", "DLA", "batch"]
    assert "core 0" in table[2] and "0.90" in table[2] and "0.981" in table[2]
    assert table[3].split()[2:4] == ["fp32", "-"] and table[3].endswith("not built: x")
