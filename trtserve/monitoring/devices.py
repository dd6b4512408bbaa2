"""GPU utilisation and memory for ``/metrics``: NVML on datacenter GPUs, ``tegrastats`` on a Jetson.

Each collector is read at scrape time; :func:`device_collectors` picks the one this host supports.
"""

from __future__ import annotations

import logging
import platform
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

logger = logging.getLogger(__name__)


class NvmlCollector(Collector):
    """GPU utilisation and memory from NVML (nvidia-ml-py), one series per GPU index."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._count = int(nvml.nvmlDeviceGetCount())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        util = GaugeMetricFamily("trtserve_gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=["gpu"])
        used = GaugeMetricFamily("trtserve_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"])
        total = GaugeMetricFamily("trtserve_gpu_memory_total_bytes", "GPU memory (NVML)", labels=["gpu"])
        for i in range(self._count):
            try:
                handle = self._nvml.nvmlDeviceGetHandleByIndex(i)
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU that fell off the bus must not break the scrape
                logger.warning("NVML read of GPU %d failed: %s", i, exc)
                continue
            util.add_metric([str(i)], rates.gpu / 100.0)
            used.add_metric([str(i)], float(memory.used))
            total.add_metric([str(i)], float(memory.total))
        yield from (util, used, total)


@dataclass(frozen=True)
class TegraSample:
    gpu_utilization_ratio: float | None
    ram_used_bytes: float | None
    ram_total_bytes: float | None


_TEGRA_GPU = re.compile(r"GR3D_FREQ (\d+)%")
_TEGRA_RAM = re.compile(r"RAM (\d+)/(\d+)MB")


def parse_tegrastats(line: str) -> TegraSample:
    """One tegrastats line -> GPU busy fraction and shared RAM (Jetson GPUs use system memory)."""
    gpu = _TEGRA_GPU.search(line)
    ram = _TEGRA_RAM.search(line)
    mib = 1024.0 * 1024.0
    return TegraSample(int(gpu.group(1)) / 100.0 if gpu else None,
                       int(ram.group(1)) * mib if ram else None, int(ram.group(2)) * mib if ram else None)


class TegrastatsCollector(Collector):
    """Jetson GPU load from a long-running ``tegrastats --interval MS`` whose last line is kept."""

    def __init__(self, binary: str, interval_ms: int = 1000) -> None:
        self._last = TegraSample(None, None, None)
        self._process = subprocess.Popen([binary, "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, name="trtserve-tegrastats", daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._last = parse_tegrastats(line)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self._last
        for name, value, doc in (("trtserve_gpu_utilization_ratio", s.gpu_utilization_ratio, "GPU busy (tegrastats)"),
                                 ("trtserve_gpu_memory_used_bytes", s.ram_used_bytes, "Shared RAM in use"),
                                 ("trtserve_gpu_memory_total_bytes", s.ram_total_bytes, "Shared RAM")):
            family = GaugeMetricFamily(name, doc, labels=["gpu"])
            if value is not None:
                family.add_metric(["0"], value)
            yield family

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def device_collectors(registry: CollectorRegistry, which: str = "auto") -> list[Collector]:
    """Register what this host supports (``auto``), or nothing (``none``); log why each one is off."""
    if which == "none":
        logger.info("device metrics off: disabled in the configuration")
        return []
    found: list[Collector] = []
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        found.append(NvmlCollector(pynvml))
    except ImportError:
        logger.info("NVML GPU metrics off: nvidia-ml-py is not installed (pip install 'trtserve[gpu]')")
    except Exception as exc:  # NVMLError: no driver / no GPU
        logger.info("NVML GPU metrics off: %s", exc)
    if not found and platform.machine() == "aarch64":
        tegrastats = shutil.which("tegrastats")
        if tegrastats:
            try:
                found.append(TegrastatsCollector(tegrastats))
            except OSError as exc:
                logger.info("Jetson GPU metrics off: cannot run %s: %s", tegrastats, exc)
        else:
            logger.info("Jetson GPU metrics off: tegrastats is not on PATH (not a Jetson, or L4T tools missing)")
    for collector in found:
        registry.register(collector)
    return found
