"""``trtserve build``: an ONNX model to a TensorRT engine for the GPU and TensorRT version of this host.

:func:`build_engine` takes the path :func:`trtserve.tensorrt.plan.plan_build` decides (converting to FP16 ONNX
first on TensorRT 11, :mod:`trtserve.tensorrt.fp16`), runs it with the ``tensorrt`` module and writes
``engines/<model>/cache/<key>.plan`` plus its JSON sidecar (see :mod:`trtserve.tensorrt.keys`).
"""

from __future__ import annotations

import datetime
import importlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from trtserve.config import ModelConfig
from trtserve.errors import EngineBuildError, TensorRTUnavailableError
from trtserve.tensorrt.cuda import CudaRuntime, DeviceInfo
from trtserve.tensorrt.fp16 import convert_fp16
from trtserve.tensorrt.keys import GIB, BuildSettings, EngineRecord, cache_dir, engine_key, write_record
from trtserve.tensorrt.plan import BuildPath, TrtVersion, build_hashes, plan_build, sources_of

logger = logging.getLogger(__name__)

TENSORRT_HINT = ("Run `trtserve doctor` to see what this host has; without TensorRT serve with the onnxruntime "
                 "backend")


def import_tensorrt() -> ModuleType:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        from trtserve.tensorrt.install_hint import install_hint_here

        raise TensorRTUnavailableError(f"TensorRT is not installed ({exc}): {install_hint_here()}. {TENSORRT_HINT}"
                                       ) from None


def create(trt: Any, factory: str, log: Any) -> Any:
    """``trt.Builder(log)`` / ``trt.Runtime(log)``; TensorRTUnavailableError when TensorRT cannot start.

    When TensorRT's library cannot start CUDA, its C factory returns NULL and the bindings raise
    ``TypeError: pybind11::init(): factory function returned nullptr``; the reason, if any, went to the logger.
    """
    try:
        return getattr(trt, factory)(log)
    except TypeError as exc:
        if "returned nullptr" not in str(exc):
            raise
        said = "; ".join(m for _, m in getattr(log, "messages", [])) or "TensorRT logged no reason"
        raise TensorRTUnavailableError(
            f"TensorRT {getattr(trt, '__version__', '?')} is installed but could not create its {factory} ({said}). "
            "TensorRT cannot start CUDA: check that this process sees an NVIDIA GPU (`nvidia-smi`; "
            "CUDA_VISIBLE_DEVICES; on Kubernetes an nvidia.com/gpu limit and the NVIDIA container runtime), that the "
            "NVIDIA driver is new enough for this TensorRT's CUDA, and that TensorRT's libraries (libnvinfer) are the "
            "release of its Python bindings. `trtserve doctor` shows what this host has") from None


def make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that keeps warnings and errors (to explain a failed build) and forwards to logging."""

    class CollectingLogger(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity))
            if name in ("INTERNAL_ERROR", "ERROR", "WARNING"):
                self.messages.append((name, msg))
            level = logging.ERROR if "ERROR" in name else logging.WARNING if name == "WARNING" else logging.DEBUG
            logger.log(level, "TensorRT: %s", msg)

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if "ERROR" in s]

    return CollectingLogger()


def _flags(enum: Any, names: tuple[str, ...]) -> int:
    value = 0
    for name in names:
        value |= 1 << int(getattr(enum, name))
    return value


def parser_errors(parser: Any, onnx_path: Path) -> str:
    """Each parser error as ``node 'name' (OpType): description``; 8.x has no node_name() (new in 10.0), so the
    ONNX is asked there."""
    import onnx

    nodes = list(onnx.load(str(onnx_path), load_external_data=False).graph.node)
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        index = int(err.node())
        name = err.node_name() if hasattr(err, "node_name") else (nodes[index].name if 0 <= index < len(nodes) else "")
        op = err.node_operator() if hasattr(err, "node_operator") else \
            (nodes[index].op_type if 0 <= index < len(nodes) else "")
        where = f"node '{name}' ({op})" if name or op else "the model"
        lines.append(f"{where}: {err.desc()}")
    return "; ".join(lines)


def build_failure(errors: list[str], warnings: list[str], settings: BuildSettings) -> str:
    text = " ".join(errors + warnings).lower()
    if "workspace" in text or "out of memory" in text:
        return (f"the workspace of {settings.workspace_bytes / GIB:g} GiB is too small for this network "
                f"({'; '.join(errors) or 'no tactic fits'}); raise --workspace-gb (e.g. to "
                f"{max(2.0, 2 * settings.workspace_bytes / GIB):g})")
    return "; ".join(errors) or "no error reported (run with --verbose for TensorRT's log)"


@dataclass(frozen=True)
class BuildResult:
    plan: Path
    record: EngineRecord
    path: BuildPath


def _profiles(builder: Any, network: Any, settings: BuildSettings) -> tuple[list[Any], dict[str, Any]]:
    shapes: dict[str, list[list[int]]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = [int(d) for d in tensor.shape]
        if any(d < 0 for d in dims[1:]):
            raise EngineBuildError(f"input '{tensor.name}' has dynamic non-batch dimensions {dims}; export the ONNX "
                                   "with a fixed image size (only the batch may be dynamic)")
        if dims[0] >= 0:
            if dims[0] < settings.max_batch:
                raise EngineBuildError(f"input '{tensor.name}' has a fixed batch of {dims[0]}, below --max-batch "
                                       f"{settings.max_batch}; re-export with a dynamic batch or lower --max-batch")
            lo = opt = hi = dims[0]
        else:
            lo, opt, hi = 1, settings.opt_batch, settings.max_batch
        shapes[tensor.name] = [[lo, *dims[1:]], [opt, *dims[1:]], [hi, *dims[1:]]]
    profiles = []
    for _ in range(settings.execution_contexts):
        profile = builder.create_optimization_profile()
        for name, (lo_shape, opt_shape, hi_shape) in shapes.items():
            profile.set_shape(name, tuple(lo_shape), tuple(opt_shape), tuple(hi_shape))
        profiles.append(profile)
    return profiles, shapes


def build_engine(config: ModelConfig, settings: BuildSettings, timing_cache: Path | None = None,
                 trt: Any = None, cuda: CudaRuntime | None = None, device_id: int | None = None) -> BuildResult:
    """Build and store an engine for this host's GPU ``device_id`` (None: the current device, GPU 0 unless set);
    returns the plan path and its record. The engine is keyed by that GPU's name and compute capability.

    Raises TensorRTUnavailableError without TensorRT, ConfigError for a path this TensorRT cannot build,
    EngineBuildError when TensorRT refuses (parser errors name nodes and op types; a too-small workspace
    says so).
    """
    from calibrators.files import atomic_write_bytes
    from calibrators.tensorrt_calibrator import make_entropy_calibrator

    trt = trt if trt is not None else import_tensorrt()
    cuda = cuda if cuda is not None else CudaRuntime()
    version = TrtVersion.parse(trt.__version__)
    if device_id is not None:
        cuda.check_device_index(device_id, what="--device")
        cuda.set_device(device_id)  # before the builder allocates anything: it builds (and times) on this GPU
    device: DeviceInfo = cuda.device(device_id)
    log = make_logger(trt)
    builder = create(trt, "Builder", log)
    num_dla = int(getattr(builder, "num_DLA_cores", 0))
    sources = sources_of(config)
    path = plan_build(version, settings.precision, sources, settings.dla_core, num_dla, config.name)
    onnx_path = path.onnx
    if path.convert_fp16:
        onnx_path = convert_fp16(path.onnx, cache_dir(config) / f"{path.onnx.stem}.fp16.onnx")
    logger.info("building %s %s on %s with TensorRT %s: %s", config.name, settings.precision, device.gpu_name,
                version, path.describe())
    started = time.monotonic()

    network = builder.create_network(_flags(trt.NetworkDefinitionCreationFlag, path.network_flags))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(f"TensorRT {version} cannot parse {onnx_path.name}: {parser_errors(parser, onnx_path)}."
                               " Replace or remove these nodes (or export with another opset), then build again")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    for flag in path.builder_flags:
        builder_config.set_flag(getattr(trt.BuilderFlag, flag))
    profiles, shapes = _profiles(builder, network, settings)
    for profile in profiles:
        builder_config.add_optimization_profile(profile)
    calibrator = None
    if path.quantization == "implicit":
        assert path.calibration_cache is not None
        calibrator = make_entropy_calibrator(path.calibration_cache, settings.opt_batch, feeds=None, trt=trt)
        builder_config.int8_calibrator = calibrator
        builder_config.set_calibration_profile(profiles[0])
    if path.dla_core is not None:
        builder_config.default_device_type = trt.DeviceType.DLA
        builder_config.DLA_core = path.dla_core
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        builder_config.set_timing_cache(builder_config.create_timing_cache(data), False)

    serialized = builder.build_serialized_network(network, builder_config)
    if calibrator is not None:
        calibrator.free()
        try:  # TensorRT swallows exceptions raised in the calibrator's callbacks: they surface here
            calibrator.raise_if_failed()
        except Exception as exc:
            raise EngineBuildError(f"TensorRT {version} INT8 calibration of {config.name}: {exc}") from exc
    if serialized is None:
        warnings = [m for s, m in log.messages if s == "WARNING"]
        raise EngineBuildError(f"TensorRT {version} could not build {config.name} {settings.precision} "
                               f"({path.describe()}): {build_failure(log.errors(), warnings, settings)}")
    build_time_s = time.monotonic() - started
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(builder_config.get_timing_cache().serialize()))

    source_sha, cache_sha = build_hashes(path)
    cache = path.calibration_cache
    key = engine_key(config.name, settings, device, str(version), f"{source_sha}:{cache_sha}")
    plan = cache_dir(config) / f"{key}.plan"
    plan.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(plan, bytes(serialized))
    record = EngineRecord(
        model=config.name, key=key, tensorrt_version=str(version), gpu_name=device.gpu_name,
        compute_capability=device.compute_capability, settings=asdict(settings), onnx_file=path.onnx.name,
        onnx_sha256=source_sha, build_path=path.describe(), profile=shapes,
        calibration_cache_file=cache.name if cache else None,
        calibration_cache_sha256=cache_sha, build_time_s=round(build_time_s, 3),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    write_record(plan, record)
    logger.info("built %s in %.1f s", plan, build_time_s)
    return BuildResult(plan, record, path)
