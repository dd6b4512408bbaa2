"""What ``trtserve build`` will do for one precision on one TensorRT version, as a pure decision.

:func:`plan_build` maps (TensorRT version, precision, the model's artifacts, DLA core) to a :class:`BuildPath`:
which ONNX, which network-creation flags, which builder flags, implicit (calibration cache) or explicit (Q/DQ)
quantization. It refuses, with what to do, whatever the installed TensorRT cannot build. Nothing here imports
TensorRT, so the decision is tested on any machine; :mod:`trtserve.tensorrt.builder` runs it.

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

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtserve.config import PRECISIONS, ModelConfig
from trtserve.errors import ConfigError, ModelLoadError
from trtserve.tensorrt.keys import sha256_of


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
    prequantized: Path | None = None  # a QAT / pre-quantized Q/DQ 'onnx:' (fp32 is then its folded copy)


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
                   fp16 if fp16 and fp16.is_file() else None, caches, config.prequantized)


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
    if sources.prequantized is not None:  # TensorRT 8.x here: INT8 only the implicit way
        raise ConfigError(
            f"{sources.prequantized.name} is a pre-quantized (QAT) Q/DQ model: its trained scales build as an "
            f"explicitly quantized network on TensorRT 10/11 only, and TensorRT {version} builds INT8 only the "
            "implicit way (the FP32 model plus a calibration cache from post-training calibration), which cannot use "
            "them. Build it on TensorRT 10+ (JetPack 6.1+), or build --precision fp16 / fp32 here (from its folded "
            "FP32 copy)")
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


def source_hashes(config: ModelConfig, precision: str, version: TrtVersion) -> tuple[str, str | None]:
    """sha256 of the ONNX and calibration cache an engine of ``precision`` is built from on ``version``."""
    return build_hashes(plan_build(version, precision, sources_of(config), model=config.name))


def build_hashes(path: BuildPath) -> tuple[str, str | None]:
    """sha256 of the ONNX and (implicit INT8) calibration cache a build path reads: part of the engine key."""
    cache = path.calibration_cache
    return sha256_of(path.onnx), (sha256_of(cache) if cache else None)
