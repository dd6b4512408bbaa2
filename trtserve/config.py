"""Model configuration (``engines/<model>/model.yaml``), validated once at load.

Every error names the file, the key (dotted path), the bad value and what was expected, and no
setting is ever silently rewritten: contradictions are rejected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from trtserve.backends.registry import BACKENDS
from trtserve.errors import ConfigError
from trtserve.heads.registry import AUTO, HEADS, NEEDS_CLASSES, head_types

PRECISIONS = ("fp32", "fp16", "int8")
# artifact keys besides precisions: the TensorRT-placement Q/DQ model and TensorRT calibration caches
ARTIFACT_KEY = re.compile(r"^(fp16|int8|int8_tensorrt|calibration_cache_\d+)$")


@dataclass(frozen=True)
class InputSpec:
    name: str | None  # None: the model's only input
    layout: str  # nchw | nhwc
    height_px: int
    width_px: int
    color_order: str  # rgb | bgr
    scale: float  # multiplied after casting to float (1/255 maps to [0, 1])
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_value: int
    interpolation: str = "linear"  # letterbox resize: linear | area
    exif_orientation: bool = True  # turn JPEGs upright by their EXIF orientation (false: use the stored pixels)


@dataclass(frozen=True)
class HeadSpec:
    type: str
    score_threshold: float
    iou_threshold: float
    max_detections: int
    class_agnostic_nms: bool


@dataclass(frozen=True)
class QuantizationSpec:
    """What INT8 calibration keeps in float (``quantization:`` in model.yaml)."""

    keep_head_float: bool = True
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class DriftSpec:
    """FP32 shadow drift monitoring (``drift:`` in model.yaml and in the server config)."""

    enabled: bool = False
    sample_rate: float = 0.05  # fraction of batches copied to the shadow
    max_pending: int = 2  # sampled batches waiting for or in the shadow; past that a sample is skipped
    shadow_precision: str = "fp32"
    shadow_backend: str = "onnxruntime"
    shadow_providers: tuple[str, ...] = ("CPUExecutionProvider",)  # empty: the best the host offers
    shadow_threads: int = 1  # intra-op threads of the shadow session
    iou_threshold: float = 0.5
    agreement_threshold: float = 0.9  # window agreement F1 below this logs a warning
    window_frames: int = 200
    min_window_frames: int = 20  # no verdict on fewer sampled frames
    unhealthy_below_threshold: bool = False  # also flip the model's grpc.health.v1 status to NOT_SERVING
    coverage_tensors: tuple[str, ...] = ()  # calibrated tensors reported one by one (input and all always)


DRIFT_KEYS = {f for f in DriftSpec.__dataclass_fields__}


def read_drift(reader: YamlReader, base: DriftSpec) -> DriftSpec:
    """A ``drift:`` block over ``base``: keys present replace base values, each one validated."""
    d = reader

    def names(key: str, current: tuple[str, ...]) -> tuple[str, ...]:
        value = d.get(key, list, list(current), "a list of names")
        if not all(isinstance(v, str) and v for v in value):
            d.fail(d.key(key), value, "a list of non-empty strings")
        return tuple(value)

    return DriftSpec(
        enabled=d.get("enabled", bool, base.enabled, "true or false"),
        sample_rate=d.number("sample_rate", base.sample_rate, lo=0.0, hi=1.0),
        max_pending=d.number("max_pending", base.max_pending, lo=1, hi=1024, integer=True),
        shadow_precision=d.choice("shadow_precision", PRECISIONS, base.shadow_precision),
        shadow_backend=d.choice("shadow_backend", BACKENDS.names(), base.shadow_backend),
        shadow_providers=names("shadow_providers", base.shadow_providers),
        shadow_threads=d.number("shadow_threads", base.shadow_threads, lo=0, hi=256, integer=True),
        iou_threshold=d.number("iou_threshold", base.iou_threshold, lo=0.05, hi=1.0),
        agreement_threshold=d.number("agreement_threshold", base.agreement_threshold, lo=0.0, hi=1.0),
        window_frames=d.number("window_frames", base.window_frames, lo=1, hi=1_000_000, integer=True),
        min_window_frames=d.number("min_window_frames", base.min_window_frames, lo=1, hi=1_000_000, integer=True),
        unhealthy_below_threshold=d.get("unhealthy_below_threshold", bool, base.unhealthy_below_threshold,
                                        "true or false"),
        coverage_tensors=names("coverage_tensors", base.coverage_tensors),
    )


def apply_drift_block(base: DriftSpec, block: Mapping[str, Any], source: Path) -> DriftSpec:
    """``base`` with a ``drift:`` block on top; a ``sample_rate`` without ``enabled`` turns drift on (> 0) or off."""
    spec = read_drift(YamlReader(source, dict(block), "drift", DRIFT_KEYS), base)
    if "sample_rate" in block and "enabled" not in block:
        spec = replace(spec, enabled=spec.sample_rate > 0)
    return spec


@dataclass(frozen=True)
class ReservoirSpec:
    """The live-frame calibration reservoir (``calibration_reservoir:`` in the server config and model.yaml).

    Off by default: it stores real camera frames (letterboxed) on disk. ``dir`` None: ``<model folder>/reservoir``;
    set: ``<dir>/<model name>``. ``disagreement_weight`` w: a frame with agreement F1 a is kept with weight
    ``1 + w * (1 - a)`` (weighted reservoir sampling; 0 makes it uniform).
    """

    enabled: bool = False
    max_frames: int = 1000
    max_bytes: int = 256 * 1024 * 1024
    dir: Path | None = None
    disagreement_weight: float = 3.0


RESERVOIR_KEYS = {f for f in ReservoirSpec.__dataclass_fields__}


def apply_reservoir_block(base: ReservoirSpec, block: Mapping[str, Any], source: Path) -> ReservoirSpec:
    """A ``calibration_reservoir:`` block over ``base``; a relative ``dir`` is relative to ``source``'s folder."""
    r = YamlReader(source, dict(block), "calibration_reservoir", RESERVOIR_KEYS)
    directory = base.dir
    if "dir" in r.data:
        raw = r.get("dir", str, expected="a folder path")
        if not raw:
            r.fail("calibration_reservoir.dir", raw, "a non-empty folder path")
        directory = Path(raw)
        if not directory.is_absolute() and source.is_file():
            directory = source.parent / directory
    return ReservoirSpec(
        enabled=r.get("enabled", bool, base.enabled, "true or false"),
        max_frames=r.number("max_frames", base.max_frames, lo=1, hi=10_000_000, integer=True),
        max_bytes=r.number("max_bytes", base.max_bytes, lo=1024, integer=True),
        dir=directory,
        disagreement_weight=r.number("disagreement_weight", base.disagreement_weight, lo=0.0, hi=1000.0),
    )


@dataclass(frozen=True)
class EngineSpec:
    """How ``trtserve build`` and the tensorrt backend make engines (``engine:`` in model.yaml)."""

    auto_build: bool = False  # build a missing engine at load instead of failing with the build command
    opt_batch: int | None = None  # None: max_batch_size
    workspace_gb: float = 2.0
    dla_core: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    name: str
    directory: Path
    onnx_path: Path  # the FP32 source model
    input: InputSpec
    head: HeadSpec
    class_names: tuple[str, ...]
    max_batch_size: int
    max_frame_pixels: int
    artifacts: Mapping[str, Path] = field(default_factory=dict)  # precision or artifact key -> file
    source_file: Path | None = None
    quantization: QuantizationSpec = field(default_factory=QuantizationSpec)
    drift: Mapping[str, Any] = field(default_factory=dict)  # the model's own drift: keys (over server defaults)

    def drift_settings(self, server_defaults: DriftSpec) -> DriftSpec:
        """The server's drift defaults with this model's ``drift:`` keys on top."""
        return apply_drift_block(server_defaults, self.drift, self.source_file or Path("model.yaml"))
    backend: str = "onnxruntime"
    engine: EngineSpec = field(default_factory=EngineSpec)
    calibration_reservoir: Mapping[str, Any] = field(default_factory=dict)  # the model's own keys (over the server's)
    # the Q/DQ ONNX 'onnx:' names when it is already quantized (QAT / pre-quantized): served as int8 as it is, and
    # onnx_path is then its FP32 copy with the Q/DQ folded away (trtserve.repository sets both)
    prequantized: Path | None = None
    # ``device:`` — the GPUs (CUDA device indices) the model runs on; the server's instances are spread over them
    # round-robin (instance i on devices[i % len]). Empty: the runtime's default device (GPU 0)
    devices: tuple[int, ...] = ()

    def reservoir_settings(self, server_defaults: ReservoirSpec) -> ReservoirSpec:
        """The server's ``calibration_reservoir`` with this model's keys on top."""
        source = self.source_file or Path("model.yaml")
        return apply_reservoir_block(server_defaults, self.calibration_reservoir, source)

    def artifact(self, precision: str) -> Path:
        """The model file for ``precision`` (``fp32`` is the source ONNX)."""
        if precision == "fp32":
            return self.onnx_path
        if precision not in self.artifacts:
            raise ConfigError(
                f"{self.source_file}: model '{self.name}' has no '{precision}' artifact "
                f"(artifacts: {sorted(self.artifacts) or 'none'}); "
                f"for int8 run `trtserve calibrate {self.name}` first")
        return self.artifacts[precision]

    def available_precisions(self) -> list[str]:
        """Precisions whose model file exists on disk."""
        found = ["fp32"] if self.onnx_path.is_file() else []
        return found + [p for p, path in self.artifacts.items() if p in PRECISIONS and path.is_file()]


_TOP_KEYS = {"name", "onnx", "input", "head", "classes", "max_batch_size", "max_frame_pixels", "artifacts",
             "quantization", "drift", "backend", "engine", "calibration_reservoir", "device"}
_ENGINE_KEYS = {"auto_build", "opt_batch", "workspace_gb", "dla_core"}
_QUANT_KEYS = {"keep_head_float", "exclude_nodes", "exclude_op_types"}
_INPUT_KEYS = {"name", "layout", "height_px", "width_px", "color_order", "scale", "mean", "std", "pad_value",
               "interpolation", "exif_orientation"}
_HEAD_KEYS = {"type", "score_threshold", "iou_threshold", "max_detections", "class_agnostic_nms"}


class YamlReader:
    """Typed access to one mapping of the YAML document, with errors that name file and key."""

    def __init__(self, source: Path, data: Any, prefix: str, allowed: set[str]) -> None:
        self.source, self.prefix = source, prefix
        if not isinstance(data, dict):
            self.fail(prefix or "<document>", data, "a mapping")
        unknown = sorted(set(data) - allowed)
        if unknown:
            key = self.key(str(unknown[0]))
            raise ConfigError(f"{source}: unknown key '{key}'; expected one of {sorted(allowed)}")
        self.data: dict[str, Any] = data

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, key: str, value: Any, expected: str) -> None:
        raise ConfigError(f"{self.source}: key '{key}' has value {value!r}; expected {expected}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ..., expected: str = "") -> Any:
        if name not in self.data:
            if default is ...:
                raise ConfigError(f"{self.source}: missing required key '{self.key(name)}'"
                                  + (f" ({expected})" if expected else ""))
            return default
        value = self.data[name]
        if isinstance(value, bool) and kind is not bool:
            self.fail(self.key(name), value, expected or getattr(kind, "__name__", str(kind)))
        if not isinstance(value, kind):
            self.fail(self.key(name), value, expected or getattr(kind, "__name__", str(kind)))
        return value

    def number(self, name: str, default: Any = ..., lo: float = -math.inf, hi: float = math.inf,
               integer: bool = False) -> Any:
        expected = f"{'an integer' if integer else 'a number'} in [{lo}, {hi}]"
        value = self.get(name, int if integer else (int, float), default, expected)
        if not lo <= value <= hi:
            self.fail(self.key(name), value, expected)
        return int(value) if integer else float(value)

    def choice(self, name: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(name, str, default, f"one of {list(choices)}")
        if value not in choices:
            self.fail(self.key(name), value, f"one of {list(choices)}")
        return str(value)

    def triple(self, name: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
        value = self.get(name, list, list(default), "a list of 3 numbers")
        if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            self.fail(self.key(name), value, "a list of 3 numbers")
        return (float(value[0]), float(value[1]), float(value[2]))


def load_model_config(path: Path) -> ModelConfig:
    """Read and validate one ``model.yaml``. Raises :class:`ConfigError` naming file, key and value."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such model configuration file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    top = YamlReader(path, document, "", _TOP_KEYS)
    name = top.get("name", str, expected="the model name")
    if not name or "/" in name or name != name.strip():
        top.fail("name", name, "a non-empty name without '/' or surrounding spaces")
    directory = path.parent
    onnx_path = directory / top.get("onnx", str, expected="the FP32 ONNX file, relative to model.yaml")

    inp = YamlReader(path, top.get("input", dict, expected="the input specification"), "input", _INPUT_KEYS)
    std = inp.triple("std", (1.0, 1.0, 1.0))
    if any(s == 0 for s in std):
        inp.fail("input.std", list(std), "three non-zero numbers")
    input_spec = InputSpec(
        name=inp.get("name", str, None),
        layout=inp.choice("layout", ("nchw", "nhwc"), "nchw"),
        height_px=inp.number("height_px", lo=1, hi=8192, integer=True),
        width_px=inp.number("width_px", lo=1, hi=8192, integer=True),
        color_order=inp.choice("color_order", ("rgb", "bgr"), "rgb"),
        scale=inp.number("scale", 1.0 / 255.0, lo=0.0),
        mean=inp.triple("mean", (0.0, 0.0, 0.0)),
        std=std,
        pad_value=inp.number("pad_value", 114, lo=0, hi=255, integer=True),
        interpolation=inp.choice("interpolation", ("linear", "area"), "linear"),
        exif_orientation=inp.get("exif_orientation", bool, True, "true or false"),
    )

    head = YamlReader(path, top.get("head", dict, {}), "head", _HEAD_KEYS)
    head_spec = HeadSpec(
        type=head.choice("type", head_types(), AUTO),
        score_threshold=head.number("score_threshold", 0.25, lo=0.0, hi=1.0),
        iou_threshold=head.number("iou_threshold", 0.45, lo=0.0, hi=1.0),
        max_detections=head.number("max_detections", 100, lo=1, hi=100000, integer=True),
        class_agnostic_nms=head.get("class_agnostic_nms", bool, False, "true or false"),
    )

    classes = top.get("classes", list, [], "a list of class names")
    if not all(isinstance(c, str) and c for c in classes):
        top.fail("classes", classes, "a list of non-empty strings")
    if len(set(classes)) != len(classes):
        top.fail("classes", classes, "distinct class names")
    if not classes and head_spec.type != AUTO and HEADS.tagged(head_spec.type, NEEDS_CLASSES):
        top.fail("classes", classes, f"a non-empty list for head type '{head_spec.type}'")

    artifacts_raw = top.get("artifacts", dict, {}, "a mapping of precision to file")
    artifacts: dict[str, Path] = {}
    for precision, file in artifacts_raw.items():
        if not ARTIFACT_KEY.match(str(precision)):
            raise ConfigError(f"{path}: unknown key 'artifacts.{precision}'; expected fp16, int8, int8_tensorrt or "
                              "calibration_cache_<NV_TENSORRT_VERSION> (fp32 is the 'onnx' key)")
        if not isinstance(file, str):
            top.fail(f"artifacts.{precision}", file, "a file name relative to model.yaml")
        artifacts[precision] = directory / file

    quant = YamlReader(path, top.get("quantization", dict, {}), "quantization", _QUANT_KEYS)
    lists = {}
    for key in ("exclude_nodes", "exclude_op_types"):
        value = quant.get(key, list, [], "a list of names")
        if not all(isinstance(v, str) and v for v in value):
            quant.fail(f"quantization.{key}", value, "a list of non-empty strings")
        lists[key] = tuple(value)
    quantization = QuantizationSpec(quant.get("keep_head_float", bool, True, "true or false"),
                                    lists["exclude_nodes"], lists["exclude_op_types"])

    drift = top.get("drift", dict, {}, "a mapping")
    read_drift(YamlReader(path, drift, "drift", DRIFT_KEYS), DriftSpec())  # validate now, apply at serve time
    reservoir = top.get("calibration_reservoir", dict, {}, "a mapping")
    apply_reservoir_block(ReservoirSpec(), reservoir, path)  # validate now, apply at serve time
    eng = YamlReader(path, top.get("engine", dict, {}), "engine", _ENGINE_KEYS)
    max_batch = top.number("max_batch_size", 8, lo=1, hi=1024, integer=True)
    engine = EngineSpec(
        auto_build=eng.get("auto_build", bool, False, "true or false"),
        opt_batch=eng.number("opt_batch", None, lo=1, hi=max_batch, integer=True) if "opt_batch" in eng.data else None,
        workspace_gb=eng.number("workspace_gb", 2.0, lo=1.0 / 1024, hi=1024),
        dla_core=eng.number("dla_core", None, lo=0, hi=15, integer=True) if "dla_core" in eng.data else None,
    )

    devices = read_devices(top)
    return ModelConfig(
        name=name,
        directory=directory,
        onnx_path=onnx_path,
        input=input_spec,
        head=head_spec,
        class_names=tuple(classes),
        max_batch_size=max_batch,
        max_frame_pixels=top.number("max_frame_pixels", 3840 * 2160, lo=1, integer=True),
        artifacts=artifacts,
        source_file=path,
        quantization=quantization,
        drift=drift,
        backend=top.choice("backend", BACKENDS.names(), "onnxruntime"),
        engine=engine,
        calibration_reservoir=reservoir,
        devices=devices,
    )


MAX_DEVICE_INDEX = 63  # CUDA device indices beyond this are a typo (whether the GPU exists is checked at load)


def read_devices(top: YamlReader) -> tuple[int, ...]:
    """``device: N`` or ``device: [N, M, ...]`` (distinct GPU indices) -> a tuple; absent -> ()."""
    if "device" not in top.data:
        return ()
    value = top.data["device"]
    expected = (f"a GPU index (an integer in [0, {MAX_DEVICE_INDEX}]) or a non-empty list of distinct GPU indices, "
                "e.g. 1 or [0, 1]")
    listed = value if isinstance(value, list) else [value]
    if not listed or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_DEVICE_INDEX
                             for v in listed) or len(set(listed)) != len(listed):
        top.fail("device", value, expected)
    return tuple(int(v) for v in listed)
