"""What to install for TensorRT on this host (``trtserve doctor``, and the error when ``build`` or the tensorrt
backend finds no TensorRT).

On x86-64 (and Arm servers) TensorRT 10/11 is on PyPI, one package per CUDA major: ``tensorrt-cu12`` and
``tensorrt-cu13`` (the driver decides which CUDA it can run: 525 or newer for CUDA 12, 580 or newer for CUDA 13).
On a Jetson it comes with JetPack (the ``python3-libnvinfer`` Debian package), never from PyPI.
"""

from __future__ import annotations

import platform
from pathlib import Path

#: The oldest driver branch that runs each CUDA major (Linux; NVIDIA's CUDA toolkit release notes).
MIN_DRIVER_FOR_CUDA = ((13, 580), (12, 525))
L4T_RELEASE_FILE = Path("/etc/nv_tegra_release")


def cuda_majors_for_driver(driver: str | None) -> tuple[int, ...]:
    """The CUDA majors (newest first) a driver version such as ``'575.57.08'`` runs; () when unknown or too old."""
    try:
        branch = int(str(driver).split(".")[0])
    except ValueError:
        return ()
    return tuple(cuda for cuda, oldest in MIN_DRIVER_FOR_CUDA if branch >= oldest)


def tensorrt_install_hint(machine: str, jetson: bool, has_gpu: bool, driver: str | None = None,
                          cuda_runtime: str | None = None) -> str:
    """One sentence: what to install for TensorRT on a host with these facts (``machine``: platform.machine();
    ``driver``: nvidia-smi's driver version; ``cuda_runtime``: ``'12.6'`` from cuda-python, when it is installed)."""
    if jetson:
        return ("on a Jetson TensorRT comes with JetPack: `sudo apt install python3-libnvinfer` (part of "
                "nvidia-jetpack; a virtual environment needs --system-site-packages to see it), not from PyPI")
    if not has_gpu:
        return ("this host has no NVIDIA GPU, which TensorRT needs: serve with the onnxruntime backend here; on an "
                "x86-64 GPU host `pip install tensorrt-cu12` or `tensorrt-cu13` (by the CUDA its driver runs), on a "
                "Jetson it comes with JetPack")
    if machine.lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return f"TensorRT has no wheels for {machine}; use the NGC TensorRT container (nvcr.io/nvidia/tensorrt)"
    majors = cuda_majors_for_driver(driver)
    if cuda_runtime:  # cuda-python is installed: match its CUDA, if the driver runs it
        try:
            runtime_major = int(cuda_runtime.split(".")[0])
        except ValueError:
            runtime_major = 0
        if runtime_major in majors or (not majors and runtime_major in (12, 13)):
            majors = (runtime_major,)
    if driver is not None and not majors:
        return (f"driver {driver} is too old for the TensorRT wheels on PyPI (CUDA 12 needs driver 525 or newer): "
                "update the NVIDIA driver, then `pip install tensorrt-cu12`")
    if not majors:
        return "`pip install tensorrt-cu12` or `tensorrt-cu13` (TensorRT 10/11 wheels, by the CUDA the driver runs)"
    wanted = majors[0]
    also = f" (or tensorrt-cu{majors[1]})" if len(majors) > 1 else ""
    via = f"driver {driver} runs CUDA {wanted}" if driver else f"CUDA {wanted}"
    return (f"`pip install tensorrt-cu{wanted}`{also}: TensorRT's wheels on PyPI, for {via}; "
            "`pip install 'trtserve[gpu]'` adds cuda-python")


def install_hint_here() -> str:
    """:func:`tensorrt_install_hint` for this host (runs nvidia-smi; never raises)."""
    from trtserve.tensorrt.cuda import nvidia_smi

    gpus, driver, _ = nvidia_smi()
    jetson = L4T_RELEASE_FILE.is_file()
    return tensorrt_install_hint(platform.machine(), jetson, bool(gpus) or jetson, driver)
