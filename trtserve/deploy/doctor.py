"""``trtserve doctor``: what this host has, and which backends and precisions will work here and why not."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trtserve.tensorrt.cuda import nvidia_smi

L4T_RELEASE_FILE = Path("/etc/nv_tegra_release")
# L4T (Jetson Linux) release -> JetPack, for the releases this project targets
L4T_TO_JETPACK = {"35.3": "5.1.1", "35.4": "5.1.2", "35.5": "5.1.3", "35.6": "5.1.4", "36.2": "6.0 DP",
                  "36.3": "6.0", "36.4": "6.1/6.2", "38.2": "7.0"}


@dataclass
class Report:
    python: str
    machine: str
    gpus: list[dict[str, str]] = field(default_factory=list)
    driver: str | None = None
    cuda_runtime: str | None = None
    tensorrt: str | None = None
    l4t: str | None = None
    jetpack: str | None = None
    dla_cores: int | None = None
    onnxruntime: str | None = None
    onnxruntime_providers: list[str] = field(default_factory=list)
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpu_metrics: str = ""  # what `trtserve serve` exports as trtserve_gpu_* here, or why nothing
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_l4t_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.0, ...`` -> ``'36.4.0'``."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def diagnose() -> Report:
    """Inspect the host. Never raises for a missing component: it is reported with the reason."""
    report = Report(python=platform.python_version(), machine=platform.machine())
    report.gpus, report.driver, why = nvidia_smi()
    if why:
        report.notes.append(why)
    if L4T_RELEASE_FILE.is_file():
        report.l4t = parse_l4t_release(L4T_RELEASE_FILE.read_text(errors="replace"))
        if report.l4t:
            report.jetpack = L4T_TO_JETPACK.get(".".join(report.l4t.split(".")[:2]), "unknown to this table")
    try:
        from trtserve.errors import ModelLoadError
        from trtserve.tensorrt.cuda import import_cudart

        cudart = import_cudart()  # cuda.bindings.runtime, or cuda.cudart of older cuda-python
        err, version = cudart.cudaRuntimeGetVersion()
        if int(err) == 0:
            report.cuda_runtime = f"{version // 1000}.{(version % 1000) // 10}"
    except ModelLoadError:
        report.notes.append("cuda-python not installed (pip install 'trtserve[gpu]'): needed by the TensorRT backend")
    except Exception as exc:  # a broken CUDA install must not crash the diagnosis
        report.notes.append(f"cuda-python present but the CUDA runtime failed: {exc}")
    try:
        trt = importlib.import_module("tensorrt")
        report.tensorrt = str(trt.__version__)
        if report.gpus or report.l4t:
            builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
            report.dla_cores = int(getattr(builder, "num_DLA_cores", 0))
    except ImportError:
        from trtserve.tensorrt.install_hint import tensorrt_install_hint

        report.notes.append("TensorRT Python bindings not found: " + tensorrt_install_hint(
            report.machine, report.l4t is not None or L4T_RELEASE_FILE.is_file(), bool(report.gpus) or bool(report.l4t),
            report.driver, report.cuda_runtime))
    except Exception as exc:
        report.notes.append(f"TensorRT present but unusable: {exc}")
    try:
        ort = importlib.import_module("onnxruntime")
        report.onnxruntime = str(ort.__version__)
        report.onnxruntime_providers = list(ort.get_available_providers())
    except ImportError:
        report.notes.append("onnxruntime not installed")
    report.backends = backend_support(report)
    report.gpu_metrics = _gpu_metrics(report)
    return report


def _gpu_metrics(r: Report) -> str:
    """The collector `trtserve serve` will use for trtserve_gpu_* metrics (the same checks, without starting it)."""
    if r.gpus:
        if importlib.util.find_spec("pynvml") is None:
            return "off: nvidia-ml-py is not installed (pip install 'trtserve[gpu]')"
        return "NVML (nvidia-ml-py)"
    if r.l4t or platform.machine() == "aarch64":
        return "tegrastats" if shutil.which("tegrastats") else "off: tegrastats is not on PATH"
    return "off: no NVIDIA GPU"


def backend_support(r: Report) -> dict[str, dict[str, Any]]:
    """What each registered backend says it can run on this host (its ``support``), by name."""
    from trtserve.backends.registry import BACKENDS

    return {name: BACKENDS.load(name).support(r).as_dict() for name in BACKENDS.names()}


def render(report: Report) -> str:
    gpu = "; ".join(f"{g['name']} (sm {g['compute_capability']}, {g['memory']})" for g in report.gpus) or "none"
    lines = [
        f"python        {report.python} ({report.machine})",
        f"GPU           {gpu}",
        f"driver        {report.driver or '-'}",
        f"CUDA runtime  {report.cuda_runtime or '-'}",
        f"TensorRT      {report.tensorrt or '-'}",
        f"Jetson        L4T {report.l4t}, JetPack {report.jetpack}" if report.l4t else "Jetson        no",
        f"DLA cores     {report.dla_cores if report.dla_cores is not None else '-'}",
        f"ONNX Runtime  {report.onnxruntime or '-'} {report.onnxruntime_providers}",
        f"GPU metrics   {report.gpu_metrics or '-'}",
        "backends:",
    ]
    for name, b in report.backends.items():
        state = ", ".join(b["precisions"]) if b["available"] else f"unavailable: {b['why_not']}"
        lines.append(f"  {name:<12} {state}")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
