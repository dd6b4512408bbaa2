"""Engines keyed by device: names, JSON sidecars, and picking the engine that fits this host.

A TensorRT plan is valid for one GPU model (compute capability), one TensorRT version and one set of
build settings. Each plan is stored as ``engines/<model>/cache/<key>.plan`` with ``<key>.json`` beside
it recording what it was built from (ONNX and calibration-cache sha256), the settings, the shape profile
and the build time. At load the repository picks the record that matches this host; on a mismatch the
error names what differs and the exact ``trtserve build`` command that makes a fitting engine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trtserve.config import ModelConfig
from trtserve.errors import ModelLoadError
from trtserve.tensorrt.cuda import DeviceInfo

CACHE_DIR = "cache"
DEFAULT_WORKSPACE_GB = 2.0
GIB = 1 << 30


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BuildSettings:
    """What the user chose for one build. Part of the engine key: a change means another engine."""

    precision: str
    max_batch: int
    opt_batch: int
    workspace_bytes: int = int(DEFAULT_WORKSPACE_GB * GIB)
    dla_core: int | None = None
    execution_contexts: int = 2  # one optimization profile each: contexts running concurrently need their own

    def __post_init__(self) -> None:
        if self.max_batch < 1 or not 1 <= self.opt_batch <= self.max_batch:
            raise ModelLoadError(f"batch sizes must satisfy 1 <= opt ({self.opt_batch}) <= max ({self.max_batch})")
        if self.workspace_bytes < 1:
            raise ModelLoadError(f"workspace of {self.workspace_bytes} bytes; give a positive --workspace-gb")
        if self.execution_contexts < 1:
            raise ModelLoadError(f"{self.execution_contexts} execution contexts; expected at least 1")

    def build_command(self, model: str, repository: Path) -> str:
        """The exact CLI command that builds an engine with these settings for ``model`` in ``repository``."""
        parts = ["trtserve", "build", model, "--precision", self.precision, "--max-batch", str(self.max_batch)]
        if self.opt_batch != self.max_batch:
            parts += ["--opt-batch", str(self.opt_batch)]
        if self.workspace_bytes != int(DEFAULT_WORKSPACE_GB * GIB):
            parts += ["--workspace-gb", f"{self.workspace_bytes / GIB:g}"]
        if self.dla_core is not None:
            parts += ["--dla-core", str(self.dla_core)]
        if self.execution_contexts != 2:
            parts += ["--contexts", str(self.execution_contexts)]
        return " ".join([*parts, "--repository", str(repository)])


@dataclass(frozen=True)
class EngineRecord:
    """The JSON sidecar of one plan."""

    model: str
    key: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    settings: dict[str, Any]
    onnx_file: str
    onnx_sha256: str
    build_path: str  # what the builder did, e.g. "int8 explicit (Q/DQ), strongly typed"
    profile: dict[str, list[list[int]]] = field(default_factory=dict)  # input -> [min, opt, max]
    calibration_cache_file: str | None = None
    calibration_cache_sha256: str | None = None
    build_time_s: float = 0.0
    built_at: str = ""

    @property
    def device(self) -> DeviceInfo:
        return DeviceInfo(self.gpu_name, self.compute_capability)

    def rebuild_command(self, plan: Path) -> str:
        """The command that rebuilds this engine (same settings) on the host at hand."""
        return BuildSettings(**self.settings).build_command(self.model, plan.resolve().parent.parent.parent)

    def mismatch(self, tensorrt_version: str, device: DeviceInfo) -> str | None:
        """Why this engine cannot run here, or None when it can."""
        if self.tensorrt_version != tensorrt_version:
            return f"built with TensorRT {self.tensorrt_version}, this host has TensorRT {tensorrt_version}"
        if self.device != device:
            return (f"built for {self.gpu_name} (compute {self.compute_capability}), this host has "
                    f"{device.gpu_name} (compute {device.compute_capability})")
        return None


def engine_key(model: str, settings: BuildSettings, device: DeviceInfo, tensorrt_version: str,
               source_sha256: str) -> str:
    """``<model>.<precision>.trt<version>.sm<cc>.<gpu>.b<max>.<hash>``: readable, and unique per input."""
    digest = hashlib.sha256(json.dumps([asdict(settings), source_sha256], sort_keys=True).encode()).hexdigest()
    cc = device.compute_capability.replace(".", "")
    return (f"{model}.{settings.precision}.trt{tensorrt_version}.sm{cc}.{device.slug}."
            f"b{settings.max_batch}.{digest[:10]}")


def cache_dir(config: ModelConfig) -> Path:
    return config.directory / CACHE_DIR


def record_path(plan: Path) -> Path:
    return plan.with_suffix(".json")


def write_record(plan: Path, record: EngineRecord) -> Path:
    from calibrators.files import atomic_write_bytes

    path = record_path(plan)
    atomic_write_bytes(path, (json.dumps(asdict(record), indent=2, sort_keys=True) + "\n").encode())
    return path


def read_record(plan: Path) -> EngineRecord:
    """The sidecar of ``plan``; ModelLoadError when missing or unreadable (the plan cannot be trusted then)."""
    path = record_path(plan)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return EngineRecord(**data)
    except FileNotFoundError:
        raise ModelLoadError(f"{plan} has no sidecar {path.name}: its TensorRT version and GPU are unknown; "
                             "rebuild it with `trtserve build`") from None
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{path}: not a valid engine record ({exc}); rebuild with `trtserve build`") from None


def default_settings(config: ModelConfig, precision: str) -> BuildSettings:
    e = config.engine
    return BuildSettings(precision=precision, max_batch=config.max_batch_size,
                         opt_batch=e.opt_batch or config.max_batch_size,
                         workspace_bytes=int(e.workspace_gb * GIB), dla_core=e.dla_core)


def records(config: ModelConfig) -> list[tuple[Path, EngineRecord]]:
    """Every engine of ``config`` in its cache folder (unreadable sidecars are skipped)."""
    found = []
    folder = cache_dir(config)
    for plan in sorted(folder.glob("*.plan")) if folder.is_dir() else []:
        try:
            record = read_record(plan)
        except ModelLoadError:
            continue
        if record.model == config.name:
            found.append((plan, record))
    return found


def previous_settings(config: ModelConfig, precision: str, tensorrt_version: str, device: DeviceInfo
                      ) -> BuildSettings | None:
    """The settings of the newest ``precision`` engine built here for ``device`` and ``tensorrt_version`` (from
    any sources: the engine a rebuild replaces) if they still cover ``max_batch_size``; None when there is none."""
    found = [(r.built_at, r) for _, r in records(config)
             if r.settings.get("precision") == precision and r.mismatch(tensorrt_version, device) is None]
    if not found:
        return None
    record = max(found, key=lambda item: item[0])[1]
    try:
        settings = BuildSettings(**record.settings)
    except (TypeError, ModelLoadError):
        return None
    return settings if settings.max_batch >= config.max_batch_size else None


def select_engine(config: ModelConfig, precision: str, tensorrt_version: str, device: DeviceInfo,
                  source_sha256: tuple[str, str | None]) -> Path:
    """The newest engine for ``precision`` that runs here, built from the current source and big enough.

    Raises ModelLoadError naming why each candidate does not fit and the command that builds one.
    """
    wanted = default_settings(config, precision)
    reasons = []
    fitting = []
    for plan, record in records(config):
        if record.settings.get("precision") != precision:
            continue
        why = record.mismatch(tensorrt_version, device)
        if why is None and (record.onnx_sha256, record.calibration_cache_sha256) != source_sha256:
            why = f"built from another {record.onnx_file} or calibration cache (changed since)"
        if why is None and int(record.settings.get("max_batch", 0)) < config.max_batch_size:
            why = f"max batch {record.settings.get('max_batch')} is below max_batch_size {config.max_batch_size}"
        if why is None:
            fitting.append((record.built_at, plan))
        else:
            reasons.append(f"{plan.name}: {why}")
    if fitting:
        return max(fitting)[1]
    found = "; ".join(reasons) if reasons else f"no {precision} engine in {cache_dir(config)}"
    raise ModelLoadError(f"model '{config.name}' has no TensorRT {precision} engine for this host "
                         f"({device.gpu_name}, compute {device.compute_capability}, TensorRT {tensorrt_version}): "
                         f"{found}. Build one with: {wanted.build_command(config.name, config.directory.parent)}")
