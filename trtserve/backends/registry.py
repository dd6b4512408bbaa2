"""Backends by name (``backend:`` in model.yaml, ``drift.shadow_backend``): config validation, model loading and
``trtserve doctor`` read this table. A new backend is one file in ``trtserve/backends/`` plus one line here; its
module must import its runtime lazily (in ``load``), so that listing backends loads none."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trtserve.registry import Registry

if TYPE_CHECKING:
    from trtserve.backends.base import Backend

BACKENDS: Registry[Backend] = Registry("backend")
BACKENDS.register("onnxruntime", "trtserve.backends.onnxruntime:OnnxRuntimeBackend")
BACKENDS.register("tensorrt", "trtserve.backends.tensorrt:TensorRTBackend")


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``; ConfigError lists the known names."""
    return BACKENDS.load(name)
