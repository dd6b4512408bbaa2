"""What `trtserve doctor` and `build` tell a host without TensorRT to install: the PyPI wheel for the CUDA its driver
runs on x86-64 / Arm servers, JetPack's package on a Jetson, and onnxruntime where there is no GPU."""

import pytest

from trtserve.cli import main
from trtserve.tensorrt.install_hint import cuda_majors_for_driver, tensorrt_install_hint


@pytest.mark.parametrize("driver, majors", [("580.65.06", (13, 12)), ("575.57.08", (12,)), ("525.60.13", (12,)),
                                            ("470.256.02", ()), (None, ()), ("garbage", ())])
def test_cuda_majors_follow_the_driver_branch(driver: str | None, majors: tuple[int, ...]) -> None:
    assert cuda_majors_for_driver(driver) == majors


def test_each_kind_of_host_is_told_what_to_install() -> None:
    new = tensorrt_install_hint("x86_64", False, True, "580.65.06")
    assert new.startswith("`pip install tensorrt-cu13` (or tensorrt-cu12)") and "driver 580.65.06" in new
    assert tensorrt_install_hint("x86_64", False, True, "550.54.15").startswith("`pip install tensorrt-cu12`:")
    assert tensorrt_install_hint("AMD64", False, True, "580.1", cuda_runtime="12.8").startswith(
        "`pip install tensorrt-cu12`:")  # cuda-python 12 installed: the wheel that matches it
    old = tensorrt_install_hint("x86_64", False, True, "470.256.02")
    assert "too old" in old and "update the NVIDIA driver" in old
    jetson = tensorrt_install_hint("aarch64", True, True)
    assert "JetPack" in jetson and "python3-libnvinfer" in jetson and "not from PyPI" in jetson
    cpu = tensorrt_install_hint("x86_64", False, False)
    assert "no NVIDIA GPU" in cpu and "onnxruntime" in cpu and "tensorrt-cu12" in cpu
    assert "nvcr.io" in tensorrt_install_hint("ppc64le", False, True, "580.1")


def test_doctor_here_says_what_to_install(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    if report["tensorrt"] is None:
        note = next(n for n in report["notes"] if n.startswith("TensorRT Python bindings not found: "))
        assert "pip install tensorrt-cu" in note or "python3-libnvinfer" in note
        assert "cannot be pip-installed" not in note
