"""``trtserve build``: an ONNX model to a TensorRT engine for the GPU and TensorRT version of this host.

Two steps, kept apart so the decision can be tested without TensorRT:

* :func:`plan_build` — a pure function from (TensorRT version, precision, the model's artifacts, DLA core)
  to a :class:`BuildPath`: which ONNX, which network-creation flags, which builder flags, implicit
  (calibration cache) or explicit (Q/DQ) quantization. It refuses, with what to do, whatever the
  installed TensorRT cannot build.
* :func:`build_engine` — runs that path with the ``tensorrt`` module and writes
  ``engines/<model>/cache/<key>.plan`` plus its JSON sidecar (see :mod:`trtserve.tensorrt.keys`).

Version facts (NVIDIA's documentation per release):

* 8.5 / 8.6 (JetPack 5 / 6.0): ONNX needs ``EXPLICIT_BATCH``; INT8 is implicit here: the FP32 ONNX plus a
  calibration cache served by an ``IInt8EntropyCalibrator2`` (``BuilderFlag.INT8`` + ``FP16``).
* 10.x (JetPack 6.1+ / 7): ``EXPLICIT_BATCH`` is deprecated and ignored, so it is not passed. Q/DQ INT8 uses a
  ``STRONGLY_TYPED`` network (precision flags are not allowed there); the calibrator path still works
  (deprecated since 10.1) when only a cache exists. FP16 is ``BuilderFlag.FP16``.
* 11.x: every network is strongly typed; ``BuilderFlag.FP16/INT8``, ``int8_calibrator`` and calibration
  profiles are gone, ``STRONGLY_TYPED`` is a deprecated no-op. INT8 needs the Q/DQ model; FP16 needs an
  FP16 ONNX, made here with onnxconverter-common (float32 inputs/outputs, detection head kept float32).
  DLA only from 11.4.1.
"""

from __future__ import annotations

import datetime
import importlib
import logging
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from trtserve.config import PRECISIONS, ModelConfig
from trtserve.errors import ConfigError, ModelLoadError
from trtserve.tensorrt.cuda import CudaRuntime, DeviceInfo
from trtserve.tensorrt.keys import (
    GIB,
    BuildSettings,
    EngineRecord,
    cache_dir,
    engine_key,
    sha256_of,
    write_record,
)

logger = logging.getLogger(__name__)

TENSORRT_HINT = ("TensorRT's Python bindings come with JetPack on a Jetson (apt install python3-libnvinfer) or with "
                 "the NGC TensorRT container on x86 (nvcr.io/nvidia/tensorrt); they cannot be pip-installed here. "
                 "Run `trtserve doctor` to see what this host has; without TensorRT serve with the onnxruntime backend")


class TensorRTUnavailableError(ConfigError):
    """TensorRT (or the CUDA runtime bindings) is not installed on this host."""


class EngineBuildError(ModelLoadError):
    """TensorRT refused to parse or build the network; the message says which node or setting and what to do."""


def import_tensorrt() -> ModuleType:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTUnavailableError(f"TensorRT is not installed ({exc}). {TENSORRT_HINT}") from None


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        """``'10.3.0.30'`` / ``'8.6.2'`` / ``'11.4.1'`` (build suffixes like ``-double`` ignored)."""
        match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
        if match is None:
            raise ModelLoadError(f"cannot read the TensorRT version {text!r}")
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def nv_version(self) -> int:
        """NV_TENSORRT_VERSION, the number in calibration cache headers and artifact keys."""
        from calibrators.trt_cache import tensorrt_version_int

        return tensorrt_version_int(str(self))


@dataclass(frozen=True)
class Sources:
    """What the model folder offers a build (read from disk by :func:`sources_of`)."""

    fp32: Path
    fp32_is_qdq: bool  # the 'onnx' key already points at a quantized model
    qdq: Path | None  # the TensorRT-placement Q/DQ model (artifacts.int8_tensorrt)
    fp16: Path | None  # a converted FP16 model (artifacts.fp16)
    caches: dict[int, Path]  # NV_TENSORRT_VERSION -> calibration cache


def has_qdq(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def sources_of(config: ModelConfig) -> Sources:
    if not config.onnx_path.is_file():
        raise ModelLoadError(f"{config.source_file}: the ONNX model {config.onnx_path} does not exist")
    arts = config.artifacts
    caches = {int(k.rsplit("_", 1)[1]): p for k, p in arts.items()
              if k.startswith("calibration_cache_") and p.is_file()}
    qdq = arts.get("int8_tensorrt")
    fp16 = arts.get("fp16")
    return Sources(config.onnx_path, has_qdq(config.onnx_path), qdq if qdq and qdq.is_file() else None,
                   fp16 if fp16 and fp16.is_file() else None, caches)


@dataclass(frozen=True)
class BuildPath:
    """The decision for one build: nothing here touches TensorRT."""

    precision: str
    onnx: Path  # the model TensorRT parses (for convert_fp16 the source of the conversion)
    quantization: str  # none | implicit (calibration cache) | explicit (Q/DQ)
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names
    builder_flags: tuple[str, ...]  # BuilderFlag names
    calibration_cache: Path | None = None
    convert_fp16: bool = False  # 11.x: convert the FP32 ONNX to a strongly typed FP16 ONNX first
    dla_core: int | None = None
    strongly_typed: bool = False  # 10.x with STRONGLY_TYPED, and every 11.x network

    def describe(self) -> str:
        how = {"none": "", "implicit": " implicit (calibration cache)",
               "explicit": " explicit (Q/DQ)"}[self.quantization]
        typing = "strongly typed" if self.strongly_typed else "weakly typed"
        extra = ", converted to FP16 ONNX" if self.convert_fp16 else ""
        dla = f", DLA core {self.dla_core} with GPU fallback" if self.dla_core is not None else ""
        return f"{self.precision}{how}, {typing}{extra}{dla}"


DLA_MIN_TRT11 = TrtVersion(11, 4, 1)


def plan_build(version: TrtVersion, precision: str, sources: Sources, dla_core: int | None = None,
               num_dla_cores: int | None = None, model: str = "MODEL") -> BuildPath:
    """Pick the build path for ``precision`` on TensorRT ``version``; ConfigError says what to do otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}; expected one of {list(PRECISIONS)}")
    calibrate = f"trtserve calibrate {model} --images DIR --trt-version {version}"
    if sources.fp32_is_qdq and (version.major < 10 or precision != "int8"):
        if version.major < 10:
            raise ConfigError(
                f"{sources.fp32} is a Q/DQ (already quantized) model, which this project builds only on TensorRT 10+; "
                f"TensorRT {version} builds INT8 from the FP32 ONNX plus a calibration cache: point 'onnx:' at the "
                f"FP32 model and run `{calibrate}`")
        raise ConfigError(f"{sources.fp32} is a Q/DQ (already quantized) model; build it with --precision int8, "
                          "or point 'onnx:' at the FP32 model for fp32/fp16")
    qdq = sources.fp32 if sources.fp32_is_qdq else sources.qdq
    cache = sources.caches.get(version.nv_version)
    legacy = version.major < 10
    base = ("EXPLICIT_BATCH",) if legacy else ()  # deprecated and ignored from 10.0, gone in 11
    dla_flags: tuple[str, ...] = ()
    if dla_core is not None:
        if precision == "fp32":
            raise ConfigError("the DLA runs FP16 and INT8 only; use --precision fp16 or int8 with --dla-core")
        if version.major >= 11 and version < DLA_MIN_TRT11:
            raise ConfigError(f"TensorRT {version} has no DLA support (TensorRT 11 supports DLA from "
                              f"{DLA_MIN_TRT11}); drop --dla-core or use JetPack's TensorRT")
        if num_dla_cores is not None and not 0 <= dla_core < num_dla_cores:
            raise ConfigError(f"--dla-core {dla_core}, but this device has {num_dla_cores} DLA cores"
                              + (" (none: DLA exists on Jetson AGX/NX Orin and Xavier)" if num_dla_cores == 0 else ""))
        dla_flags = ("GPU_FALLBACK",)

    def path(onnx: Path, quant: str, net: tuple[str, ...], flags: tuple[str, ...], **kw: Any) -> BuildPath:
        return BuildPath(precision, onnx, quant, net, flags + dla_flags, dla_core=dla_core,
                         strongly_typed=version.major >= 11 or "STRONGLY_TYPED" in net, **kw)

    if precision == "fp32":
        return path(sources.fp32, "none", base, ())
    if precision == "fp16":
        if version.major >= 11:
            return path(sources.fp16 or sources.fp32, "none", (), (), convert_fp16=sources.fp16 is None)
        return path(sources.fp32, "none", base, ("FP16",))
    # int8
    if version.major >= 10 and qdq is not None:
        return path(qdq, "explicit", () if version.major >= 11 else ("STRONGLY_TYPED",), ())
    if version.major >= 11:
        raise ConfigError(f"TensorRT {version} has only explicit INT8 (Q/DQ): calibration caches and calibrators are "
                          f"gone. Write the Q/DQ model (artifacts.int8_tensorrt) with `trtserve calibrate {model} "
                          "--images DIR`")
    if cache is not None:
        return path(sources.fp32, "implicit", base, ("INT8", "FP16"), calibration_cache=cache)
    have = ", ".join(str(v) for v in sorted(sources.caches)) or "none"
    if legacy and qdq is not None:
        raise ConfigError(
            f"TensorRT {version} builds INT8 from the FP32 ONNX plus a calibration cache for version "
            f"{version.nv_version} (caches here: {have}); the Q/DQ model {qdq.name} is for TensorRT 10+. "
            f"Write the cache with `{calibrate}`")
    raise ConfigError(f"INT8 on TensorRT {version} needs calibration: a calibration cache for {version.nv_version} "
                      f"(caches here: {have}) or the Q/DQ model (TensorRT 10+). Run `{calibrate}`")


# ---------------------------------------------------------------------------------------------------------------
# FP16 ONNX for TensorRT 11 (strongly typed: the ONNX types are the engine's precision)


def convert_fp16(source: Path, target: Path, keep_float: list[str] | None = None) -> Path:
    """Write an FP16 copy of ``source`` with float32 inputs/outputs; ``keep_float`` nodes stay float32.

    Defaults to the detection head (its convs, Sigmoid and decode), which loses accuracy in FP16/INT8.
    Uses onnxconverter-common's ``convert_float_to_float16``.
    """
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise ConfigError(f"FP16 on TensorRT 11 needs an FP16 ONNX; install onnxconverter-common "
                          f"(pip install 'trtserve[gpu]') or add artifacts.fp16 to model.yaml ({exc})") from None
    from calibrators.files import atomic_write_bytes
    from calibrators.graph import detection_head_nodes

    model = onnx.load(str(source))
    block = keep_float if keep_float is not None else sorted(detection_head_nodes(model))
    with warnings.catch_warnings():  # it warns once per constant clamped to the FP16 range: expected, not news
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=block)
    _float32_outputs(converted, {o.name for o in model.graph.output
                                 if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT})
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, converted.SerializeToString())
    logger.info("wrote FP16 model %s (%d nodes kept float32)", target, len(block))
    return target


def _float32_outputs(model: Any, names: set[str]) -> None:
    """Cast outputs that were float32 back to float32 (onnxconverter-common 1.16 casts an output to FP16 when its
    producer is in the block list, despite keep_io_types)."""
    import onnx

    for output in model.graph.output:
        if output.name not in names or output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            continue
        inner = f"{output.name}__fp16"
        for node in model.graph.node:
            node.output[:] = [inner if o == output.name else o for o in node.output]
            node.input[:] = [inner if i == output.name else i for i in node.input]
        model.graph.node.append(onnx.helper.make_node("Cast", [inner], [output.name], to=onnx.TensorProto.FLOAT,
                                                      name=f"{output.name}__to_float32"))
        output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


# ---------------------------------------------------------------------------------------------------------------
# running the build


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
    """Each parser error as ``node 'name' (OpType): description``; 8.5 has no node_name(), so ask the ONNX."""
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
                 trt: Any = None, cuda: CudaRuntime | None = None) -> BuildResult:
    """Build and store an engine for this host; returns the plan path and its record.

    Raises TensorRTUnavailableError without TensorRT, ConfigError for a path this TensorRT cannot build,
    EngineBuildError when TensorRT refuses (parser errors name nodes and op types; a too-small workspace
    says so).
    """
    from calibrators.files import atomic_write_bytes
    from calibrators.tensorrt_calibrator import make_entropy_calibrator

    trt = trt if trt is not None else import_tensorrt()
    cuda = cuda if cuda is not None else CudaRuntime()
    version = TrtVersion.parse(trt.__version__)
    device: DeviceInfo = cuda.device()
    log = make_logger(trt)
    builder = trt.Builder(log)
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
    if serialized is None:
        warnings = [m for s, m in log.messages if s == "WARNING"]
        raise EngineBuildError(f"TensorRT {version} could not build {config.name} {settings.precision} "
                               f"({path.describe()}): {build_failure(log.errors(), warnings, settings)}")
    build_time_s = time.monotonic() - started
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(builder_config.get_timing_cache().serialize()))

    source_sha, cache_sha = _hashes(path)
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


def source_hashes(config: ModelConfig, precision: str, version: TrtVersion) -> tuple[str, str | None]:
    """sha256 of the ONNX and calibration cache an engine of ``precision`` is built from on ``version``."""
    return _hashes(plan_build(version, precision, sources_of(config), model=config.name))


def _hashes(path: BuildPath) -> tuple[str, str | None]:
    cache = path.calibration_cache
    return sha256_of(path.onnx), (sha256_of(cache) if cache else None)
