import json

import pytest

from trtserve.cli import main
from trtserve.deploy.doctor import Report, _gpu_metrics, backend_support, parse_l4t_release


def test_runs_here_and_says_why_tensorrt_is_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backends"]["onnxruntime"]["available"] is True
    assert "CPUExecutionProvider" in report["onnxruntime_providers"]
    if report["tensorrt"] is None:
        assert report["backends"]["tensorrt"] == {"available": False, "precisions": [],
                                                  "why_not": "TensorRT is not installed"}
        assert any("JetPack" in n for n in report["notes"])
    if not report["gpus"] and report["machine"] == "x86_64":
        assert report["gpu_metrics"] == "off: no NVIDIA GPU"


def test_l4t_release_line() -> None:
    line = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8"
    assert parse_l4t_release(line) == "36.4.3"
    assert parse_l4t_release("garbage") is None


@pytest.mark.parametrize("version, int8_paths", [
    ("8.5.2", ["int8 (calibration cache, implicit)"]),
    ("10.3.0", ["int8 (Q/DQ, strongly typed)", "int8 (calibration cache, implicit)"]),
    ("11.4.1", ["int8 (Q/DQ, strongly typed)"]),
])
def test_int8_paths_follow_the_tensorrt_version(version: str, int8_paths: list[str]) -> None:
    r = Report(python="3.10", machine="aarch64", gpus=[{"name": "Orin", "compute_capability": "8.7",
                                                         "memory": "-"}], tensorrt=version, cuda_runtime="12.6")
    got = backend_support(r)["tensorrt"]
    assert got["available"] and [p for p in got["precisions"] if p.startswith("int8")] == int8_paths


def test_gpu_metrics_say_which_collector_or_why_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    gpu = Report(python="3.10", machine="x86_64", gpus=[{"name": "A10", "compute_capability": "8.6", "memory": "-"}])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert _gpu_metrics(gpu) == "off: nvidia-ml-py is not installed (pip install 'trtserve[gpu]')"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert _gpu_metrics(gpu) == "NVML (nvidia-ml-py)"
    jetson = Report(python="3.10", machine="aarch64", l4t="36.4.0")
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert _gpu_metrics(jetson) == "off: tegrastats is not on PATH"
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/tegrastats")
    assert _gpu_metrics(jetson) == "tegrastats"
