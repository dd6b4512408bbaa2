"""``instances: auto`` on the bundled model (ONNX Runtime): at most two candidate engines open at once, every one
but the kept one closed, and the engine measured at the batch the batcher sends."""

import numpy as np

from trtserve.detector import Detector
from trtserve.repository import ModelRepository
from trtserve.serving import arrangement
from trtserve.serving.settings import serving_backend_options

from ...conftest import ENGINES


def test_auto_keeps_at_most_two_candidates_open_and_measures_at_the_batchers_batch() -> None:
    config = ModelRepository(ENGINES).get("shapes")
    assert config.max_batch_size > 2
    open_now: set[int] = set()
    most_open = 0
    opened: list[Detector] = []
    batches: set[int] = set()

    def open_detector(instances: int, threads: int) -> Detector:
        nonlocal most_open
        detector = Detector.open(config, options=serving_backend_options(instances, threads))
        real_close, real_infer = detector.close, detector.infer_tensor

        def close() -> None:
            open_now.discard(id(detector))
            real_close()

        def infer_tensor(tensor: np.ndarray) -> dict[str, np.ndarray]:
            batches.add(int(tensor.shape[0]))
            return real_infer(tensor)

        detector.close, detector.infer_tensor = close, infer_tensor  # type: ignore[method-assign]
        open_now.add(id(detector))
        opened.append(detector)
        most_open = max(most_open, len(open_now))
        return detector

    kept, chosen, measured = arrangement.choose(open_detector, cores=4, seconds=0.05, batch=2)
    try:
        assert [c.instances for c in measured] == [1, 2, 3, 4]
        assert most_open <= 2, most_open
        assert open_now == {id(kept)}  # every other candidate closed
        assert chosen.instances == arrangement._rule(measured) + 1
        assert batches == {2}  # the batcher's max_batch_size, not the model's
        frame = np.zeros((64, 64, 3), np.uint8)
        assert kept.detect([frame])[0].detections is not None  # the kept one is open and runs
    finally:
        kept.close()
