"""The plugin tables are the single source of truth: a head or backend registered at run time (here, by the test)
is accepted by model.yaml validation, built by the detector and listed by ``trtserve doctor``, with no other edit."""

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from trtserve.backends.base import BackendSupport, HostFacts
from trtserve.backends.onnxruntime import OnnxRuntimeBackend
from trtserve.backends.registry import BACKENDS
from trtserve.config import DriftSpec, load_model_config
from trtserve.datasets.synthetic import render_scene
from trtserve.deploy.doctor import diagnose
from trtserve.detector import Detector
from trtserve.errors import ConfigError
from trtserve.heads.registry import HEADS, head_types
from trtserve.heads.yolov8 import YoloV8Head
from trtserve.monitoring.drift import DriftMonitor
from trtserve.monitoring.metrics import Metrics

from .test_config import BUNDLED, write


class TopThreeHead(YoloV8Head):
    """A test-only layout: the YOLOv8 decode, keeping the three best boxes."""

    type: ClassVar[str] = "top_three"
    auto_detect: ClassVar[bool] = False  # it has YOLOv8's layout: auto must keep picking yolov8 alone

    def decode(self, outputs, geometries, thresholds):  # type: ignore[no-untyped-def]
        return [type(d)(d.boxes_xyxy[:3], d.scores[:3], d.class_ids[:3]) for d in super().decode(
            outputs, geometries, thresholds)]


class QuietOnnxRuntime(OnnxRuntimeBackend):
    """A test-only backend: ONNX Runtime under another name, saying it runs FP32 only."""

    name: ClassVar[str] = "quiet_ort"

    @classmethod
    def support(cls, host: HostFacts) -> BackendSupport:
        return BackendSupport(available=True, precisions=("fp32",))


@pytest.fixture
def plugins() -> Iterator[None]:
    HEADS.register("top_three", TopThreeHead)
    BACKENDS.register("quiet_ort", QuietOnnxRuntime)
    yield
    HEADS.unregister("top_three")
    BACKENDS.unregister("quiet_ort")


def bundled_copy(tmp_path: Path, patch: dict) -> Path:
    """The bundled model.yaml with ``patch``, pointing at the bundled ONNX from a scratch folder."""
    return write(tmp_path, {"onnx": str(BUNDLED.parent / "model.onnx"), "artifacts": {}, **patch})


def test_a_registered_head_and_backend_are_accepted_and_run(plugins: None, tmp_path: Path) -> None:
    config = load_model_config(bundled_copy(tmp_path, {"head.type": "top_three", "backend": "quiet_ort"}))
    assert "top_three" in head_types()
    frames = [render_scene(5, i).image_bgr for i in range(2)]
    with Detector.open(config) as detector:
        assert isinstance(detector.head, TopThreeHead) and isinstance(detector.backend, QuietOnnxRuntime)
        got = detector.detect(frames)
    with Detector.open(load_model_config(BUNDLED)) as reference:
        want = reference.detect(frames)
    for g, w in zip(got, want):
        assert g.detections is not None and w.detections is not None
        assert len(g.detections) == min(3, len(w.detections))
        np.testing.assert_allclose(g.detections.boxes_xyxy, w.detections.boxes_xyxy[:3], rtol=1e-5)
    assert diagnose().backends["quiet_ort"] == {"available": True, "precisions": ["fp32"], "why_not": None}


def test_a_registered_backend_runs_as_the_drift_shadow_in_its_own_process(plugins: None) -> None:
    """The shadow process is spawned: it gets the backend class itself, not a name only the server knows."""
    spec = DriftSpec(enabled=True, sample_rate=1.0, shadow_backend="quiet_ort")
    with Detector.open(load_model_config(BUNDLED), "int8") as served:
        monitor = DriftMonitor.open(served, spec, Metrics(process=False))
        try:
            prepared = [served.prepare_letterboxed(render_scene(5, i).image_bgr) for i in range(2)]
            geometries, thresholds = [g for _, g in prepared], [served.thresholds] * 2
            run = served.run_batch([image for image, _ in prepared], geometries, thresholds)
            assert monitor.offer(run, geometries, thresholds) and monitor.wait_idle(60)
            summary = monitor.summary()
        finally:
            monitor.close()
    assert summary.samples == 2 and summary.errors == 0 and summary.agreement_f1 > 0.5


def test_unregistered_names_are_refused_at_config_load_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'head.type' has value 'top_three'; expected one of \['auto'"):
        load_model_config(bundled_copy(tmp_path, {"head.type": "top_three"}))
    with pytest.raises(ConfigError, match=r"key 'backend' has value 'quiet_ort'; expected one of \['onnxruntime'"):
        load_model_config(bundled_copy(tmp_path, {"backend": "quiet_ort"}))
    with pytest.raises(ConfigError, match=r"key 'drift.shadow_backend' has value 'onnx'; expected one of"):
        load_model_config(bundled_copy(tmp_path, {"drift": {"shadow_backend": "onnx"}}))


def test_a_name_cannot_be_registered_twice_and_a_broken_entry_says_why() -> None:
    with pytest.raises(ConfigError, match="head type 'yolov8' is already registered"):
        HEADS.register("yolov8", TopThreeHead)
    HEADS.register("missing", "trtserve.heads.no_such_layout:Head")
    try:
        with pytest.raises(ConfigError, match=r"head type 'missing' is registered as 'trtserve.heads.no_such_layout:"
                                              r"Head', which cannot be imported: No module named"):
            HEADS.load("missing")
    finally:
        HEADS.unregister("missing")
    with pytest.raises(ConfigError, match=r"expected 'package\.module:Class'"):
        BACKENDS.register("dotted", "trtserve.backends.onnxruntime.OnnxRuntimeBackend")
    with pytest.raises(ConfigError, match=r"unknown backend 'tflite'; expected one of \['onnxruntime', 'tensorrt'\]"):
        BACKENDS.load("tflite")
