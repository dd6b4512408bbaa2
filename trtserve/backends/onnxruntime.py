"""ONNX Runtime backend: CPU here; CUDA and TensorRT execution providers where onnxruntime-gpu is installed."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trtserve.backends.base import Backend, TensorInfo
from trtserve.errors import ModelLoadError

logger = logging.getLogger(__name__)

_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


def _info(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorInfo(arg.name, np.dtype(_ORT_TYPES.get(arg.type, np.float32)), shape)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

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
        try:
            self._session = ort.InferenceSession(str(self.model_path), so, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt files
            raise ModelLoadError(f"ONNX Runtime cannot load {self.model_path}: {exc}. Is it a valid "
                                 "ONNX file? Re-export it or restore it from the repository.") from exc
        logger.info("loaded %s on %s", self.model_path, self._session.get_providers())
        return ([_info(a) for a in self._session.get_inputs()],
                [_info(a) for a in self._session.get_outputs()])

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
