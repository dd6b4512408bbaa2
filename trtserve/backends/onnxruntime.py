"""ONNX Runtime backend: CPU here; CUDA and TensorRT execution providers where onnxruntime-gpu is installed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trtserve.backends.base import Backend, BackendOptions, BackendSupport, HostFacts, TensorInfo
from trtserve.backends.input_prefix import FoldsInput, InputPrefix, with_uint8_input
from trtserve.errors import ModelLoadError
from trtserve.threads import RUNTIME, os_thread_named

logger = logging.getLogger(__name__)

_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # those that take a ``device_id``


def provider_options(providers: list[str], precision: str, cache_dir: Path | None, ort_version: str,
                     device_id: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Per-provider options. The TensorRT provider keeps its engines and timing cache in ``cache_dir`` (keyed by
    GPU, ONNX Runtime version and precision, see :func:`ort_cache_dir`); FP16 is its builder flag; INT8 runs the
    Q/DQ model, which TensorRT 10+ (ONNX Runtime 1.18+) builds strongly typed without ``trt_int8_enable``, while
    TensorRT 8.x (ONNX Runtime < 1.18) needs the INT8 flag to honour Q/DQ nodes. ``device_id`` (model.yaml's
    ``device``) goes to the CUDA and TensorRT providers, which allocate on that GPU; the CPU provider has none."""
    major, minor = (int(p) for p in ort_version.split(".")[:2])
    found: list[tuple[str, dict[str, Any]]] = []
    for name in providers:
        opts: dict[str, Any] = {}
        if name in GPU_PROVIDERS and device_id is not None:
            opts["device_id"] = device_id
        if name == "TensorrtExecutionProvider":
            assert cache_dir is not None, "the TensorRT provider needs its engine cache folder"
            opts |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                     "trt_timing_cache_enable": True}
            if precision == "fp16":
                opts["trt_fp16_enable"] = True
            if precision == "int8" and (major, minor) < (1, 18):
                opts["trt_int8_enable"] = True
        found.append((name, opts))
    return found


def ort_cache_dir(model_path: Path, precision: str, ort_version: str, gpu: dict[str, str] | None) -> Path:
    """``<model dir>/cache/ort-<version>.<precision>.sm<cc>.<gpu>``: an engine cache per device, like engine keys."""
    from trtserve.tensorrt.cuda import DeviceInfo

    device = DeviceInfo(gpu["name"], gpu["compute_capability"]) if gpu else DeviceInfo("unknown-gpu", "0.0")
    cc = device.compute_capability.replace(".", "")
    return model_path.parent / "cache" / f"ort-{ort_version}.{precision}.sm{cc}.{device.slug}"


def _visible_gpus() -> int | None:
    """How many GPUs this process sees, from cuda-python when it is installed; None when it cannot tell (then
    ONNX Runtime's own error for a bad ``device_id`` is reported)."""
    from trtserve.errors import TrtserveError
    from trtserve.tensorrt.cuda import CudaRuntime

    try:
        return CudaRuntime().device_count()
    except TrtserveError:
        return None


def _gpu(device_id: int | None) -> dict[str, str] | None:
    """Name and compute capability of GPU ``device_id`` (None: the first), for the TensorRT provider's cache key:
    from cuda-python (CUDA's numbering) when installed, else nvidia-smi's list."""
    from trtserve.errors import TrtserveError
    from trtserve.tensorrt.cuda import CudaRuntime, nvidia_smi

    try:
        info = CudaRuntime().device(device_id or 0)
        return {"name": info.gpu_name, "compute_capability": info.compute_capability}
    except TrtserveError:
        gpus, _, _ = nvidia_smi()
        index = device_id or 0
        return gpus[index] if index < len(gpus) else None


def _info(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorInfo(arg.name, np.dtype(_ORT_TYPES.get(arg.type, np.float32)), shape)


class OnnxRuntimeBackend(Backend, FoldsInput):
    name = "onnxruntime"

    def __init__(self, model_path: Path, options: BackendOptions | None = None) -> None:
        super().__init__(model_path, options)
        self._prefix: tuple[InputPrefix, str | None] | None = None
        self._folded = False

    def fold_input(self, prefix: InputPrefix, input_name: str | None) -> None:
        self._prefix = (prefix, input_name)

    @property
    def input_folded(self) -> bool:
        return self._folded

    def _model_source(self, cpu_only: bool) -> str | bytes:
        """The file to load, or with :meth:`fold_input` the model with its uint8-input prefix (serialized)."""
        if self._prefix is None:
            return str(self.model_path)
        import onnx

        prefix, wanted = self._prefix
        try:
            model = onnx.load(str(self.model_path))
        except Exception:  # not an ONNX file: let ONNX Runtime say so, as without the prefix
            return str(self.model_path)
        name = wanted or (model.graph.input[0].name if len(model.graph.input) == 1 else None)
        if name is None:
            return str(self.model_path)  # Detector refuses the ambiguous input with what to set
        try:
            prefixed = with_uint8_input(model, name, prefix, dequantize=cpu_only)
        except ValueError as exc:
            logger.info("%s: normalizing on the CPU instead of in the model: %s", self.model_path.name, exc)
            return str(self.model_path)
        self._folded = True
        return prefixed.SerializeToString()

    @classmethod
    def support(cls, host: HostFacts) -> BackendSupport:
        providers = tuple(host.onnxruntime_providers)
        if host.onnxruntime is None:
            return BackendSupport(available=False, providers=providers, why_not="onnxruntime is not installed")
        precisions: tuple[str, ...] = ("fp32", "int8 (Q/DQ model)")
        if "CUDAExecutionProvider" in providers or "TensorrtExecutionProvider" in providers:
            precisions += ("fp16",)
        return BackendSupport(available=True, providers=providers, precisions=precisions)

    def _load(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        import onnxruntime as ort

        if not self.model_path.is_file():
            raise ModelLoadError(f"model file {self.model_path} does not exist; check the model.yaml "
                                 "'onnx'/'artifacts' keys or run the step that produces it")
        available = ort.get_available_providers()
        wanted = list(self.options.providers) or [p for p in _PREFERRED if p in available]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ModelLoadError(f"ONNX Runtime providers {missing} are not available here "
                                 f"(available: {available}); install onnxruntime-gpu or drop them")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if self.options.graph_optimization not in levels:
            raise ModelLoadError(f"graph_optimization {self.options.graph_optimization!r}; "
                                 f"expected one of {sorted(levels)}")
        so.graph_optimization_level = levels[self.options.graph_optimization]
        so.log_severity_level = 3
        if not self.options.spin_wait:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chosen: list[Any] = list(wanted)
        device_id = self.options.device_id
        on_gpu = any(p in GPU_PROVIDERS for p in wanted)
        self._places = on_gpu
        if device_id is not None and not on_gpu:
            # ignored, not refused: a model folder is meant to serve on the CPU of a host without a GPU too (the
            # providers default to the best the host has), and the CPU provider has one device: nothing to choose
            logger.warning("%s: device %d ignored: ONNX Runtime runs it on %s, which has no GPU to choose (with "
                           "onnxruntime-gpu's CUDA or TensorRT provider it runs on GPU %d)", self.model_path.name,
                           device_id, "/".join(wanted), device_id)
            device_id = None
        if device_id is not None:
            count = _visible_gpus()
            if count is not None and not 0 <= device_id < count:
                raise ModelLoadError(f"key 'device' is {device_id}, but this process sees {count} GPU(s); list a GPU "
                                     f"index below {count} (indices count the visible GPUs: CUDA_VISIBLE_DEVICES)")
        if "TensorrtExecutionProvider" in wanted or device_id is not None:
            cache = None
            if "TensorrtExecutionProvider" in wanted:
                cache = ort_cache_dir(self.model_path, self.options.precision, ort.__version__, _gpu(device_id))
                cache.mkdir(parents=True, exist_ok=True)
            chosen = provider_options(wanted, self.options.precision, cache, ort.__version__, device_id)
        self._folded = False
        source = self._model_source(cpu_only=wanted == ["CPUExecutionProvider"])
        try:
            with os_thread_named(f"{RUNTIME}-ort"):  # its intra-op workers, started with it, take this name
                self._session = ort.InferenceSession(source, so, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt files
            if device_id is not None and "device" in str(exc).lower():
                raise ModelLoadError(f"ONNX Runtime cannot open {self.model_path.name} on GPU {device_id} (key "
                                     f"'device'): {exc}. Check the GPU index against `nvidia-smi -L` and "
                                     "CUDA_VISIBLE_DEVICES") from exc
            raise ModelLoadError(f"ONNX Runtime cannot load {self.model_path}: {exc}. Is it a valid "
                                 "ONNX file? Re-export it or restore it from the repository.") from exc
        logger.info("loaded %s on %s%s", self.model_path, self._session.get_providers(),
                    " (normalizing in the model: uint8 input)" if self._folded else "")
        return ([_info(a) for a in self._session.get_inputs()],
                [_info(a) for a in self._session.get_outputs()])

    @property
    def places_on_device(self) -> bool:
        return getattr(self, "_places", False)

    def _infer(self, feeds: dict[str, NDArray[np.generic]]) -> dict[str, NDArray[np.generic]]:
        names = [t.name for t in self._outputs]
        return dict(zip(names, self._session.run(names, feeds)))

    def _close(self) -> None:
        del self._session

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    @property
    def runtime_version(self) -> str:
        import onnxruntime as ort

        return str(ort.__version__)

    @property
    def device(self) -> str:
        first = self.providers[0] if self._loaded else ""
        return {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"
                }.get(first, first.removesuffix("ExecutionProvider").lower() or "unknown")
