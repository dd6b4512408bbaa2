"""Drift per output tensor: a raw-output model's agreement with its FP32 shadow is exported per output
(``trtserve_drift_window_output_cosine_similarity{output=...}``), so one badly quantized output is seen; the detection
F1 gauge carries F1 only. Frames of a detector's raw interface (``<model>.raw``) are shadowed too, beside its detector
frames. A real server in this process, real ONNX Runtime, the shadow in its own process, /metrics read over HTTP."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from trtserve.config import DriftSpec
from trtserve.datasets.synthetic import video_frames
from trtserve.detector import Detector
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.server import Server, ServerSettings

from ..servers import with_server
from ..serving.raw_models import OUTPUTS, cosine, make_twins, run, tensors
from .test_drift import copy_model, scrape, value

SHADOW_ALL = DriftSpec(enabled=True, sample_rate=1.0, max_pending=64, min_window_frames=4, agreement_threshold=0.97)


def infer_request(model: str, batch: np.ndarray, name: str = "images") -> kpb.ModelInferRequest:
    return kpb.ModelInferRequest(
        model_name=model, inputs=[kpb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32",
                                                                          shape=list(batch.shape))],
        raw_input_contents=[np.ascontiguousarray(batch).tobytes()])


async def serve(repository: ModelRepository, models: tuple[str, ...], test) -> None:  # type: ignore[no-untyped-def]
    settings = ServerSettings(models=models, grpc_port=0, metrics_port=0, precision="int8", drift=SHADOW_ALL,
                              batcher=BatcherConfig(max_batch_size=8, max_queue_delay_ms=5))
    await with_server(settings, repository, test)


def test_one_badly_quantized_output_is_seen_per_output(tmp_path: Path) -> None:
    folder = make_twins(tmp_path)
    batches = [tensors(4, seed) for seed in range(3)]
    # what the drift monitor must find: per output, the mean over frames of served-vs-shadow cosine similarity
    served = [run(folder / "model.int8.onnx", b) for b in batches]
    shadow = [run(folder / "model.onnx", b) for b in batches]
    want = {k: float(np.mean([cosine(s[k][i], f[k][i]) for s, f in zip(served, shadow) for i in range(4)]))
            for k in OUTPUTS}
    # the fixture's premise: one output exact, the other below the threshold
    assert want["pooled"] == pytest.approx(1.0, abs=1e-6) and want["features"] < SHADOW_ALL.agreement_threshold

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        for batch in batches:  # through the raw interface: the exact input tensors above
            await stub.ModelInfer(infer_request("twins.raw", batch))
        monitor = server.pipelines["twins"].drift
        assert monitor is not None and monitor.wait_idle()
        m = scrape(server.metrics_port or 0)
        labels = {"model": "twins", "precision": "int8"}
        for output in OUTPUTS:
            got = value(m, "trtserve_drift_window_output_cosine_similarity", output=output, **labels)
            assert got == pytest.approx(want[output], abs=1e-5), output
        assert math.isnan(value(m, "trtserve_drift_window_agreement_f1", **labels))  # F1 only: no detections here
        assert value(m, "trtserve_drift_samples_total", **labels) == 12
        summary = monitor.summary()
        # the verdict follows the worst output, not the mean (which would hide it)
        assert summary.agreement_f1 == pytest.approx(want["features"], abs=1e-5) and summary.below_threshold

    asyncio.run(serve(ModelRepository(tmp_path), ("twins",), test))


def test_raw_interface_frames_are_shadowed_beside_the_detectors(tmp_path: Path, shapes: Detector) -> None:
    copy_model(tmp_path)
    scenes = [f.image_bgr for f in video_frames(8)]
    jpegs = [cv2.imencode(".jpg", s)[1].tobytes() for s in scenes]
    preprocessed = np.ascontiguousarray(shapes.preprocessor.to_input([shapes.letterbox(s)[0] for s in scenes]))

    async def test(server: Server, channel: grpc.aio.Channel) -> None:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        image = kpb.ModelInferRequest(model_name="shapes", inputs=[kpb.ModelInferRequest.InferInputTensor(
            name="IMAGE", datatype="BYTES", shape=[len(jpegs), 1], contents=kpb.InferTensorContents(
                bytes_contents=jpegs))])
        await asyncio.gather(stub.ModelInfer(image), stub.ModelInfer(infer_request("shapes.raw", preprocessed)))
        monitor = server.pipelines["shapes"].drift
        assert monitor is not None and monitor.wait_idle()
        m = scrape(server.metrics_port or 0)
        labels = {"model": "shapes", "precision": "int8"}
        assert value(m, "trtserve_drift_samples_total", **labels) == 16
        assert value(m, "trtserve_drift_agreement_f1_count", **labels) == 8  # the detector's frames: matched
        assert value(m, "trtserve_drift_window_agreement_f1", **labels) >= 0.9
        assert value(m, "trtserve_drift_output_cosine_similarity_count", **labels) == 8  # the tensors: compared
        assert value(m, "trtserve_drift_window_output_cosine_similarity", output="output0", **labels) > 0.99
        assert value(m, "trtserve_frames_total", model="shapes.raw", outcome="ok") == 8

    asyncio.run(serve(ModelRepository(tmp_path / "engines"), ("shapes",), test))


