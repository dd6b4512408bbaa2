"""``trtserve doctor``: what this host has, and which backends and precisions will work here and why not."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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


def _nvidia_smi() -> tuple[list[dict[str, str]], str | None, str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], None, "nvidia-smi not found: no NVIDIA driver on this host (or not in PATH)"
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return [], None, f"nvidia-smi failed: {exc}"
    gpus, driver = [], None
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"name": parts[0], "compute_capability": parts[1], "memory": parts[2]})
            driver = parts[3]
    return gpus, driver, "" if gpus else "nvidia-smi lists no GPU"


def first_gpu() -> dict[str, str] | None:
    """Name and compute capability of the first GPU nvidia-smi lists, or None."""
    gpus, _, _ = _nvidia_smi()
    return gpus[0] if gpus else None


def diagnose() -> Report:
    """Inspect the host. Never raises for a missing component: it is reported with the reason."""
    report = Report(python=platform.python_version(), machine=platform.machine())
    report.gpus, report.driver, why = _nvidia_smi()
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
        report.notes.append("TensorRT Python bindings not found: they come with JetPack (Jetson) or the NGC "
                            "TensorRT container; they are not installed from PyPI here")
    except Exception as exc:
        report.notes.append(f"TensorRT present but unusable: {exc}")
    try:
        ort = importlib.import_module("onnxruntime")
        report.onnxruntime = str(ort.__version__)
        report.onnxruntime_providers = list(ort.get_available_providers())
    except ImportError:
        report.notes.append("onnxruntime not installed")
    report.backends = _backends(report)
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


def _backends(r: Report) -> dict[str, dict[str, Any]]:
    ort_ok = r.onnxruntime is not None
    providers = r.onnxruntime_providers
    ort_precisions = ["fp32", "int8 (Q/DQ model)"] if ort_ok else []
    if "CUDAExecutionProvider" in providers or "TensorrtExecutionProvider" in providers:
        ort_precisions.append("fp16")
    trt_why = None
    if r.tensorrt is None:
        trt_why = "TensorRT is not installed"
    elif not (r.gpus or r.l4t):
        trt_why = "no NVIDIA GPU found"
    elif r.cuda_runtime is None:
        trt_why = "cuda-python is missing or the CUDA runtime failed"
    trt_precisions: list[str] = []
    if trt_why is None and r.tensorrt is not None:
        from trtserve.tensorrt.builder import DLA_MIN_TRT11, TrtVersion

        version = TrtVersion.parse(r.tensorrt)
        major = version.major
        fp16 = "fp16"
        if major >= 11:  # strongly typed only: FP16 needs an FP16 ONNX, converted by onnxconverter-common
            fp16 = "fp16 (converted FP16 ONNX)" if importlib.util.find_spec("onnxconverter_common") else \
                "fp16 only with artifacts.fp16 (onnxconverter-common missing: pip install 'trtserve[gpu]')"
        trt_precisions = ["fp32", fp16, "int8 (Q/DQ, strongly typed)"] if major >= 10 else ["fp32", fp16]
        if major < 11:
            trt_precisions.append("int8 (calibration cache, implicit)")
        if r.dla_cores and (major < 11 or version >= DLA_MIN_TRT11):  # the rule `trtserve build` applies
            trt_precisions.append(f"DLA cores 0..{r.dla_cores - 1} (fp16/int8, --dla-core)")
    return {
        "onnxruntime": {"available": ort_ok, "providers": providers, "precisions": ort_precisions,
                        "why_not": None if ort_ok else "onnxruntime is not installed"},
        "tensorrt": {"available": trt_why is None, "precisions": trt_precisions, "why_not": trt_why},
    }


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
