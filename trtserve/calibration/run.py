"""``trtserve calibrate``: frames from a folder or a video -> calibrators -> artifacts in the model's folder.

Writes, each atomically (a temporary file renamed into place, so an interrupted run leaves the old
artifact or none, never half of one):

* ``model.int8.onnx`` — Q/DQ in the ``onnxruntime`` placement (what the ONNX Runtime backend serves);
* ``model.int8.tensorrt.onnx`` — Q/DQ in the ``tensorrt`` placement (what ``trtserve build`` uses on
  TensorRT 10/11);
* ``calibration.trt<NNNN>.cache`` — one TensorRT calibration cache per ``--trt-version``, and one for each
  version the model folder already had a cache for (rewritten from the new ranges, never left stale);
* ``calibration.report.json`` — method, frames, time, per-tensor ranges, excluded layers, accuracy
  (:class:`~trtserve.calibration.report.CalibrationReport`'s JSON form);

and records them under ``artifacts`` in ``model.yaml`` (other artifacts, such as ``fp16``, are kept).

Where: into the model's folder only with ``overwrite`` when that replaces files already there
(:class:`ArtifactsExistError` names them otherwise), or into ``out_dir``, a copy of the model's folder (its files
hard-linked where the filesystem allows) with the new artifacts, which leaves the model's folder untouched.

Refused, before any frame is read: a model that is already quantized (a QAT or pre-quantized Q/DQ export is
served as INT8 as it is: :class:`AlreadyQuantizedError`); and, after the pass, an INT8 model that would quantize
no weighted layer (:class:`NothingQuantizedError`: it would be FP32 labelled int8).
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
from trtserve.calibration.report import CalibratedTensor, CalibrationArtifacts, CalibrationReport, LayerCount
from trtserve.config import ModelConfig, load_model_config
from trtserve.errors import CalibrationInputError, ConfigError, UsageError
from trtserve.vision.preprocess import Preprocessor

logger = logging.getLogger(__name__)

RECOMMENDED_MIN_FRAMES = 300
QDQ_ORT_FILE = "model.int8.onnx"
QDQ_TRT_FILE = "model.int8.tensorrt.onnx"
REPORT_FILE = "calibration.report.json"
DEFAULT_MAX_MEMORY_MB = 1024.0  # what calibration may hold on top of the runtime and the model (calibrators.memory)


class AlreadyQuantizedError(ConfigError):
    """The model is already quantized (QAT / pre-quantized Q/DQ): there is nothing to calibrate."""


class NothingQuantizedError(ConfigError):
    """Calibration would write an INT8 model that quantizes no weighted layer (FP32 behaviour labelled int8)."""


class ArtifactsExistError(UsageError):
    """Calibrating would replace files that are already there; the message names them and the flags."""


def version_text(nv_version: int) -> str:
    """``8602`` -> ``'8.6.2'``, ``100300`` -> ``'10.3.0'`` (NV_TENSORRT_VERSION: major*1000 up to 8.x, *10000 from
    10)."""
    base = 10000 if nv_version >= 100000 else 1000
    return f"{nv_version // base}.{nv_version % base // 100}.{nv_version % 100}"


def planned_caches(config: ModelConfig, trt_versions: tuple[str, ...]) -> dict[str, str]:
    """TensorRT version (X.Y.Z) -> cache file to write: each ``--trt-version``, and each version the folder
    already has a cache for (``calibration_cache_<N>`` in model.yaml), under its own file name."""
    from calibrators.trt_cache import tensorrt_version_int

    caches = {v: f"calibration.trt{tensorrt_version_int(v)}.cache" for v in trt_versions}
    given = {tensorrt_version_int(v) for v in trt_versions}
    for key, path in config.artifacts.items():
        number = key.rsplit("_", 1)[1] if key.startswith("calibration_cache_") else ""
        if number.isdigit() and int(number) not in given:
            caches[version_text(int(number))] = path.name
    return caches


def files_written(caches: dict[str, str]) -> list[str]:
    """The files a calibration writes into its folder (model.yaml is edited, not replaced)."""
    from trtserve.calibration.html_report import HTML_REPORT_FILE

    return [QDQ_ORT_FILE, QDQ_TRT_FILE, *caches.values(), REPORT_FILE, HTML_REPORT_FILE]


def check_destination(config: ModelConfig, out_dir: Path | None, files: list[str], overwrite: bool) -> None:
    """ArtifactsExistError unless writing ``files`` replaces nothing, or ``overwrite`` says it may."""
    if overwrite:
        return
    if out_dir is not None and not _same_folder(out_dir, config.directory):
        held = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
        if held:
            listed = ", ".join(held[:6]) + (f" and {len(held) - 6} more" if len(held) > 6 else "")
            raise ArtifactsExistError(f"--out {out_dir}: the folder is not empty ({listed}); choose an empty or new "
                                      "folder, or pass --overwrite to replace what is there")
        if out_dir.exists() and not out_dir.is_dir():
            raise ArtifactsExistError(f"--out {out_dir}: not a folder")
        return
    existing = [f for f in files if (config.directory / f).exists()]
    if existing:
        raise ArtifactsExistError(
            f"calibrating {config.name} would replace {', '.join(existing)} in {config.directory}; pass --overwrite "
            "to replace them, or --out DIR to write a calibrated copy of the model folder there")


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def copy_model_folder(config: ModelConfig, out_dir: Path, skip: list[str]) -> ModelConfig:
    """``config``'s folder (its files, not subfolders or hidden files) in ``out_dir``, hard-linked where possible
    (calibration replaces files, it never edits one in place), except ``skip``; model.yaml is copied."""
    import os
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    source_yaml = config.source_file or config.directory / "model.yaml"
    for path in config.directory.iterdir():
        if not path.is_file() or path.name.startswith(".") or path.name in skip:
            continue
        target = out_dir / path.name
        target.unlink(missing_ok=True)
        if path.name == source_yaml.name:
            shutil.copy2(path, target)
            continue
        try:
            os.link(path.resolve(), target)
        except OSError:
            shutil.copy2(path, target)
    return load_model_config(out_dir / source_yaml.name)


def check_not_quantized(config: ModelConfig, qdq_nodes: int = 0, integer_nodes: int = 0) -> None:
    """AlreadyQuantizedError for a model folder whose ONNX is already quantized (the repository marks a Q/DQ
    'onnx:' as ``prequantized``; ``qdq_nodes`` / ``integer_nodes`` count what the loaded model holds)."""
    prequantized = config.prequantized
    if prequantized is None and not qdq_nodes and not integer_nodes:
        return
    source = prequantized or config.onnx_path
    counts = [f"{n} {what}" for n, what in ((qdq_nodes, "QuantizeLinear/DequantizeLinear nodes"),
                                            (integer_nodes, "integer-only operators")) if n]
    found = ", ".join(counts) or "QuantizeLinear/DequantizeLinear nodes"
    raise AlreadyQuantizedError(
        f"{config.name}: {source.name} is already quantized ({found}: a QAT or pre-quantized export); it is served "
        "as INT8 as it is, with an FP32 shadow made by folding its Q/DQ away, so there is nothing to calibrate. To "
        "calibrate with trtserve instead, point 'onnx:' in model.yaml at the model's FP32 export")


def weighted_layer_count(model: Any) -> int:
    """Conv/ConvTranspose/Gemm/MatMul nodes with constant weights (the layers INT8 can quantize)."""
    from calibrators.graph import WEIGHTED_OPS

    inits = {i.name for i in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits)


def check_quantizes_something(config: ModelConfig, model: Any, weighted_quantized: int) -> None:
    """NothingQuantizedError for an INT8 model that would quantize no weighted layer."""
    if weighted_quantized:
        return
    total = weighted_layer_count(model)
    why = (f"all {total} weighted layers are kept float (by the detection head, quantization.exclude_nodes / "
           "exclude_op_types in model.yaml, or --auto-exclude / --method auto keeping layers float until INT8 agrees "
           "with FP32): drop some exclusions, calibrate on more frames, or pass --method entropy" if total else
           "the model has no Conv, ConvTranspose, Gemm or MatMul with constant weights (weights computed at run "
           "time are not quantized): export the model with its weights as initializers or Constant nodes")
    raise NothingQuantizedError(f"{config.name}: calibration would quantize no weighted layer, so its 'int8' model "
                                f"would run FP32 arithmetic labelled int8; nothing was written. Why: {why}")


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


AUTO_EXCLUDE_FRAMES = 64  # calibration frames kept in memory to score sensitivity (and the auto method's choice)
AUTO_TARGET_AGREEMENT = 0.97  # the auto method's target without --target-agreement (as the CLI's default)


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


def run_calibration(config: ModelConfig, source: FrameSource, method: str = "auto", batch: int | None = None,
                    percentile: float = 99.99, trt_versions: tuple[str, ...] = (), progress: bool = True,
                    evaluate_images: int = 0, auto_exclude_target: float | None = None,
                    out_dir: Path | None = None, overwrite: bool = False,
                    max_memory_mb: float | None = DEFAULT_MAX_MEMORY_MB) -> CalibrationReport:
    """Calibrate ``config``'s FP32 model on ``source`` and write every artifact; returns the report.

    ``out_dir``: write a calibrated copy of the model's folder there instead (see the module); ``overwrite``: allow
    replacing files already there. ``max_memory_mb``: what the activations held at once may take (None: no bound;
    the report's ``memory`` has the plan and the measured peak).

    The report is also written, as JSON, to ``calibration.report.json`` in the model's folder. With
    ``evaluate_images`` > 0 it carries the FP32 vs INT8 comparison on that many held-out images.

    With ``auto_exclude_target`` the most sensitive layers are kept float until INT8 agrees with FP32 at
    least that much on the first calibration frames (see :mod:`calibrators.sensitivity`). ``method="auto"``
    (the default) measures that agreement for entropy's ranges, then percentile's, keeps the first that reaches
    ``auto_exclude_target`` (default :data:`AUTO_TARGET_AGREEMENT`) and falls back to keeping layers float; the
    report's ``method_choice`` says what it chose and why.
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
    check_not_quantized(config)
    from calibrators.fold import count_qdq, integer_only_nodes

    proto = prepare_model(config.onnx_path)
    check_not_quantized(config, count_qdq(proto), len(integer_only_nodes(proto.graph.node)))
    caches_to_write = planned_caches(config, trt_versions)
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
    check_destination(config, out_dir, files_written(caches_to_write), overwrite)  # before reading a frame
    kept: list[dict[str, NDArray[np.floating]]] = []

    def keep_some(feeds: Iterator[dict[str, NDArray[np.floating]]]) -> Iterator[dict[str, NDArray[np.floating]]]:
        for feed in feeds:
            if (auto_exclude_target is not None or method == "auto") and sum(
                    len(f[input_name]) for f in kept) < AUTO_EXCLUDE_FRAMES:
                kept.append(feed)
            yield feed

    try:
        # the onnxruntime placement's tensors are a superset of tensorrt's: one pass serves both writers
        result = calibrate(proto, keep_some(batched_feeds(source, preprocessor, input_name, batch, fixed is not None)),
                           method, percentile, profile="onnxruntime", on_batch=on_batch,
                           max_memory_bytes=None if max_memory_mb is None else int(max_memory_mb * 2**20),
                           **exclusions)
    except ValueError as exc:
        if source.used == 0 and source.skipped:
            raise CalibrationInputError(f"none of the {source.skipped} images could be read") from None
        raise CalibrationInputError(str(exc)) from None
    finally:
        bar.close()
    if source.used < RECOMMENDED_MIN_FRAMES:
        logger.warning("calibrated on %d frames; %d or more representative frames are recommended, fewer "
                       "can compress confidences or empty the outputs", source.used, RECOMMENDED_MIN_FRAMES)
    amax, nonneg = result.amax(), result.nonnegative()
    auto: dict[str, object] | None = None
    extra_float: tuple[str, ...] = ()
    choice = None
    if method == "auto":  # entropy, else percentile, else the better one with layers kept float (a measured choice)
        from calibrators.sensitivity import choose_ranges, cosine_agreement

        score = detection_agreement(config) if config.head.type != "raw" else cosine_agreement
        choice = choose_ranges(proto, result, kept, score, auto_exclude_target or AUTO_TARGET_AGREEMENT,
                               q.keep_head_float, q.exclude_nodes, q.exclude_op_types)
        amax, extra_float = choice.amax, choice.excluded
        auto = choice.auto_exclude.as_dict() if choice.auto_exclude is not None else None
        logger.info("auto: %s", choice.reason)
    elif auto_exclude_target is not None:
        from calibrators.sensitivity import auto_exclude, cosine_agreement

        score = detection_agreement(config) if config.head.type != "raw" else cosine_agreement
        found = auto_exclude(proto, result, kept, score, auto_exclude_target, q.keep_head_float, q.exclude_nodes,
                             q.exclude_op_types)
        extra_float, auto = found.excluded, found.as_dict()
    exclusions["exclude_nodes"] = (*q.exclude_nodes, *extra_float)
    ort_plan = plan_quantization(proto, "onnxruntime", **exclusions)
    ort_model = write_qdq(proto, ort_plan, amax, nonneg, {n: r.min_value for n, r in result.ranges.items()})
    trt_plan = plan_quantization(proto, "tensorrt", **exclusions)
    trt_model = write_qdq(proto, trt_plan, amax)
    check_quantizes_something(config, proto, len(ort_plan.weighted_nodes))
    if out_dir is not None and not _same_folder(out_dir, config.directory):
        config = copy_model_folder(config, out_dir, files_written(caches_to_write))
    directory = config.directory
    atomic_write_bytes(directory / QDQ_ORT_FILE, ort_model.SerializeToString())
    atomic_write_bytes(directory / QDQ_TRT_FILE, trt_model.SerializeToString())
    entries = {"int8": QDQ_ORT_FILE, "int8_tensorrt": QDQ_TRT_FILE}
    caches: dict[str, str] = {}
    for version, name in caches_to_write.items():
        cache_method = method if method in ("entropy", "minmax") else "entropy"
        cache = make_cache({t: amax[t] for t in trt_plan.activations}, version, cache_method)
        write_cache(cache, directory / name)
        caches[version] = name
        entries[f"calibration_cache_{cache.version_int}"] = name
        if version not in trt_versions:
            logger.warning("rewrote %s for TensorRT %s from the new ranges (the folder had a cache for that version; "
                           "a cache left from the old calibration would disagree with the new Q/DQ models)",
                           name, version)
    for key, path in config.artifacts.items():  # other artifacts (fp16, ...) stay recorded
        if key not in entries and not key.startswith("calibration_cache_") and key not in ("int8", "int8_tensorrt"):
            entries[key] = path.name if path.parent == directory else str(path)
    record_artifacts(config, entries)
    evaluation = (compare_precisions(load_model_config(config.source_file or Path()), evaluate_images)
                  if evaluate_images else None)
    report = CalibrationReport(
        model=config.name, method=method, frames_used=source.used, frames_skipped=source.skipped,
        batches=result.batches, seconds=round(result.seconds, 2),
        onnx_opset=max(o.version for o in ort_model.opset_import if o.domain in ("", "ai.onnx")),
        tensors={name: CalibratedTensor(amax[name], r.max_abs, r.min_value >= 0) for name, r in result.ranges.items()},
        excluded=ort_plan.reasons, auto_exclude=auto,
        method_choice=choice.as_dict() if choice is not None else None,
        weighted_layers=LayerCount.of(proto, ort_plan),
        artifacts=CalibrationArtifacts(QDQ_ORT_FILE, QDQ_TRT_FILE, caches), evaluation=evaluation,
        histograms=result.histograms,
        memory=result.memory.as_dict() if result.memory is not None else None)
    atomic_write_bytes(directory / REPORT_FILE, (json.dumps(report.as_dict(), indent=2) + "\n").encode())
    from trtserve.calibration.html_report import HTML_REPORT_FILE, write_calibration_html

    write_calibration_html(directory / HTML_REPORT_FILE, report)  # the same report to look at, beside the JSON
    return report

