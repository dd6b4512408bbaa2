"""Several GPUs per host: model.yaml's ``device: N`` or ``device: [N, M, ...]`` (Triton's instance_group ``gpus``).

:func:`open_backend` opens a model's backend the way :meth:`Detector.open` asks for it:

* no ``device:`` — one backend on the runtime's default device (GPU 0), as before;
* ``device: N`` — one backend on GPU N (``BackendOptions.device_id``: the TensorRT backend makes GPU N current with
  ``cudaSetDevice`` before it allocates anything, ONNX Runtime's CUDA / TensorRT providers get ``device_id``);
* ``device: [N, M, ...]`` — the server's ``instances`` (batches at once) spread round-robin over the listed GPUs
  (:func:`spread`: instance i on ``devices[i % len(devices)]``), one backend per GPU,
  each picking its own file (a TensorRT engine is keyed by the GPU's name and compute capability), wrapped in a
  :class:`SpreadBackend` that runs each batch on the GPU of a free instance.

Where the runtime has no GPU to choose (ONNX Runtime on its CPU provider) the device is ignored with a log line and
one backend serves: see :meth:`OnnxRuntimeBackend._load` for why it is not refused.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from trtserve.backends.base import Backend, BackendOptions, BackendSupport, HostFacts, TensorInfo
from trtserve.backends.input_prefix import FoldsInput, InputPrefix
from trtserve.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from trtserve.config import ModelConfig

logger = logging.getLogger(__name__)


def spread(instances: int, devices: Sequence[int]) -> list[int]:
    """The GPU of each of ``instances`` instances over ``devices``, round-robin: instance i on
    ``devices[i % len(devices)]`` (Triton's instance_group ``gpus``). ValueError for no devices or instances."""
    if instances < 1 or not devices:
        raise ValueError(f"cannot spread {instances} instances over devices {list(devices)}")
    return [devices[i % len(devices)] for i in range(instances)]


def _open_one(kind: type[Backend], config: ModelConfig, precision: str, options: BackendOptions,
              device_id: int | None, normalize_in_model: bool) -> Backend:
    unloaded = kind(kind.model_file(config, precision, device_id, options.rebuild_engine),
                    replace(options, device_id=device_id))
    if normalize_in_model and isinstance(unloaded, FoldsInput):
        unloaded.fold_input(InputPrefix.from_spec(config.input), config.input.name)
    return unloaded.load()


def open_backend(kind: type[Backend], config: ModelConfig, precision: str, options: BackendOptions,
                 normalize_in_model: bool = False) -> Backend:
    """``config``'s model loaded on ``kind`` on the GPU(s) its ``device:`` lists (see the module)."""
    devices = config.devices
    if len(devices) <= 1:
        return _open_one(kind, config, precision, options, devices[0] if devices else None, normalize_in_model)
    instances = options.instances or len(devices)
    if instances < len(devices):
        raise ConfigError(f"{config.source_file}: key 'device' lists {len(devices)} GPUs {list(devices)} but the "
                          f"server runs {instances} instance(s) (batcher.instances) of model '{config.name}': each "
                          f"GPU needs one; set batcher.instances to a multiple of {len(devices)} or list fewer GPUs")
    order = spread(instances, devices)
    first = _open_one(kind, config, precision, options, devices[0], normalize_in_model)
    if not first.places_on_device:
        logger.info("model %s: one %s backend serves all %d instances: it has no GPU to place them on (device %s "
                    "ignored)", config.name, kind.name, instances, list(devices))
        return first
    opened: dict[int, Backend] = {devices[0]: first}
    try:
        for device in devices[1:]:
            opened[device] = _open_one(kind, config, precision, options, device, normalize_in_model)
        spread_backend = spread_class(kind)(opened, order)
        spread_backend.load()
    except BaseException:
        for backend in opened.values():
            backend.close()
        raise
    logger.info("model %s: %d instances over GPUs %s (instance i on GPU %s[i %% %d]): %s", config.name, instances,
                list(devices), list(devices), len(devices),
                "; ".join(f"GPU {d}: {b.device} ({order.count(d)} instances)" for d, b in opened.items()))
    return spread_backend


_CLASSES: dict[str, type[SpreadBackend]] = {}


def spread_class(kind: type[Backend]) -> type[SpreadBackend]:
    """The :class:`SpreadBackend` subclass named as ``kind`` (``tensorrt``, ``onnxruntime``): what the server
    reports and compares (build info, the shadow's same-backend check) is the runtime's name."""
    if kind.name not in _CLASSES:
        _CLASSES[kind.name] = type(f"Spread{kind.__name__}", (SpreadBackend,), {"name": kind.name})
    return _CLASSES[kind.name]


class SpreadBackend(Backend, FoldsInput):
    """One model on several GPUs: a loaded backend per GPU, and one token per server instance naming its GPU.

    A batch takes a free instance's token (waiting while every instance is busy — the server never runs more
    batches at once than it has instances), runs on that GPU's backend, and gives the token back at the end of the
    queue, so that consecutive batches go round the GPUs and concurrent ones land on different instances.
    """

    name = "spread"

    def __init__(self, backends: dict[int, Backend], order: list[int]) -> None:
        first = backends[order[0]]
        super().__init__(first.model_path, first.options)
        self.backends = backends
        self.order = list(order)  # the GPU of each instance
        self._free: queue.Queue[int] = queue.Queue()
        for device in self.order:
            self._free.put(device)
        self._lock = threading.Lock()
        self.batches_per_device: dict[int, int] = dict.fromkeys(backends, 0)

    @classmethod
    def support(cls, host: HostFacts) -> BackendSupport:
        return BackendSupport(available=False, why_not="a wrapper over other backends, not a runtime")

    def fold_input(self, prefix: InputPrefix, input_name: str | None) -> None:
        raise RuntimeError("fold the input of each GPU's backend before loading it (open_backend does)")

    @property
    def input_folded(self) -> bool:
        first = self.backends[self.order[0]]
        return isinstance(first, FoldsInput) and first.input_folded

    def _load(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        (device, first), *rest = self.backends.items()
        for other_device, other in rest:
            if (other.inputs, other.outputs) != (first.inputs, first.outputs):
                raise ModelLoadError(f"{other.model_path.name} on GPU {other_device} has inputs {other.inputs} and "
                                     f"outputs {other.outputs}, but {first.model_path.name} on GPU {device} has "
                                     f"{first.inputs} and {first.outputs}: build the engines of every listed GPU "
                                     "from the same model and settings")
        return list(first.inputs), list(first.outputs)

    def _infer(self, feeds: dict[str, NDArray[np.generic]]) -> dict[str, NDArray[np.generic]]:
        device = self._free.get()
        try:
            with self._lock:
                self.batches_per_device[device] += 1
            return self.backends[device]._infer(feeds)
        finally:
            self._free.put(device)

    def _close(self) -> None:
        for backend in self.backends.values():
            backend.close()

    @property
    def runtime_version(self) -> str:
        return self.backends[self.order[0]].runtime_version

    @property
    def device(self) -> str:
        return "; ".join(f"{b.device}" if b.device.startswith("GPU ") else f"GPU {d}: {b.device}"
                         for d, b in self.backends.items())
