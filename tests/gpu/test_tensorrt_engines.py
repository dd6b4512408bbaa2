"""Real TensorRT on a real GPU: build the bundled model at each precision, run it, compare with FP32, time it.

Skipped, with the reason, without TensorRT's Python bindings, cuda-python or a GPU. Run with ``make gpu-test``
on a Jetson (JetPack 5.1 / 6.x / 7.x) or in the NGC TensorRT container; ``-s`` prints the throughput table.
"""

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from trtserve.datasets.synthetic import evaluation_set
from trtserve.detector import Detector
from trtserve.repository import ModelRepository
from trtserve.tensorrt.builder import build_engine
from trtserve.tensorrt.keys import BuildSettings
from trtserve.tensorrt.plan import TrtVersion

from ..conftest import ENGINES

trt = pytest.importorskip("tensorrt", reason="TensorRT Python bindings not installed (JetPack or the NGC image)")


def _gpu_ready() -> str | None:
    try:
        from trtserve.tensorrt.cuda import CudaRuntime

        CudaRuntime().device()
    except Exception as exc:
        return f"no usable CUDA device through cuda-python: {exc}"
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_gpu_ready() is not None, reason=str(_gpu_ready()))]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(ENGINES / "shapes", root / "shapes", ignore=shutil.ignore_patterns("cache"))
    return ModelRepository(root)


def _precisions() -> list[str]:
    version = TrtVersion.parse(trt.__version__)
    int8_ok = version.major >= 10 or version.nv_version in (8502, 8602)  # a Q/DQ model or a bundled cache
    return ["fp32", "fp16"] + (["int8"] if int8_ok else [])


@pytest.mark.parametrize("precision", _precisions())
def test_engine_agrees_with_fp32_onnxruntime(repo: ModelRepository, precision: str) -> None:
    config = repo.get("shapes")
    result = build_engine(config, BuildSettings(precision, 8, 8), timing_cache=Path(repo.root) / "timing.cache")
    assert result.plan.is_file()
    frames = [s.image_bgr for s in evaluation_set(32)]
    with Detector.open(config, precision, backend="tensorrt") as engine, Detector.open(config, "fp32") as cpu:
        got, want = engine.detect(frames), cpu.detect(frames)
    agree = total = 0
    for a, b in zip(got, want):
        assert a.detections is not None and b.detections is not None
        total += max(len(a.detections.class_ids), len(b.detections.class_ids))
        agree += sum(int(x == y) for x, y in zip(a.detections.class_ids.tolist(), b.detections.class_ids.tolist()))
    tolerance = {"fp32": 0.99, "fp16": 0.97, "int8": 0.9}[precision]
    assert total == 0 or agree / total >= tolerance, f"{precision}: {agree}/{total} detections agree with FP32"


@pytest.mark.parametrize("precision", _precisions())
def test_throughput_per_batch_size(repo: ModelRepository, precision: str) -> None:
    config = repo.get("shapes")
    build_engine(config, BuildSettings(precision, 8, 8))
    with Detector.open(config, precision, backend="tensorrt") as engine:
        rows = []
        for batch in (1, 2, 4, 8):
            x = np.random.default_rng(0).random((batch, 3, 256, 256), dtype=np.float32)
            engine.backend.infer({"images": x})  # warm-up
            started = time.perf_counter()
            for _ in range(50):
                engine.backend.infer({"images": x})
            rows.append((batch, 50 * batch / (time.perf_counter() - started)))
    table = ", ".join(f"batch {b}: {fps:.0f} frames/s" for b, fps in rows)
    print(f"\nTensorRT {trt.__version__} {precision}: {table}")
    assert rows[-1][1] > rows[0][1]  # batching must pay on a GPU
