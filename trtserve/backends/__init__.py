"""Backends by name. A new backend is one new module plus one line here; imports stay lazy."""

from __future__ import annotations

import importlib

from trtserve.backends.base import Backend, BackendOptions, TensorInfo

_BACKENDS = {
    "onnxruntime": "trtserve.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "trtserve.backends.tensorrt:TensorRTBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``; ValueError lists the known names."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {sorted(_BACKENDS)}")
    module, cls = _BACKENDS[name].split(":")
    found: type[Backend] = getattr(importlib.import_module(module), cls)
    return found


__all__ = ["Backend", "BackendOptions", "TensorInfo", "backend_class"]
