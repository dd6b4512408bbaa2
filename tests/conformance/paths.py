"""Run every TensorRT code path of trtserve against one version's contract double, through the recording proxy.

The paths are trtserve's own entry points, not a list of API names: ``build_engine`` for fp32 (with a timing
cache), fp16 (with the DLA where the version has it) and int8 (whatever quantization the version takes), loading
and running each engine with the ``tensorrt`` backend, a parser failure (the error-reporting path), a too-small
workspace, a corrupt plan, the calibrator feeding batches, and a host whose TensorRT cannot start CUDA. What the
recording holds is therefore exactly what trtserve touches on that version.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest

from ..conftest import ENGINES
from ..doubles import tensorrt_double
from ..doubles.gpu_host import install
from .recording import ModuleProxy, Recording, collect_overrides


def _repo(root: Path) -> Any:
    from trtserve.repository import ModelRepository

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copytree(ENGINES / "shapes", root / "shapes", ignore=shutil.ignore_patterns("cache"))
    return ModelRepository(root)


def _proxied(monkeypatch: pytest.MonkeyPatch, version: str, api: dict[str, Any], recording: Recording,
             **kw: Any) -> ModuleType:
    host = install(monkeypatch, version, **kw)
    proxy = ModuleProxy(host.trt, api, recording)
    monkeypatch.setitem(sys.modules, "tensorrt", proxy)
    return host.trt


def exercise(version: str, api: dict[str, Any], workdir: Path) -> tuple[Recording, Any]:
    """Run trtserve's TensorRT paths on the ``version`` double; returns the recording and the double module."""
    from trtserve.backends.tensorrt import TensorRTBackend
    from trtserve.errors import EngineBuildError, ModelLoadError, TensorRTUnavailableError
    from trtserve.tensorrt.builder import build_engine
    from trtserve.tensorrt.keys import BuildSettings, default_settings

    recording = Recording()
    major = int(version.split(".")[0])
    with pytest.MonkeyPatch.context() as mp:
        double = _proxied(mp, version, api, recording, num_dla_cores=2)
        repo = _repo(workdir / "repo")
        config = repo.get("shapes")
        x = np.random.default_rng(0).random((2, 3, 256, 256), dtype=np.float32)
        runs = [(default_settings(config, "fp32"), workdir / "timing.cache"),
                (BuildSettings("fp16", 4, 2, dla_core=0, execution_contexts=2), None),
                (default_settings(config, "int8"), None)]
        for settings, timing_cache in runs:
            result = build_engine(config, settings, timing_cache=timing_cache)
            with TensorRTBackend(result.plan).load() as backend:
                backend.infer({"images": x})
        plan = result.plan

        # a too-small workspace: the failure explains itself from the logger's messages
        with pytest.raises(EngineBuildError, match="workspace"):
            build_engine(config, BuildSettings("fp32", 8, 8, workspace_bytes=1 << 20))
        # a corrupt plan: deserialize_cuda_engine returns None and the logger says why
        plan.write_bytes(b"\x00corrupt" * 8)
        with pytest.raises(ModelLoadError, match="cannot deserialize"):
            TensorRTBackend(plan).load()
        # an op the parser does not know: parser errors are read node by node
        model = onnx.load(str(config.onnx_path))
        model.graph.node[3].op_type, model.graph.node[3].domain = "FancyNMS", "com.example"
        onnx.save(model, str(config.onnx_path))
        with pytest.raises(EngineBuildError, match="FancyNMS"):
            build_engine(config, default_settings(config, "fp32"))

        if major < 11:  # the calibrator feeding device batches, driven as the builder drives it
            from calibrators.tensorrt_calibrator import make_entropy_calibrator

            feeds = [{"images": np.zeros((1, 3, 8, 8), np.float32)} for _ in range(2)]
            proxy = sys.modules["tensorrt"]
            calibrator = make_entropy_calibrator(workdir / "feed.cache", 1, feeds, trt=proxy)  # type: ignore[arg-type]
            tensorrt_double.run_implicit_calibration(calibrator, ["images"])
            calibrator.free()

    with pytest.MonkeyPatch.context() as mp:  # a host whose TensorRT cannot start CUDA: the factories return NULL
        _proxied(mp, version, api, recording, factories_fail=True)
        repo = _repo(workdir / "repo-nogpu")
        config = repo.get("shapes")
        with pytest.raises(TensorRTUnavailableError):
            build_engine(config, default_settings(config, "fp32"))
    collect_overrides(recording)
    return recording, double

