"""``--auto-exclude``: keep in float the fewest weighted layers that bring INT8 to a target agreement.

1. Score the fully quantized model against FP32 on a few calibration batches with a caller-given
   agreement function (for detectors: F1 of decoded detections; for raw outputs: cosine similarity).
2. Leave-one-out sensitivity: for each quantized weighted layer, the agreement gained when that layer
   alone stays float.
3. Greedily keep layers in float, most sensitive first, until the target is met (or nothing is left).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from numpy.typing import NDArray

from calibrators.calibrate import CalibrationResult, Feed
from calibrators.graph import plan_quantization
from calibrators.qdq import write_qdq

logger = logging.getLogger(__name__)

Agreement = Callable[[list[NDArray[np.float32]], list[NDArray[np.float32]]], float]


@dataclass(frozen=True)
class AutoExcludeResult:
    target: float
    agreement_before: float
    agreement_after: float
    excluded: tuple[str, ...]
    sensitivity: dict[str, float] = field(default_factory=dict)  # node -> agreement gained alone

    def as_dict(self) -> dict[str, object]:
        return {"target": self.target, "agreement_before": round(self.agreement_before, 4),
                "agreement_after": round(self.agreement_after, 4),
                "excluded": [{"node": n, "agreement_gain_alone": round(self.sensitivity.get(n, 0.0), 4)}
                             for n in self.excluded]}


def _run(model: onnx.ModelProto, batches: Sequence[Feed]) -> list[NDArray[np.float32]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(session.run(None, dict(b))[0], np.float32) for b in batches]


def cosine_agreement(reference: list[NDArray[np.float32]], candidate: list[NDArray[np.float32]]) -> float:
    """Mean cosine similarity of raw outputs (the agreement for models without a detector head)."""
    sims = [float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
            for a, b in zip(reference, candidate)]
    return float(np.mean(sims))


def auto_exclude(model: onnx.ModelProto, result: CalibrationResult, batches: Sequence[Feed], agreement: Agreement,
                 target: float, keep_head_float: bool = True, exclude_nodes: Sequence[str] = (),
                 exclude_op_types: Sequence[str] = ()) -> AutoExcludeResult:
    """Find the layers to keep float; ``model`` is the prepared FP32 model ``result`` was calibrated on.

    The exclusion arguments are the baseline (as for :func:`calibrators.graph.plan_quantization`).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target agreement {target} is outside (0, 1]")
    amax, nonneg = result.amax(), result.nonnegative()
    reference = _run(model, batches)

    def score(excluded: Sequence[str]) -> float:
        plan = plan_quantization(model, "onnxruntime", keep_head_float, [*exclude_nodes, *excluded], exclude_op_types)
        return agreement(reference, _run(write_qdq(model, plan, amax, nonneg), batches))

    before = score(())
    if before >= target:
        return AutoExcludeResult(target, before, before, ())
    candidates = list(plan_quantization(model, "onnxruntime", keep_head_float, exclude_nodes,
                                        exclude_op_types).weighted_nodes)
    gains = {node: score([node]) - before for node in candidates}
    order = sorted(candidates, key=lambda n: -gains[n])
    chosen: list[str] = []
    current = before
    for node in order:
        chosen.append(node)
        current = score(chosen)
        logger.info("keeping %s float: agreement %.4f (target %.4f)", node, current, target)
        if current >= target:
            break
    if current < target:
        logger.warning("auto-exclude: agreement %.4f stays below the target %.4f even with every layer float",
                       current, target)
    return AutoExcludeResult(target, before, current, tuple(chosen), gains)
