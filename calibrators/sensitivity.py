"""``--auto-exclude``: keep in float the fewest weighted layers that bring INT8 to a target agreement.

1. Score the fully quantized model against FP32 on a few calibration batches with a caller-given
   agreement function (for detectors: F1 of decoded detections; for raw outputs: cosine similarity).
2. Leave-one-out sensitivity: for each quantized weighted layer, the agreement gained when that layer
   alone stays float.
3. Greedily keep layers in float, most sensitive first, until the target is met (or nothing is left).

:func:`choose_ranges` is the ``auto`` method (``trtserve calibrate``'s default): the same check decides between
the candidate methods' ranges first -- entropy, percentile (99.99), percentile 99.999, minmax: from the most
clipping to none -- and keeps the first that meets the target;
only when none does is the better one kept with the fewest layers float that bring it to the target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
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


def minimum_of(result: CalibrationResult) -> dict[str, float]:
    """The smallest value each calibrated tensor took (for the onnxruntime placement's uint8 ranges)."""
    return {name: r.min_value for name, r in result.ranges.items()}


def auto_exclude(model: onnx.ModelProto, result: CalibrationResult, batches: Sequence[Feed], agreement: Agreement,
                 target: float, keep_head_float: bool = True, exclude_nodes: Sequence[str] = (),
                 exclude_op_types: Sequence[str] = (), amax: Mapping[str, float] | None = None,
                 reference: list[NDArray[np.float32]] | None = None) -> AutoExcludeResult:
    """Find the layers to keep float; ``model`` is the prepared FP32 model ``result`` was calibrated on.

    The exclusion arguments are the baseline (as for :func:`calibrators.graph.plan_quantization`). ``amax``
    replaces ``result``'s ranges (e.g. another method's); ``reference`` is FP32's output on ``batches`` when
    already computed.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target agreement {target} is outside (0, 1]")
    ranges = dict(result.amax() if amax is None else amax)
    nonneg, minimum = result.nonnegative(), minimum_of(result)
    if reference is None:
        reference = _run(model, batches)

    def score(excluded: Sequence[str]) -> float:
        plan = plan_quantization(model, "onnxruntime", keep_head_float, [*exclude_nodes, *excluded], exclude_op_types)
        return agreement(reference, _run(write_qdq(model, plan, ranges, nonneg, minimum), batches))

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


@dataclass(frozen=True)
class RangeChoice:
    """What the ``auto`` method chose, and why: the agreement with FP32 of each candidate tried."""

    method: str  # the candidate whose ranges were kept
    target: float
    frames: int  # calibration frames the agreement was measured on
    agreement: dict[str, float]  # candidate tried -> its INT8 agreement with FP32 (all layers quantized)
    amax: dict[str, float]  # the kept ranges
    auto_exclude: AutoExcludeResult | None = None  # when no candidate met the target
    reason: str = ""

    @property
    def excluded(self) -> tuple[str, ...]:
        return self.auto_exclude.excluded if self.auto_exclude is not None else ()

    @property
    def agreement_after(self) -> float:
        return self.auto_exclude.agreement_after if self.auto_exclude is not None else self.agreement[self.method]

    def as_dict(self) -> dict[str, object]:
        return {"chosen": self.method, "target": self.target, "frames": self.frames,
                "agreement": {m: round(v, 4) for m, v in self.agreement.items()},
                "agreement_after": round(self.agreement_after, 4), "reason": self.reason,
                "auto_exclude": self.auto_exclude.as_dict() if self.auto_exclude is not None else None}


def choose_ranges(model: onnx.ModelProto, result: CalibrationResult, batches: Sequence[Feed], agreement: Agreement,
                  target: float, keep_head_float: bool = True, exclude_nodes: Sequence[str] = (),
                  exclude_op_types: Sequence[str] = ()) -> RangeChoice:
    """The ``auto`` method: the first candidate (:data:`calibrators.methods.AUTO_CANDIDATES`) whose INT8
    model (onnxruntime placement) agrees with FP32 on ``batches`` at least ``target``; when none does, the best
    of them with the fewest most-sensitive layers kept float (:func:`auto_exclude`).

    ``result`` must come from ``calibrate(..., method="auto")`` (it holds every candidate's ranges).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target agreement {target} is outside (0, 1]")
    if not result.alternatives:
        raise ValueError("choose_ranges needs a calibration result of method 'auto' (every candidate's ranges)")
    reference = _run(model, batches)
    frames = sum(int(next(iter(b.values())).shape[0]) for b in batches)
    plan = plan_quantization(model, "onnxruntime", keep_head_float, exclude_nodes, exclude_op_types)
    nonneg, minimum = result.nonnegative(), minimum_of(result)
    tried: dict[str, float] = {}
    ranges: dict[str, dict[str, float]] = {}
    for method in next(iter(result.alternatives.values())):  # the candidates, in AUTO_CANDIDATES' order
        ranges[method] = {name: alt[method] for name, alt in result.alternatives.items()}
        tried[method] = agreement(reference, _run(write_qdq(model, plan, ranges[method], nonneg, minimum), batches))
        logger.info("auto: %s ranges agree with FP32 at %.4f on %d calibration frames (target %.4f)", method,
                    tried[method], frames, target)
        if tried[method] >= target:
            earlier = "".join(f"; {m} reached only {v:.4f}" for m, v in tried.items() if m != method)
            reason = (f"INT8 agreement with FP32 {tried[method]:.4f} >= target {target:.4f} on {frames} calibration "
                      f"frames{earlier}")
            return RangeChoice(method, target, frames, tried, ranges[method], reason=reason)
    best = max(tried, key=lambda m: tried[m])
    found = auto_exclude(model, result, batches, agreement, target, keep_head_float, exclude_nodes, exclude_op_types,
                         amax=ranges[best], reference=reference)
    scores = ", ".join(f"{m} {v:.4f}" for m, v in tried.items())
    reason = (f"no method reached the target {target:.4f} ({scores}): kept {best}'s ranges and "
              f"{len(found.excluded)} more layer(s) float, agreement {found.agreement_after:.4f}")
    return RangeChoice(best, target, frames, tried, ranges[best], found, reason)
