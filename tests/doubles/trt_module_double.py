"""Whole ``tensorrt`` module doubles, one per TensorRT version (see :mod:`tests.doubles.tensorrt_double`).

Each version gets only its API subset, checked against NVIDIA's real bindings of the release by
``tests/conformance`` (every public name, member kind, method arity and enum value the double offers must be
real; the classes trtserve receives are exported under their real names for that):

* 8.5 / 8.6: ``EXPLICIT_BATCH`` (required by the ONNX parser), ``BuilderFlag.FP16/INT8``, ``int8_calibrator``,
  ``set_calibration_profile``; engines by binding index (``num_bindings``, ``get_binding_shape``,
  ``set_binding_shape``, ``execute_async_v2``) *and* by name (``num_io_tensors``, ``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3``, both in real 8.6). Parser errors have no ``node_name()``
  (new in 10.0); no INT64 data type.
* 10.x: ``EXPLICIT_BATCH`` deprecated (accepted, ignored), ``STRONGLY_TYPED`` (1); calibrators still work;
  named tensors only.
* 11.x: always strongly typed; ``STRONGLY_TYPED`` is 0; no ``EXPLICIT_BATCH``, no ``BuilderFlag.FP16/INT8``, no
  ``int8_calibrator`` / calibration profile / calibrator classes, no ``platform_has_fast_fp16``.

Build and runtime errors follow TensorRT's behaviour: logged through the ILogger, then ``None`` from
``build_serialized_network`` / ``deserialize_cuda_engine``; ``False`` from a refused shape, profile or enqueue; a
TypeError from ``Builder`` / ``Runtime`` when CUDA cannot start (``factories_fail``); an exception raised in a
calibrator's ``get_batch`` taken as the end of the data.
"""

from __future__ import annotations

import ctypes
import enum
import json
import math
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from calibrators.trt_cache import tensorrt_version_int

from . import tensorrt_double as calib
from .cuda_double import CudaDouble

MAGIC = b"TRTDOUBLE-PLAN\n"


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4

MIN_WORKSPACE_BYTES = 8 << 20  # below this the double's "tactics" do not fit
# ONNX ops the double's parser accepts (the default domain; anything else is an unsupported node)
SUPPORTED_OPS = {
    "Add", "Cast", "Concat", "Constant", "ConstantOfShape", "Conv", "DequantizeLinear", "Div", "Expand", "Flatten",
    "Gather", "Gemm", "MatMul", "MaxPool", "Mul", "QuantizeLinear", "Range", "ReduceSum", "Relu", "Reshape", "Resize",
    "Shape", "Sigmoid", "Slice", "Softmax", "Split", "Sub", "Transpose", "Unsqueeze", "Squeeze", "Identity",
}
_NP = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8"}


NULL_FACTORY = "pybind11::init(): factory function returned nullptr"
# What TensorRT logs when it cannot start CUDA (no driver, or one too old), before its factory returns NULL.
CUDA_INIT_FAILURE = ("CUDA initialization failure with error: 35. Please check your CUDA installation: "
                     "http://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html")


def make_tensorrt(version: str = "10.3.0", cuda: CudaDouble | None = None, num_dla_cores: int = 0,
                  factories_fail: bool = False) -> ModuleType:
    """A ``tensorrt`` module double for ``version``; ``cuda`` is the device whose buffers engines use.

    With ``factories_fail`` the host's TensorRT cannot start CUDA: ``Builder(logger)`` and ``Runtime(logger)``
    log the CUDA failure and raise pybind11's TypeError, as the real bindings do when the C factory returns NULL.
    Enum values are the real ones of the version (checked by tests/conformance against NVIDIA's bindings).
    """
    major = int(version.split(".")[0])
    nv_version = tensorrt_version_int(version)
    v8, v11 = major < 10, major >= 11
    m = ModuleType("tensorrt")
    m.__version__ = f"{version}.double"  # type: ignore[attr-defined]
    m.__double_only__ = ()  # type: ignore[attr-defined]  # every public name below is real API
    calls: list[str] = []
    m._calls = calls  # type: ignore[attr-defined]  # what the double was asked to do, for the tests
    device = cuda if cuda is not None else CudaDouble()

    class ILogger:
        def __init__(self) -> None:
            self._base_initialised = True

        def log(self, severity: Severity, msg: str) -> None:  # pragma: no cover - overridden
            raise NotImplementedError

    ILogger.Severity = Severity  # type: ignore[attr-defined]
    for level in Severity:
        setattr(ILogger, level.name, level)

    class Logger(ILogger):
        def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
            super().__init__()
            self.min_severity = min_severity

        def log(self, severity: Severity, msg: str) -> None:
            pass

    def log(logger: Any, severity: Severity, msg: str) -> None:
        if not getattr(logger, "_base_initialised", False):
            raise TypeError("ILogger subclass did not call ILogger.__init__")
        logger.log(severity, msg)

    # 11.x renumbered the flags when EXPLICIT_BATCH went: STRONGLY_TYPED is 0 there, 1 in 10.x
    net_flags = {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1} if v8 else \
        {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if not v11 else {"STRONGLY_TYPED": 0}
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", net_flags)  # type: ignore[misc]  # noqa: N806
    # 10.0 dropped STRICT_TYPES (4) and moved REFIT / TF32 down by one: 8.x REFIT 5, TF32 7; 10/11 REFIT 4, TF32 6
    builder_flags = {"GPU_FALLBACK": 3} | ({"REFIT": 5, "TF32": 7} if v8 else {"REFIT": 4, "TF32": 6}) | \
        ({} if v11 else {"FP16": 0, "INT8": 1})
    BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)  # type: ignore[misc]  # noqa: N806
    MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1})  # type: ignore[misc]  # noqa: N806
    DeviceType = enum.IntEnum("DeviceType", {"GPU": 0, "DLA": 1})  # type: ignore[misc]  # noqa: N806
    # INT64 tensors came with 10.0 (value 8, after FP8 6 and BF16 7); 8.x has none
    DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5}  # type: ignore[misc]  # noqa: N806
                            | ({} if v8 else {"INT64": 8}))
    TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})  # type: ignore[misc]  # noqa: N806
    ErrorCode = enum.IntEnum("ErrorCode", {"SUCCESS": 0, "INTERNAL_ERROR": 1, "INVALID_GRAPH": 5,  # type: ignore[misc]  # noqa: N806
                                           "UNSUPPORTED_NODE": 8})

    class ITensor:
        __slots__ = ("dtype", "name", "shape")

        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
            self.name, self.shape, self.dtype = name, shape, dtype

    class INetworkDefinition:
        __slots__ = ("_flags", "_has_qdq", "_inputs", "_onnx_bytes", "_outputs", "_strongly_typed")

        def __init__(self, flags: int) -> None:
            self._flags = flags
            self._strongly_typed = v11 or bool(flags & (1 << net_flags.get("STRONGLY_TYPED", 99)))
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []
            self._onnx_bytes = b""
            self._has_qdq = False

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        def get_input(self, index: int) -> ITensor:
            return self._inputs[index]

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

    class ParserError:
        __slots__ = ("_code", "_desc", "_name", "_node", "_op")

        def __init__(self, code: Any, desc: str, node: int, name: str = "", op: str = "") -> None:
            self._code, self._desc, self._node, self._name, self._op = code, desc, node, name, op

        def code(self) -> Any:
            return self._code

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._node

    class ParserErrorNamed(ParserError):  # noqa: N818 - TensorRT's name
        __slots__ = ()

        def node_name(self) -> str:
            return self._name

        def node_operator(self) -> str:
            return self._op

    error_class = ParserError if v8 else ParserErrorNamed  # node_name() / node_operator() are new in 10.0

    def value_shape(value: onnx.ValueInfoProto) -> tuple[int, ...]:
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)

    class OnnxParser:
        __slots__ = ("_errors", "_logger", "_network")

        def __init__(self, network: INetworkDefinition, logger: Any) -> None:
            self._network, self._logger, self._errors = network, logger, []

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> ParserError:
            return self._errors[index]

        def parse_from_file(self, path: str) -> bool:
            calls.append(f"parse_from_file({path.rsplit('/', 1)[-1]})")
            net = self._network
            if v8 and not net._flags & (1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH):
                self._errors.append(error_class(ErrorCode.INVALID_GRAPH, "The ONNX parser only supports networks "
                                                "with an explicit batch dimension", -1))
                return False
            with open(path, "rb") as f:
                data = f.read()
            model = onnx.load_from_string(data)
            for i, node in enumerate(model.graph.node):
                if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
                    self._errors.append(error_class(ErrorCode.UNSUPPORTED_NODE, f"No importer registered for op: "
                                                    f"{node.op_type}", i, node.name, node.op_type))
            if self._errors:
                for e in self._errors:
                    log(self._logger, Severity.ERROR, e.desc())
                return False
            inits = {i.name for i in model.graph.initializer}
            io = [v for v in model.graph.input if v.name not in inits] + list(model.graph.output)
            unsupported = [v.name for v in io if _NP.get(v.type.tensor_type.elem_type) not in DataType.__members__]
            if unsupported:  # e.g. INT64 inputs on 8.x, which has no INT64 tensors
                self._errors.append(error_class(ErrorCode.UNSUPPORTED_NODE, f"unsupported data type of "
                                                f"{unsupported[0]}", -1))
                log(self._logger, Severity.ERROR, self._errors[-1].desc())
                return False
            net._inputs = [ITensor(v.name, value_shape(v), DataType[_NP[v.type.tensor_type.elem_type]])
                           for v in model.graph.input if v.name not in inits]
            net._outputs = [ITensor(v.name, value_shape(v), DataType[_NP[v.type.tensor_type.elem_type]])
                            for v in model.graph.output]
            net._onnx_bytes = data
            net._has_qdq = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
            return True

    class IOptimizationProfile:
        __slots__ = ("_shapes",)

        def __init__(self) -> None:
            self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
            calls.append(f"profile.set_shape({name}, {list(min)}, {list(opt)}, {list(max)})")
            self._shapes[name] = (tuple(min), tuple(opt), tuple(max))

        def get_shape(self, name: str) -> list[tuple[int, ...]]:
            return list(self._shapes[name])

    class ITimingCache:
        __slots__ = ("_data",)

        def __init__(self, data: bytes) -> None:
            self._data = data

        def serialize(self) -> bytes:
            return b"TIMING-CACHE:" + str(nv_version).encode()

    config_slots = ["_flags", "_pools", "_profiles", "_timing_cache", "default_device_type", "DLA_core"]
    if not v11:
        config_slots += ["int8_calibrator", "_calibration_profile"]

    class BuilderConfigBase:
        __slots__ = tuple(config_slots)

        def __init__(self) -> None:
            self._flags: set[Any] = set()
            self._pools: dict[Any, int] = {}
            self._profiles: list[IOptimizationProfile] = []
            self._timing_cache: ITimingCache | None = None
            self.default_device_type = DeviceType.GPU
            self.DLA_core = -1

        def set_flag(self, flag: Any) -> None:
            calls.append(f"set_flag({flag.name})")
            self._flags.add(flag)

        def get_flag(self, flag: Any) -> bool:
            return flag in self._flags

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            calls.append(f"set_memory_pool_limit({pool.name}, {pool_size})")
            self._pools[pool] = pool_size

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self._profiles.append(profile)
            return len(self._profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._profiles)

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            calls.append(f"create_timing_cache({len(serialized_timing_cache)} bytes)")
            return ITimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            self._timing_cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self._timing_cache

    if v11:
        IBuilderConfig = BuilderConfigBase  # noqa: N806
    else:
        class IBuilderConfig(BuilderConfigBase):  # type: ignore[no-redef]
            __slots__ = ()

            def __init__(self) -> None:
                super().__init__()
                self.int8_calibrator = None
                self._calibration_profile = None

            def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
                calls.append("set_calibration_profile")
                self._calibration_profile = profile
                return True

    def fail(logger: Any, msg: str) -> None:
        calls.append(f"build failed: {msg}")
        log(logger, Severity.ERROR, msg)

    def check_and_calibrate(logger: Any, net: INetworkDefinition, cfg: Any) -> bool:
        flags = cfg._flags
        precision_flags = {f.name for f in flags} & {"FP16", "INT8"}
        if net._strongly_typed and precision_flags:
            fail(logger, f"IBuilderConfig::setFlag: {sorted(precision_flags)} are not allowed on a strongly typed "
                         "network")
            return False
        dynamic = [t for t in net._inputs if -1 in t.shape]
        if dynamic and not cfg._profiles:
            fail(logger, f"Network has dynamic or shape inputs, but no optimization profile has been defined "
                         f"({dynamic[0].name})")
            return False
        for k, p in enumerate(cfg._profiles):
            for t in net._inputs:
                if t.name not in p._shapes:
                    fail(logger, f"optimization profile {k} has no shape for input {t.name}")
                    return False
                lo, opt, hi = p._shapes[t.name]
                ok = len(lo) == len(t.shape) and all(a <= b <= c for a, b, c in zip(lo, opt, hi)) and all(
                    d == -1 or (d == a == c) for d, a, c in zip(t.shape, lo, hi))
                if not ok:
                    fail(logger, f"optimization profile {k}: invalid min/opt/max {lo} {opt} {hi} for {t.name}")
                    return False
        if cfg.default_device_type == DeviceType.DLA and not 0 <= cfg.DLA_core < num_dla_cores:
            fail(logger, f"DLA core {cfg.DLA_core} requested, but the platform has {num_dla_cores} DLA cores")
            return False
        if cfg._pools.get(MemoryPoolType.WORKSPACE, 1 << 40) < MIN_WORKSPACE_BYTES:
            log(logger, Severity.WARNING, "Some tactics do not have sufficient workspace memory to run. Increasing "
                                          "workspace size will enable more tactics, please check verbose output")
            fail(logger, "Error Code 10: Internal Error (Could not find any implementation for node /conv1/Conv.)")
            return False
        if not net._strongly_typed and net._has_qdq and "INT8" not in precision_flags:
            fail(logger, "Network has Q/DQ layers but the INT8 builder flag is not set")
            return False
        if not net._strongly_typed and not net._has_qdq and "INT8" in precision_flags:
            calibrator = cfg.int8_calibrator
            if calibrator is None:
                fail(logger, "Calibrator is not being used. Users must provide dynamic range for all tensors that "
                             "are not Int32 or Bool")
                return False
            if dynamic and cfg._calibration_profile is None:
                fail(logger, "Calibration profile must be provided when calibrating a network with dynamic shapes")
                return False
            cached = calibrator.read_calibration_cache()
            calls.append("read_calibration_cache")
            header = bytes(cached or b"").split(b"\n", 1)[0].decode(errors="replace")
            algorithm = {"ENTROPY_CALIBRATION_2": "EntropyCalibration2", "MINMAX_CALIBRATION": "MinMaxCalibration"}.get(
                calibrator.get_algorithm().name, "?")
            # TensorRT ignores a cache of another version, or of another algorithm than the calibrator's
            if header.split("-")[1:3] != [str(nv_version), algorithm]:
                if calib.get_batch_as_tensorrt_does(calibrator, [t.name for t in net._inputs]) is None:
                    fail(logger, f"Calibration failure occurred with no scaling factors detected (cache header "
                                 f"{header!r}, this is TensorRT {nv_version})")
                    return False
        return True

    class Builder:
        __slots__ = ("_logger", "num_DLA_cores") + (() if v11 else ("platform_has_fast_fp16",))

        def __init__(self, logger: Any) -> None:
            if factories_fail:
                log(logger, Severity.ERROR, CUDA_INIT_FAILURE)
                raise TypeError(NULL_FACTORY)
            self._logger = logger
            self.num_DLA_cores = num_dla_cores
            if not v11:
                self.platform_has_fast_fp16 = True

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            calls.append(f"create_network({flags})")
            return INetworkDefinition(flags)

        def create_builder_config(self) -> Any:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: Any) -> bytes | None:
            calls.append("build_serialized_network")
            if not check_and_calibrate(self._logger, network, config):
                return None
            header = {
                "nv_version": nv_version, "cc": f"{device.props.major}.{device.props.minor}",
                "inputs": [[t.name, list(t.shape), t.dtype.name] for t in network._inputs],
                "outputs": [[t.name, list(t.shape), t.dtype.name] for t in network._outputs],
                "profiles": [{n: [list(s) for s in v] for n, v in p._shapes.items()} for p in config._profiles] or [{}],
                "flags": sorted(f.name for f in config._flags), "strongly_typed": network._strongly_typed,
            }
            return MAGIC + json.dumps(header).encode() + b"\n" + network._onnx_bytes

    m.ILogger, m.Logger, m.Builder, m.OnnxParser = ILogger, Logger, Builder, OnnxParser  # type: ignore[attr-defined]
    m.NetworkDefinitionCreationFlag, m.BuilderFlag = NetworkDefinitionCreationFlag, BuilderFlag  # type: ignore[attr-defined]
    m.MemoryPoolType, m.DeviceType, m.DataType = MemoryPoolType, DeviceType, DataType  # type: ignore[attr-defined]
    m.ErrorCode = ErrorCode  # type: ignore[attr-defined]
    m.TensorIOMode = TensorIOMode  # type: ignore[attr-defined]  # 8.5+
    if not v11:
        m.IInt8Calibrator, m.IInt8EntropyCalibrator2 = calib.IInt8Calibrator, calib.IInt8EntropyCalibrator2  # type: ignore[attr-defined]
        m.IInt8MinMaxCalibrator = calib.IInt8MinMaxCalibrator  # type: ignore[attr-defined]
        m.CalibrationAlgoType = calib.CalibrationAlgoType  # type: ignore[attr-defined]
    runtime, engine, context = _runtime_class(m, v8, nv_version, device, log, Severity, TensorIOMode, DataType,
                                              factories_fail)
    # the classes trtserve gets objects of, under their real names (tests/conformance checks each against NVIDIA's)
    m.Runtime, m.ICudaEngine, m.IExecutionContext = runtime, engine, context  # type: ignore[attr-defined]
    m.INetworkDefinition, m.ITensor, m.ParserError = INetworkDefinition, ITensor, error_class  # type: ignore[attr-defined]
    m.IOptimizationProfile, m.ITimingCache, m.IBuilderConfig = IOptimizationProfile, ITimingCache, IBuilderConfig  # type: ignore[attr-defined]
    return m


def _runtime_class(m: ModuleType, v8: bool, nv_version: int, device: CudaDouble, log: Any, severity: Any,
                   io_mode: Any, data_type: Any, factories_fail: bool) -> tuple[type, type, type]:
    """(Runtime, ICudaEngine, IExecutionContext) of the version: 8.5 / 8.6 have the named-tensor API of 10.x
    (``num_io_tensors``, ``set_input_shape``, ``execute_async_v3``) *and* the binding-index one; 10+ only the former."""
    calls: list[str] = m._calls  # type: ignore[attr-defined]

    class ICudaEngine:
        def __init__(self, header: dict[str, Any], onnx_bytes: bytes, logger: Any) -> None:
            import onnxruntime as ort

            self._header, self._logger = header, logger
            self._inputs = [(n, tuple(s), t) for n, s, t in header["inputs"]]
            self._outputs = [(n, tuple(s), t) for n, s, t in header["outputs"]]
            self._io = self._inputs + self._outputs
            self._profiles = header["profiles"]
            so = ort.SessionOptions()
            so.log_severity_level = 3
            self._session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
            self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}
            self._device = device.record("deserialize_cuda_engine")  # an engine lives on the device current then

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._profiles)

        def create_execution_context(self, strategy: Any = None) -> Any:
            return context_class(self)

        def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            names = [o[0] for o in self._outputs]
            return dict(zip(names, self._session.run(names, feeds)))

        def _output_shapes(self, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
            key = repr(sorted(input_shapes.items()))
            if key not in self._shapes:  # shape inference, as TensorRT does once the input shapes are set
                zeros = {n: np.zeros(input_shapes[n], _np(t)) for n, _, t in self._inputs}
                self._shapes[key] = {k: v.shape for k, v in self._run(zeros).items()}
            return self._shapes[key]

        @property
        def num_io_tensors(self) -> int:
            return len(self._io)

        def get_tensor_name(self, index: int) -> str:
            return self._io[index][0]

        def _find(self, name: str) -> tuple[str, tuple[int, ...], str]:
            return next(t for t in self._io if t[0] == name)

        def get_tensor_mode(self, name: str) -> Any:
            return io_mode.INPUT if any(t[0] == name for t in self._inputs) else io_mode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self._find(name)[1]

        def get_tensor_dtype(self, name: str) -> Any:
            return data_type[self._find(name)[2]]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            return [tuple(s) for s in self._profiles[profile_index][name]]

    class ICudaEngineV8(ICudaEngine):
        @property
        def num_bindings(self) -> int:
            return len(self._io) * len(self._profiles)

        def _binding(self, index: int) -> tuple[str, tuple[int, ...], str, int]:
            k, j = divmod(index, len(self._io))
            name, shape, dtype = self._io[j]
            return (name if k == 0 else f"{name} [profile {k}]"), shape, dtype, k

        def get_binding_name(self, index: int) -> str:
            return self._binding(index)[0]

        def binding_is_input(self, index: int) -> bool:
            return index % len(self._io) < len(self._inputs)

        def get_binding_shape(self, index: int) -> tuple[int, ...]:
            return self._binding(index)[1]

        def get_binding_dtype(self, index: int) -> Any:
            return data_type[self._binding(index)[2]]

        def get_profile_shape(self, profile_index: int, binding: int) -> list[tuple[int, ...]]:
            name, _, _, k = self._binding(binding)
            if k != profile_index:
                raise RuntimeError(f"binding {binding} does not belong to profile {profile_index}")
            return [tuple(s) for s in self._profiles[profile_index][name.split(" [")[0]]]

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self._engine = engine
            self._profile = 0
            self._input_shapes: dict[str, tuple[int, ...]] = {}
            self._addresses: dict[str, int] = {}

        @property
        def engine(self) -> ICudaEngine:
            return self._engine

        @property
        def active_optimization_profile(self) -> int:
            return self._profile

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            calls.append(f"set_optimization_profile_async({profile_index})")
            if int(stream_handle) not in device.streams or not 0 <= profile_index < len(self._engine._profiles):
                return False
            self._profile = profile_index
            self._input_shapes = {}
            return True

        def _set_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            lo, _, hi = self._engine._profiles[self._profile][name]
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self._input_shapes[name] = tuple(shape)
            return True

        def _output_shape(self, name: str) -> tuple[int, ...]:
            if len(self._input_shapes) < len(self._engine._inputs):
                return next(t[1] for t in self._engine._io if t[0] == name)
            return self._engine._output_shapes(self._input_shapes)[name]

        def _on_engine_device(self, stream_handle: int, addresses: dict[str, int]) -> bool:
            """TensorRT's kernels run on the current device: it must be the engine's, and so must the stream and
            every buffer (else CUDA fails the launch, which TensorRT logs, and the enqueue returns False)."""
            e = self._engine
            where = device.record("enqueue")
            if where == e._device and device.on_device(where, stream_handle, *addresses.values()):
                return True
            log(e._logger, severity.ERROR, f"[executionContext.cpp::enqueue] Error Code 1: Cuda Runtime (invalid "
                                           f"resource handle): the engine is on device {e._device}, the current "
                                           f"device is {where}")
            return False

        def _execute(self, addresses: dict[str, int]) -> bool:
            e = self._engine
            if len(self._input_shapes) < len(e._inputs) or any(n not in addresses for n, _, _ in e._io):
                return False
            feeds = {}
            for name, _, dtype in e._inputs:
                shape = self._input_shapes[name]
                size = math.prod(shape) * np.dtype(_np(dtype)).itemsize
                device.check_device(addresses[name], size)
                raw = (ctypes.c_uint8 * size).from_address(addresses[name])
                feeds[name] = np.frombuffer(raw, _np(dtype)).reshape(shape).copy()
            for name, value in e._run(feeds).items():
                data = np.ascontiguousarray(value)
                device.check_device(addresses[name], data.nbytes)
                ctypes.memmove(addresses[name], data.ctypes.data, data.nbytes)
            return True

        def set_input_shape(self, name: str, shape: Any) -> bool:
            calls.append(f"set_input_shape({name}, {list(shape)})")
            return self._set_shape(name, tuple(shape))

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self._input_shapes.get(name) or self._output_shape(name)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            calls.append(f"set_tensor_address({name})")
            if not any(t[0] == name for t in self._engine._io):
                return False
            self._addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            calls.append("execute_async_v3")
            if int(stream_handle) not in device.streams or not self._on_engine_device(stream_handle, self._addresses):
                return False
            return self._execute(self._addresses)

        @property
        def all_binding_shapes_specified(self) -> bool:
            return len(self._input_shapes) == len(self._engine._inputs)

    class IExecutionContextV8(IExecutionContext):
        def _binding_name(self, index: int) -> str:
            assert isinstance(self._engine, ICudaEngineV8)
            name, _, _, k = self._engine._binding(index)
            if k != self._profile:
                raise RuntimeError(f"binding {index} belongs to profile {k}, the context uses {self._profile}")
            return name.split(" [")[0]

        def set_binding_shape(self, binding: int, shape: Any) -> bool:
            calls.append(f"set_binding_shape({binding}, {list(shape)})")
            return self._set_shape(self._binding_name(binding), tuple(shape))

        def get_binding_shape(self, binding: int) -> tuple[int, ...]:
            name = self._binding_name(binding)
            return self._input_shapes.get(name) or self._output_shape(name)

        def execute_async_v2(self, bindings: list[int], stream_handle: int, input_consumed: Any = None) -> bool:
            calls.append("execute_async_v2")
            e = self._engine
            if len(bindings) != len(e._io) * len(e._profiles) or int(stream_handle) not in device.streams:
                return False
            base = self._profile * len(e._io)
            addresses = {n: int(bindings[base + j]) for j, (n, _, _) in enumerate(e._io)}
            if not self._on_engine_device(stream_handle, addresses):
                return False
            return self._execute(addresses)

    engine_class, context_class = (ICudaEngineV8, IExecutionContextV8) if v8 else (ICudaEngine, IExecutionContext)

    class Runtime:
        def __init__(self, logger: Any) -> None:
            if factories_fail:
                log(logger, severity.ERROR, CUDA_INIT_FAILURE)
                raise TypeError(NULL_FACTORY)
            self._logger = logger

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> Any:
            calls.append("deserialize_cuda_engine")
            data = bytes(serialized_engine)
            if not data.startswith(MAGIC):
                log(self._logger, severity.ERROR, "1: [stdArchiveReader.cpp::StdArchiveReader::32] Error Code 1: "
                                                  "Serialization (Serialization assertion magicTagRead == kMAGIC_TAG "
                                                  "failed.Magic tag does not match)")
                return None
            try:
                head, onnx_bytes = data[len(MAGIC):].split(b"\n", 1)
                header = json.loads(head)
            except ValueError:
                log(self._logger, severity.ERROR, "Serialization: truncated or corrupt engine")
                return None
            if header["nv_version"] != nv_version:
                log(self._logger, severity.ERROR, f"The engine plan file is not compatible with this version of "
                                                  f"TensorRT, expecting library version {nv_version} got "
                                                  f"{header['nv_version']}, please rebuild.")
                return None
            cc = f"{device.props.major}.{device.props.minor}"
            if header["cc"] != cc:
                log(self._logger, severity.ERROR, f"The engine plan file is generated on an incompatible device, "
                                                  f"expecting compute {cc} got compute {header['cc']}, please rebuild.")
                return None
            return engine_class(header, onnx_bytes, self._logger)

    return Runtime, engine_class, context_class


def _np(name: str) -> Any:
    return {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
            "UINT8": np.uint8, "INT64": np.int64}[name]
