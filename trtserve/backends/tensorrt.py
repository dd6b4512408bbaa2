"""TensorRT backend: a serialized engine (plan) built for this host by ``trtserve build``.

One class over two TensorRT APIs: TensorRT 8.x binds buffers by index (``get_binding_shape``,
``set_binding_shape``, ``execute_async_v2``); 10.x and 11.x name tensors (``num_io_tensors``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``). The difference lives in two small
adapters, chosen by the TensorRT major version.

At load (never in the constructor) the engine is deserialized and, per execution context, a CUDA stream,
device buffers and page-locked host buffers are allocated once for the engine's max batch and reused by
every call. Each context owns one optimization profile (contexts that run concurrently must not share one),
so as many batches as contexts run at the same time. ``close`` frees all of it.
"""

from __future__ import annotations

import ctypes
import logging
import math
import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from trtserve.backends.base import Backend, BackendSupport, HostFacts, TensorInfo
from trtserve.errors import BackendError, InvalidFrameError, ModelLoadError

if TYPE_CHECKING:
    from trtserve.config import ModelConfig
    from trtserve.tensorrt.cuda import CudaRuntime

logger = logging.getLogger(__name__)

_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
           "BOOL": np.bool_, "UINT8": np.uint8}


def _numpy_dtype(trt_dtype: Any) -> np.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in _DTYPES:
        raise ModelLoadError(f"engine tensor type {name} has no numpy equivalent here; "
                             f"expected one of {sorted(_DTYPES)}")
    return np.dtype(_DTYPES[name])


@dataclass
class _Tensor:
    name: str
    index: int  # binding index in profile 0 (8.x); position among I/O tensors (10+)
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 marks a dynamic dimension
    max_shape: tuple[int, ...] = ()


@dataclass
class _Slot:
    """One execution context with its profile, stream and buffers (owned by the backend)."""

    context: Any
    profile: int
    stream: Any
    device: dict[str, int] = field(default_factory=dict)
    host_ptr: dict[str, int] = field(default_factory=dict)
    host: dict[str, NDArray[np.uint8]] = field(default_factory=dict)
    bindings: list[int] = field(default_factory=list)  # 8.x


class _NamedTensorApi:
    """TensorRT 10.x / 11.x: tensors by name."""

    def __init__(self, trt: Any, engine: Any) -> None:
        self.trt, self.engine = trt, engine

    def tensors(self) -> list[_Tensor]:
        e = self.engine
        found = []
        for i in range(e.num_io_tensors):
            name = e.get_tensor_name(i)
            is_input = e.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT
            found.append(_Tensor(name, i, is_input, _numpy_dtype(e.get_tensor_dtype(name)),
                                 tuple(int(d) for d in e.get_tensor_shape(name))))
        return found

    def profile_max(self, tensor: _Tensor, profile: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.engine.get_tensor_profile_shape(tensor.name, profile)[2])

    def bind(self, slot: _Slot, tensors: list[_Tensor]) -> None:
        for t in tensors:  # addresses persist in the context: buffers never move, so set once
            if not slot.context.set_tensor_address(t.name, slot.device[t.name]):
                raise ModelLoadError(f"TensorRT refused the address of tensor '{t.name}'")

    def set_input_shape(self, slot: _Slot, tensor: _Tensor, shape: tuple[int, ...]) -> bool:
        return bool(slot.context.set_input_shape(tensor.name, shape))

    def shape(self, slot: _Slot, tensor: _Tensor) -> tuple[int, ...]:
        return tuple(int(d) for d in slot.context.get_tensor_shape(tensor.name))

    def execute(self, slot: _Slot, stream_handle: int) -> bool:
        return bool(slot.context.execute_async_v3(stream_handle))


class _BindingsApi:
    """TensorRT 8.x: bindings by index; profile k's bindings follow profile k-1's."""

    def __init__(self, trt: Any, engine: Any) -> None:
        self.trt, self.engine = trt, engine
        self.per_profile = engine.num_bindings // max(1, engine.num_optimization_profiles)

    def tensors(self) -> list[_Tensor]:
        e = self.engine
        return [_Tensor(e.get_binding_name(i), i, bool(e.binding_is_input(i)), _numpy_dtype(e.get_binding_dtype(i)),
                        tuple(int(d) for d in e.get_binding_shape(i))) for i in range(self.per_profile)]

    def _index(self, slot: _Slot, tensor: _Tensor) -> int:
        return slot.profile * self.per_profile + tensor.index

    def profile_max(self, tensor: _Tensor, profile: int) -> tuple[int, ...]:
        index = profile * self.per_profile + tensor.index
        return tuple(int(d) for d in self.engine.get_profile_shape(profile, index)[2])

    def bind(self, slot: _Slot, tensors: list[_Tensor]) -> None:
        slot.bindings = [0] * self.engine.num_bindings
        for t in tensors:
            slot.bindings[self._index(slot, t)] = slot.device[t.name]

    def set_input_shape(self, slot: _Slot, tensor: _Tensor, shape: tuple[int, ...]) -> bool:
        return bool(slot.context.set_binding_shape(self._index(slot, tensor), shape))

    def shape(self, slot: _Slot, tensor: _Tensor) -> tuple[int, ...]:
        return tuple(int(d) for d in slot.context.get_binding_shape(self._index(slot, tensor)))

    def execute(self, slot: _Slot, stream_handle: int) -> bool:
        return bool(slot.context.execute_async_v2(slot.bindings, stream_handle))


def _stream_handle(stream: Any) -> int:
    return int(stream)


class TensorRTBackend(Backend):
    name = "tensorrt"

    @classmethod
    def support(cls, host: HostFacts) -> BackendSupport:
        """The build paths ``trtserve build`` takes for the installed TensorRT (the same rules, not restated)."""
        import importlib.util

        from trtserve.tensorrt.plan import DLA_MIN_TRT11, TrtVersion

        if host.tensorrt is None:
            return BackendSupport(available=False, why_not="TensorRT is not installed")
        if not (host.gpus or host.l4t):
            return BackendSupport(available=False, why_not="no NVIDIA GPU found")
        if host.cuda_runtime is None:
            return BackendSupport(available=False, why_not="cuda-python is missing or the CUDA runtime failed")
        version = TrtVersion.parse(host.tensorrt)
        major = version.major
        fp16 = "fp16"
        if major >= 11:  # strongly typed only: FP16 needs an FP16 ONNX, converted by onnxconverter-common
            fp16 = "fp16 (converted FP16 ONNX)" if importlib.util.find_spec("onnxconverter_common") else \
                "fp16 only with artifacts.fp16 (onnxconverter-common missing: pip install 'trtserve[gpu]')"
        precisions = ["fp32", fp16, "int8 (Q/DQ, strongly typed)"] if major >= 10 else ["fp32", fp16]
        if major < 11:
            precisions.append("int8 (calibration cache, implicit)")
        if host.dla_cores and (major < 11 or version >= DLA_MIN_TRT11):  # the rule `trtserve build` applies
            precisions.append(f"DLA cores 0..{host.dla_cores - 1} (fp16/int8, --dla-core)")
        return BackendSupport(available=True, precisions=tuple(precisions))

    @classmethod
    def model_file(cls, config: ModelConfig, precision: str, device_id: int | None = None,
                   rebuild: bool = False) -> Path:
        """The engine built for GPU ``device_id`` of this host (None: the current device) — its GPU model and
        compute capability, this TensorRT version, the current ONNX and calibration cache; built now (on that
        GPU) if ``engine.auto_build`` is set, else ModelLoadError with the ``trtserve build`` command.

        ``rebuild`` (a reload while serving, e.g. after ``trtserve recalibrate`` promoted a new Q/DQ model or
        calibration cache): when no engine fits the current sources but one was built here for this GPU and
        TensorRT before, an engine is built now with that one's settings (batch sizes, contexts, workspace, DLA)
        and keyed as usual, before the new version is opened; EngineBuildError when TensorRT refuses (the reload
        then fails and the serving version keeps serving)."""
        from trtserve.tensorrt.builder import build_engine, import_tensorrt
        from trtserve.tensorrt.cuda import CudaRuntime
        from trtserve.tensorrt.keys import default_settings, previous_settings, select_engine
        from trtserve.tensorrt.plan import TrtVersion, source_hashes

        trt = import_tensorrt()
        cuda = CudaRuntime()
        version = TrtVersion.parse(trt.__version__)
        if device_id is not None:
            cuda.check_device_index(device_id, where=f"{config.source_file}: ")
            cuda.set_device(device_id)  # a build below allocates: on the chosen GPU
        device = cuda.device(device_id)
        try:
            return select_engine(config, precision, str(version), device, source_hashes(config, precision, version))
        except ModelLoadError as exc:
            before = previous_settings(config, precision, str(version), device) if rebuild else None
            if before is not None:
                logger.warning("model %s: no %s engine fits its current sources on %s; rebuilding it on this host "
                               "before the reload switches (settings of the engine it replaces: max batch %d, %d "
                               "contexts)", config.name, precision, device.gpu_name, before.max_batch,
                               before.execution_contexts)
                return build_engine(config, before, trt=trt, cuda=cuda, device_id=device_id).plan
            if not config.engine.auto_build:
                raise
            logger.warning("%s; building it now (engine.auto_build is set)", exc)
            return build_engine(config, default_settings(config, precision), trt=trt, cuda=cuda,
                                device_id=device_id).plan

    @property
    def runtime_version(self) -> str:
        return getattr(self, "_runtime_version", "")

    @property
    def device(self) -> str:
        return getattr(self, "_device", "unknown")

    def _load(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        from trtserve.tensorrt.builder import create, import_tensorrt, make_logger
        from trtserve.tensorrt.cuda import CudaRuntime
        from trtserve.tensorrt.keys import read_record
        from trtserve.tensorrt.plan import TrtVersion

        trt = import_tensorrt()
        self._cuda: CudaRuntime = CudaRuntime()
        if not self.model_path.is_file():
            raise ModelLoadError(f"engine {self.model_path} does not exist; build it with `trtserve build`")
        record = read_record(self.model_path)
        version = TrtVersion.parse(trt.__version__)
        wanted = self.options.device_id
        if wanted is None:
            self._device_index = self._cuda.current_device()
        else:
            self._cuda.check_device_index(wanted)
            self._device_index = wanted
        # before any allocation: the runtime, the engine's weights, contexts, streams and buffers are made on the
        # loading thread's current device; every later call on the engine sets it again on its own thread (_infer)
        self._cuda.set_device(self._device_index)
        device = self._cuda.device(self._device_index)
        self._runtime_version, self._device = str(version), f"{device.gpu_name} (sm {device.compute_capability})"
        if wanted is not None:
            self._device = f"GPU {wanted}: {self._device}"
        why = record.mismatch(str(version), device)
        if why is not None:
            raise ModelLoadError(f"engine {self.model_path.name} does not fit this host: {why}. Rebuild it here with: "
                                 f"{record.rebuild_command(self.model_path)}")
        self._log = make_logger(trt)
        self._runtime = create(trt, "Runtime", self._log)
        self._engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if self._engine is None:
            detail = "; ".join(self._log.errors()) or "no detail from TensorRT"
            raise ModelLoadError(f"TensorRT {version} cannot deserialize {self.model_path} (corrupt, truncated or "
                                 f"from another TensorRT/GPU: {detail}). Rebuild it with: "
                                 f"{record.rebuild_command(self.model_path)}")
        self._api = _BindingsApi(trt, self._engine) if version.major < 10 else _NamedTensorApi(trt, self._engine)
        self._tensors = self._api.tensors()
        self._input_tensors = [t for t in self._tensors if t.is_input]  # split once, not per batch
        self._output_tensors = [t for t in self._tensors if not t.is_input]
        inputs = self._input_tensors
        for t in inputs:
            t.max_shape = self._api.profile_max(t, 0)
        self.max_batch = min(t.max_shape[0] for t in inputs)
        profiles = int(self._engine.num_optimization_profiles)
        wanted = self.options.execution_contexts or profiles
        if wanted > profiles:
            raise ModelLoadError(f"{wanted} execution contexts asked for, but {self.model_path.name} has {profiles} "
                                 "optimization profiles (one per concurrent context); rebuild with more or ask fewer")
        self._slots: queue.Queue[_Slot] = queue.Queue()
        self._all: list[_Slot] = []
        self._all_pending: _Slot | None = None  # a slot being made: released by _release if making it fails
        try:
            for k in range(wanted):
                self._all.append(self._make_slot(k))
        except Exception:
            self._close()  # the engine's weights leave the GPU now, not when the traceback is collected
            raise
        for slot in self._all:
            self._slots.put(slot)
        logger.info("loaded %s (TensorRT %s, %s): max batch %d, %d contexts", self.model_path.name, version,
                    record.build_path, self.max_batch, wanted)

        def info(t: _Tensor) -> TensorInfo:
            return TensorInfo(t.name, t.dtype, tuple(None if d < 0 else d for d in t.shape))

        return [info(t) for t in inputs], [info(t) for t in self._output_tensors]

    def _make_slot(self, profile: int) -> _Slot:
        cuda = self._cuda
        context = self._engine.create_execution_context()
        if context is None:
            raise ModelLoadError("TensorRT could not create an execution context (out of GPU memory?)")
        slot = _Slot(context, profile, cuda.stream_create())
        self._all_pending = slot
        if not context.set_optimization_profile_async(profile, _stream_handle(slot.stream)):
            detail = "; ".join(self._log.errors()[-3:]) or "no detail from TensorRT"
            raise ModelLoadError(f"TensorRT refused optimization profile {profile} of {self.model_path.name} for "
                                 f"execution context {profile} ({detail}); the engine may have fewer profiles than "
                                 "contexts: rebuild it with `trtserve build ... --contexts N` or ask fewer contexts")
        for t in self._input_tensors:
            if not self._api.set_input_shape(slot, t, t.max_shape):
                raise ModelLoadError(f"TensorRT refused shape {list(t.max_shape)} for input '{t.name}'")
        for t in self._tensors:  # outputs at max batch give the buffer sizes
            shape = t.max_shape if t.is_input else self._api.shape(slot, t)
            if any(d < 0 for d in shape):
                raise ModelLoadError(f"output '{t.name}' has shape {list(shape)} even with every input shape set")
            t.max_shape = shape
            size = max(1, math.prod(shape) * t.dtype.itemsize)
            slot.device[t.name] = cuda.malloc(size)
            slot.host_ptr[t.name] = cuda.malloc_host(size)
            pinned = memoryview((ctypes.c_uint8 * size).from_address(slot.host_ptr[t.name])).cast("B")
            slot.host[t.name] = np.frombuffer(pinned, np.uint8)
        self._api.bind(slot, self._tensors)
        self._all_pending = None
        return slot

    def _infer(self, feeds: dict[str, NDArray[np.generic]]) -> dict[str, NDArray[np.generic]]:
        batch = {int(a.shape[0]) for a in feeds.values()}
        if len(batch) != 1:
            raise InvalidFrameError(f"inputs disagree on the batch size: {sorted(batch)}")
        n = batch.pop()
        if not 1 <= n <= self.max_batch:
            raise InvalidFrameError(f"batch of {n} is outside the engine's range 1..{self.max_batch}; send at most "
                                    f"{self.max_batch} frames per batch or rebuild with a larger --max-batch")
        slot = self._slots.get()
        try:
            self._cuda.set_device(self._device_index)  # this thread's current device: the engine's
            return self._run(slot, feeds, n)
        finally:
            self._slots.put(slot)

    def _run(self, slot: _Slot, feeds: dict[str, NDArray[np.generic]], n: int) -> dict[str, NDArray[np.generic]]:
        cuda, stream = self._cuda, slot.stream
        for t in self._input_tensors:
            data = np.ascontiguousarray(feeds[t.name], dtype=t.dtype)
            slot.host[t.name][: data.nbytes] = data.reshape(-1).view(np.uint8)
            cuda.copy_to_device(slot.device[t.name], slot.host_ptr[t.name], data.nbytes, stream)
            if not self._api.set_input_shape(slot, t, tuple(data.shape)):
                raise BackendError(f"TensorRT refused input shape {list(data.shape)} for '{t.name}'")
        shapes = [(t, self._api.shape(slot, t)) for t in self._output_tensors]
        if not self._api.execute(slot, _stream_handle(stream)):
            raise BackendError(f"TensorRT failed to enqueue {self.model_path.name}: "
                               f"{'; '.join(self._log.errors()[-3:]) or 'no detail'}")
        sizes = [math.prod(shape) * t.dtype.itemsize for t, shape in shapes]
        for (t, _), size in zip(shapes, sizes):
            cuda.copy_to_host(slot.host_ptr[t.name], slot.device[t.name], size, stream)
        cuda.synchronize(stream)
        return {t.name: slot.host[t.name][:size].view(t.dtype).reshape(shape).copy()
                for (t, shape), size in zip(shapes, sizes)}

    def _release(self) -> None:
        pending = getattr(self, "_all_pending", None)
        slots = list(getattr(self, "_all", [])) + ([pending] if pending is not None else [])
        def best_effort(release: Any, handle: Any) -> None:  # one failed free must not leak the rest
            try:
                release(handle)
            except Exception as exc:
                logger.warning("releasing CUDA resource %s failed: %s", handle, exc)

        if slots and hasattr(self, "_device_index"):
            best_effort(self._cuda.set_device, self._device_index)
        for slot in slots:
            slot.host.clear()  # views of the pinned memory go before it is freed
            slot.context = None
            for ptr in slot.device.values():
                best_effort(self._cuda.free, ptr)
            for ptr in slot.host_ptr.values():
                best_effort(self._cuda.free_host, ptr)
            best_effort(self._cuda.stream_destroy, slot.stream)
            slot.device.clear()
            slot.host_ptr.clear()
        self._all = []
        self._all_pending = None

    def _close(self) -> None:
        self._release()
        self._engine = None
        self._runtime = None

    @property
    def execution_contexts(self) -> int:
        return len(self._all)
