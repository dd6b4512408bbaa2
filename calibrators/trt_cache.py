"""TensorRT calibration cache files (implicit INT8 path of TensorRT 8.x / 10.x).

Format: a header ``TRT-<NV_TENSORRT_VERSION>-<algorithm>``, then ``<tensor name>: <hex>`` per
tensor, where hex is the IEEE-754 float32 bit pattern of the scale (amax / 127), most significant
byte first, lowercase, without ``0x`` and without zero padding.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from calibrators.files import atomic_write_bytes

ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}
INT8_MAX = 127.0
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


class CacheFormatError(ValueError):
    """A calibration cache that cannot be parsed; the message names the file and line."""


def tensorrt_version_int(version: str) -> int:
    """NV_TENSORRT_VERSION of ``'8.6.2'`` (8602) or ``'10.3.0'`` (100300).

    Up to 8.x it is major*1000 + minor*100 + patch; from 10.x major*10000 + minor*100 + patch.
    """
    parts = version.strip().split(".")
    if not 2 <= len(parts) <= 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"TensorRT version {version!r} is not like 8.6.2 or 10.3.0")
    major, minor = int(parts[0]), int(parts[1])
    patch = int(parts[2]) if len(parts) > 2 else 0
    if major < 8:
        raise ValueError(f"TensorRT {version} is older than 8.0; calibration caches here target 8.5 and later")
    if minor > 99 or patch > 99:
        raise ValueError(f"TensorRT version {version!r} has a component above 99")
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    """Big-endian float32 bits of ``scale`` as lowercase hex without padding (0.0078759 -> '3c010a14')."""
    return format(int.from_bytes(struct.pack(">f", scale), "big"), "x")


def hex_to_scale(text: str) -> float:
    value = int(text, 16)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{text!r} is not a 32-bit pattern")
    scale: float = struct.unpack(">f", value.to_bytes(4, "big"))[0]
    return scale


@dataclass(frozen=True)
class CalibrationCache:
    version_int: int
    algorithm: str  # EntropyCalibration2 | MinMaxCalibration | ...
    scales: Mapping[str, float]  # tensor name -> amax / 127

    def amax(self, tensor: str) -> float:
        return self.scales[tensor] * INT8_MAX

    def to_text(self) -> str:
        lines = [f"TRT-{self.version_int}-{self.algorithm}"]
        lines += [f"{name}: {scale_to_hex(scale)}" for name, scale in self.scales.items()]
        return "\n".join(lines) + "\n"


def make_cache(amax_by_tensor: Mapping[str, float], trt_version: str, method: str = "entropy") -> CalibrationCache:
    """A cache for ``trt_version`` from per-tensor amax. ``method`` picks the header's algorithm name."""
    if method not in ALGORITHMS:
        raise ValueError(f"TensorRT caches exist for methods {sorted(ALGORITHMS)}, not {method!r}; "
                         "use entropy (EntropyCalibration2) or minmax")
    scales = {}
    for name, amax in amax_by_tensor.items():
        if not amax > 0 or amax != amax:
            raise ValueError(f"tensor {name!r} has amax {amax}; a calibrated range must be positive and finite")
        scales[name] = float(amax) / INT8_MAX
    return CalibrationCache(tensorrt_version_int(trt_version), ALGORITHMS[method], scales)


def write_cache(cache: CalibrationCache, path: Path) -> Path:
    """Write atomically (a partial file would be worse than none: TensorRT would trust it)."""
    path = Path(path)
    atomic_write_bytes(path, cache.to_text().encode("ascii"))
    return path


def read_cache(path: Path) -> CalibrationCache:
    """Parse a cache file written by TensorRT or by :func:`write_cache`."""
    path = Path(path)
    lines = [ln.strip() for ln in path.read_text(encoding="ascii", errors="replace").splitlines() if ln.strip()]
    if not lines:
        raise CacheFormatError(f"{path}: empty calibration cache")
    header = _HEADER.match(lines[0])
    if header is None:
        raise CacheFormatError(f"{path}: line 1 is {lines[0]!r}; expected 'TRT-<version>-<algorithm>'")
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError("no 'name: hex' pair")
            scales[name.strip()] = hex_to_scale(value.strip())
        except ValueError as exc:
            raise CacheFormatError(f"{path}: line {number} {line!r}: {exc}") from None
    return CalibrationCache(int(header.group(1)), header.group(2), scales)
