"""The async pipeline on the bundled model: real ONNX Runtime, real batching, per-frame failures."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from trtserve.datasets.synthetic import evaluation_set
from trtserve.detector import Detector
from trtserve.errors import ConfigError, InvalidFrameError
from trtserve.serving.pipeline import BatcherConfig, Pipeline


def test_concurrent_frames_are_batched_and_match_the_detector(shapes: Detector) -> None:
    scenes = list(evaluation_set(12))

    async def main() -> list:
        with ThreadPoolExecutor(2) as pool:
            pipeline = Pipeline(shapes, pool, BatcherConfig(max_batch_size=8, max_queue_delay_ms=20))
            await pipeline.start()
            outcomes = await asyncio.gather(*(pipeline.detect(s.image_bgr) for s in scenes))
            await pipeline.stop()
            assert pipeline.batcher.stats.mean_batch_size > 1
            return outcomes

    outcomes = asyncio.run(main())
    direct = shapes.detect([s.image_bgr for s in scenes])
    for outcome, ref, scene in zip(outcomes, direct, scenes):
        assert ref.detections is not None
        np.testing.assert_allclose(outcome.detections.boxes_xyxy, ref.detections.boxes_xyxy, atol=1e-2)
        assert (outcome.frame_width_px, outcome.frame_height_px) == scene.image_bgr.shape[1::-1]
        assert 0 <= outcome.queue_s <= outcome.total_s and outcome.inference_s > 0


def test_bad_frame_fails_alone_and_thresholds_are_per_frame(shapes: Detector) -> None:
    scene = next(s for s in evaluation_set(20) if len(s.class_ids) >= 3)

    async def main() -> list:
        with ThreadPoolExecutor(2) as pool:
            pipeline = Pipeline(shapes, pool, BatcherConfig(max_batch_size=4, max_queue_delay_ms=20))
            await pipeline.start()
            strict = shapes.with_thresholds(score=0.99, max_detections=1)
            results = await asyncio.gather(pipeline.detect(scene.image_bgr), pipeline.detect(b"junk"),
                                           pipeline.detect(scene.image_bgr, strict), return_exceptions=True)
            await pipeline.stop()
            return results

    loose, bad, strict = asyncio.run(main())
    assert isinstance(bad, InvalidFrameError)
    assert len(loose.detections) >= 3 and len(strict.detections) <= 1


def test_batcher_cannot_exceed_the_model(shapes: Detector) -> None:
    with ThreadPoolExecutor(1) as pool, pytest.raises(ConfigError, match="exceeds the model's max_batch_size"):
        Pipeline(shapes, pool, BatcherConfig(max_batch_size=64))
