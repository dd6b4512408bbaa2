"""Paths that need an NVIDIA GPU. Skipped elsewhere, with the reason; run them on a GPU host with
``pip install -e '.[dev,gpu]'`` (and TensorRT from JetPack / the NGC image) then ``pytest tests/gpu``."""

import numpy as np
import pytest

from trtserve.backends.base import BackendOptions
from trtserve.datasets.synthetic import evaluation_set
from trtserve.detector import Detector

ort = pytest.importorskip("onnxruntime")
HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


def _tensorrt():  # type: ignore[no-untyped-def]
    try:
        import tensorrt
    except ImportError:
        pytest.skip("TensorRT Python bindings not installed (they come with JetPack or the NGC image)")
    return tensorrt


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_EP, reason="onnxruntime-gpu with CUDAExecutionProvider not available")
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_cuda_execution_provider_agrees_with_cpu(repository, precision: str) -> None:  # type: ignore[no-untyped-def]
    config = repository.get("shapes")
    frames = [s.image_bgr for s in evaluation_set(16)]
    with Detector.open(config, precision, options=BackendOptions(providers=("CPUExecutionProvider",))) as cpu, \
            Detector.open(config, precision, options=BackendOptions(providers=("CUDAExecutionProvider",))) as gpu:
        for a, b in zip(cpu.detect(frames), gpu.detect(frames)):
            assert a.detections is not None and b.detections is not None
            assert a.detections.class_ids.tolist() == b.detections.class_ids.tolist()
            np.testing.assert_allclose(a.detections.boxes_xyxy, b.detections.boxes_xyxy, atol=1.0)


@pytest.mark.gpu
def test_entropy_calibrator_feeds_device_batches(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trt = _tensorrt()
    pytest.importorskip("cuda", reason="cuda-python not installed")
    from calibrators.tensorrt_calibrator import make_entropy_calibrator

    feeds = [{"images": np.zeros((2, 3, 8, 8), np.float32)} for _ in range(3)]
    calibrator = make_entropy_calibrator(tmp_path / "c.cache", 2, feeds, trt=trt)
    pointers = [calibrator.get_batch(["images"]) for _ in range(4)]
    assert all(isinstance(p[0], int) and p[0] for p in pointers[:3]) and pointers[3] is None
    calibrator.free()
