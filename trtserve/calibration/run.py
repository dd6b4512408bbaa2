"""``trtserve calibrate``: frames from a folder or a video -> calibrators -> artifacts in the model's folder.

Writes, each atomically (a temporary file renamed into place, so an interrupted run leaves the old
artifact or none, never half of one):

* ``model.int8.onnx`` — Q/DQ in the ``onnxruntime`` placement (what the ONNX Runtime backend serves);
* ``model.int8.tensorrt.onnx`` — Q/DQ in the ``tensorrt`` placement (what ``trtserve build`` uses on
  TensorRT 10/11);
* ``calibration.trt<NNNN>.cache`` — one TensorRT calibration cache per ``--trt-version``;
* ``calibration.report.json`` — method, frames, time, per-tensor ranges, excluded layers, accuracy
  (:class:`~trtserve.calibration.report.CalibrationReport`'s JSON form);

and records them under ``artifacts`` in ``model.yaml``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from calibrators.files import atomic_write_bytes
from trtserve.calibration.compare import compare_precisions
from trtserve.calibration.frames import FrameSource, batched_feeds
from trtserve.calibration.report import CalibratedTensor, CalibrationArtifacts, CalibrationReport
from trtserve.config import ModelConfig, load_model_config
from trtserve.errors import CalibrationInputError, ConfigError
from trtserve.vision.preprocess import Preprocessor

logger = logging.getLogger(__name__)

RECOMMENDED_MIN_FRAMES = 300
QDQ_ORT_FILE = "model.int8.onnx"
QDQ_TRT_FILE = "model.int8.tensorrt.onnx"
REPORT_FILE = "calibration.report.json"


def record_artifacts(config: ModelConfig, entries: dict[str, str]) -> None:
    """Set ``artifacts`` in model.yaml (keeping the rest of the file, comments included), atomically."""
    path = config.source_file
    if path is None:
        raise ConfigError("the model configuration has no source file to record artifacts in")
    text = path.read_text(encoding="utf-8")
    # drop an existing top-level artifacts block (its indented lines), then append the new one
    text = re.sub(r"(?m)^artifacts:.*\n(?:[ \t]+.*\n|\s*\n)*", "", text if text.endswith("\n") else text + "\n")
    block = "artifacts:\n" + "".join(f"  {k}: {v}\n" for k, v in entries.items())
    atomic_write_bytes(path, (text + block).encode("utf-8"))
    load_model_config(path)  # the result must validate; raises naming the key otherwise


AUTO_EXCLUDE_FRAMES = 64  # calibration frames kept in memory to score sensitivity


def detection_agreement(config: ModelConfig) -> Any:
    """Agreement of two lists of raw output batches: F1 at IoU 0.5 of the decoded detections."""
    from trtserve.heads.base import Thresholds
    from trtserve.heads.factory import make_head
    from trtserve.vision.letterbox import Letterbox
    from trtserve.vision.matching import MatchCounts, match

    hw = (config.input.height_px, config.input.width_px)
    identity = Letterbox.plan(hw, hw)  # compare in model-input pixels
    thresholds = Thresholds.from_spec(config.head)

    def agreement(reference: list[NDArray[np.float32]], candidate: list[NDArray[np.float32]]) -> float:
        head = make_head(config.head, len(config.class_names), [tuple(reference[0].shape)])
        total = MatchCounts()
        for ref, cand in zip(reference, candidate):
            geos = [identity] * ref.shape[0]
            for a, b in zip(head.decode({"o": cand}, geos, thresholds), head.decode({"o": ref}, geos, thresholds)):
                total += match(a.boxes_xyxy, a.scores, a.class_ids, b.boxes_xyxy, b.class_ids)
        return total.f1

    return agreement


def run_calibration(config: ModelConfig, source: FrameSource, method: str = "entropy", batch: int | None = None,
                    percentile: float = 99.99, trt_versions: tuple[str, ...] = (), progress: bool = True,
                    evaluate_images: int = 0, auto_exclude_target: float | None = None) -> CalibrationReport:
    """Calibrate ``config``'s FP32 model on ``source`` and write every artifact; returns the report.

    The report is also written, as JSON, to ``calibration.report.json`` in the model's folder. With
    ``evaluate_images`` > 0 it carries the FP32 vs INT8 comparison on that many held-out images.

    With ``auto_exclude_target`` the most sensitive layers are kept float until INT8 agrees with FP32 at
    least that much on the first calibration frames (see :mod:`calibrators.sensitivity`).
    """
    from tqdm import tqdm

    from calibrators.calibrate import calibrate, prepare_model
    from calibrators.graph import plan_quantization
    from calibrators.qdq import write_qdq
    from calibrators.trt_cache import make_cache, write_cache

    for version in trt_versions:  # fail before the long part
        from calibrators.trt_cache import tensorrt_version_int

        try:
            tensorrt_version_int(version)
        except ValueError as exc:
            raise CalibrationInputError(f"--trt-version: {exc}") from None
    if not config.onnx_path.is_file():
        raise ConfigError(f"{config.source_file}: the FP32 model {config.onnx_path} does not exist")
    proto = prepare_model(config.onnx_path)
    input_name = config.input.name or proto.graph.input[0].name
    graph_input = next((i for i in proto.graph.input if i.name == input_name), None)
    if graph_input is None:
        raise ConfigError(f"{config.source_file}: key 'input.name' is {input_name!r}; the model's inputs are "
                          f"{[i.name for i in proto.graph.input]}")
    fixed = graph_input.type.tensor_type.shape.dim[0].dim_value or None
    if batch is not None and fixed is not None and batch != fixed:
        raise CalibrationInputError(f"--batch {batch}: the model's batch dimension is fixed at {fixed}; "
                                    f"drop --batch or pass --batch {fixed}")
    batch = fixed or batch or 8
    preprocessor = Preprocessor(config.input)
    bar = tqdm(total=source.expected, unit="frame", desc=f"calibrating {config.name}", disable=not progress)
    last = [0]

    def on_batch(samples: int) -> None:
        bar.update(samples - last[0])
        last[0] = samples

    q = config.quantization
    exclusions: dict[str, Any] = {"keep_head_float": q.keep_head_float, "exclude_op_types": q.exclude_op_types}
    try:  # check the configured exclusions before the long pass
        plan_quantization(proto, "tensorrt", q.keep_head_float, q.exclude_nodes, q.exclude_op_types)
    except ValueError as exc:
        raise ConfigError(f"{config.source_file}: key 'quantization.exclude_nodes': {exc}") from None
    kept: list[dict[str, NDArray[np.floating]]] = []

    def keep_some(feeds: Iterator[dict[str, NDArray[np.floating]]]) -> Iterator[dict[str, NDArray[np.floating]]]:
        for feed in feeds:
            if auto_exclude_target is not None and sum(len(f[input_name]) for f in kept) < AUTO_EXCLUDE_FRAMES:
                kept.append(feed)
            yield feed

    try:
        # the onnxruntime placement's tensors are a superset of tensorrt's: one pass serves both writers
        result = calibrate(proto, keep_some(batched_feeds(source, preprocessor, input_name, batch, fixed is not None)),
                           method, percentile, profile="onnxruntime", on_batch=on_batch, **exclusions)
    except ValueError as exc:
        if source.used == 0 and source.skipped:
            raise CalibrationInputError(f"none of the {source.skipped} images could be read") from None
        raise CalibrationInputError(str(exc)) from None
    finally:
        bar.close()
    if source.used < RECOMMENDED_MIN_FRAMES:
        logger.warning("calibrated on %d frames; %d or more representative frames are recommended, fewer "
                       "can compress confidences or empty the outputs", source.used, RECOMMENDED_MIN_FRAMES)
    directory = config.directory
    amax, nonneg = result.amax(), result.nonnegative()
    auto: dict[str, object] | None = None
    extra_float: tuple[str, ...] = ()
    if auto_exclude_target is not None:
        from calibrators.sensitivity import auto_exclude, cosine_agreement

        score = detection_agreement(config) if config.head.type != "raw" else cosine_agreement
        found = auto_exclude(proto, result, kept, score, auto_exclude_target, q.keep_head_float, q.exclude_nodes,
                             q.exclude_op_types)
        extra_float, auto = found.excluded, found.as_dict()
    exclusions["exclude_nodes"] = (*q.exclude_nodes, *extra_float)
    ort_plan = plan_quantization(proto, "onnxruntime", **exclusions)
    ort_model = write_qdq(proto, ort_plan, amax, nonneg)
    trt_plan = plan_quantization(proto, "tensorrt", **exclusions)
    trt_model = write_qdq(proto, trt_plan, amax)
    atomic_write_bytes(directory / QDQ_ORT_FILE, ort_model.SerializeToString())
    atomic_write_bytes(directory / QDQ_TRT_FILE, trt_model.SerializeToString())
    entries = {"int8": QDQ_ORT_FILE, "int8_tensorrt": QDQ_TRT_FILE}
    caches: dict[str, str] = {}
    for version in trt_versions:
        cache_method = method if method in ("entropy", "minmax") else "entropy"
        cache = make_cache({t: amax[t] for t in trt_plan.activations}, version, cache_method)
        name = f"calibration.trt{cache.version_int}.cache"
        write_cache(cache, directory / name)
        caches[version] = name
        entries[f"calibration_cache_{cache.version_int}"] = name
    record_artifacts(config, entries)
    evaluation = (compare_precisions(load_model_config(config.source_file or Path()), evaluate_images)
                  if evaluate_images else None)
    report = CalibrationReport(
        model=config.name, method=method, frames_used=source.used, frames_skipped=source.skipped,
        batches=result.batches, seconds=round(result.seconds, 2),
        onnx_opset=max(o.version for o in ort_model.opset_import if o.domain in ("", "ai.onnx")),
        tensors={name: CalibratedTensor(r.amax, r.max_abs, r.min_value >= 0) for name, r in result.ranges.items()},
        excluded=ort_plan.reasons, auto_exclude=auto,
        artifacts=CalibrationArtifacts(QDQ_ORT_FILE, QDQ_TRT_FILE, caches), evaluation=evaluation)
    atomic_write_bytes(directory / REPORT_FILE, (json.dumps(report.as_dict(), indent=2) + "\n").encode())
    return report

