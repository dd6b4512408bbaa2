"""The FP32 shadow's side of drift monitoring: what runs in the shadow's own process, and the comparisons.

The shadow runs in a process of its own: its Python work (decoding, matching, coverage) never holds the
server's GIL, so a descheduled low-priority shadow cannot stall the serving threads, and a crash of the
shadow cannot take the server down. :func:`shadow_main` is that process's whole life: it opens the shadow
(:func:`shadow_open`), answers on its pipe, then compares each batch the server sends (:func:`shadow_compare`)
until the server says stop or its end of the pipe closes (the server went away), and closes the shadow
(:func:`shadow_close`). :class:`ShadowSetup` is all it gets.

The pipe protocol (pickled tuples): the process first sends ``("ok", ShadowInfo)`` or ``("error", exception)``;
then, for each request ``(tensor, served, geometries, thresholds)``, ``("ok", list[FrameDrift])`` or ``("error",
exception)`` (the request failed, the process goes on); ``None`` asks it to close and exit. ``served`` is the served
model's answer: its detections per frame (a detector), its output tensors for the whole batch (a ``head: raw``
model), or per frame either detections or that frame's output tensors (a detector's batch holding frames of its raw
tensor interface, ``<model>.raw``; their geometries are None). Raw outputs are compared tensor by tensor, and each
output's agreement is kept (:attr:`FrameDrift.output_cosines`), so one badly quantized output is seen as such.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from trtserve.backends.base import Backend, BackendOptions, TensorInfo
from trtserve.config import ModelConfig
from trtserve.detector import infer_padded
from trtserve.heads.base import Head, Thresholds
from trtserve.vision.detections import Detections
from trtserve.vision.letterbox import Letterbox
from trtserve.vision.matching import MatchCounts, match_pairs
from trtserve.vision.preprocess import Preprocessor

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from trtserve.monitoring.ranges import Range

logger = logging.getLogger(__name__)
# what the served model answered for a sampled batch (see the module's protocol)
Served = list[Detections] | dict[str, NDArray[np.generic]] | list[Detections | dict[str, NDArray[np.generic]]]


def with_extra_outputs(model_path: Path, tensors: Sequence[str], folder: Path) -> tuple[Path, list[str]]:
    """A copy of an ONNX model that also outputs those of ``tensors`` its nodes compute; (path, added names)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(model_path))
    computed = {o for node in model.graph.node for o in node.output}
    present = {o.name for o in model.graph.output}
    added = [t for t in tensors if t in computed]
    for name in added:
        if name not in present:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    out = folder / f"{model_path.stem}.shadow.onnx"
    onnx.save(model, str(out))
    return out, added


@dataclass(frozen=True)
class FrameDrift:
    """One sampled frame compared with the shadow."""

    counts: MatchCounts  # served = candidate, shadow = reference
    score_abs_diff_sum: float
    cosine: float | None = None  # raw outputs: the mean over the output tensors
    relative_l2: float | None = None
    out_of_range: dict[str, float] | None = None  # tensor label -> fraction outside its calibrated range
    output_cosines: dict[str, float] | None = None  # raw outputs: output tensor name -> its cosine similarity
    output_relative_l2: dict[str, float] | None = None  # raw outputs: output tensor name -> its relative L2

    @property
    def mean_score_abs_diff(self) -> float:
        tp = self.counts.true_positives
        return self.score_abs_diff_sum / tp if tp else 0.0


def compare_detections(served: Detections, shadow: Detections, iou_threshold: float) -> FrameDrift:
    pairs = match_pairs(served.boxes_xyxy, served.scores, served.class_ids, shadow.boxes_xyxy, shadow.class_ids,
                        iou_threshold)
    counts = MatchCounts.from_pairs(pairs, len(served.scores), len(shadow.scores))
    diff = sum(abs(float(served.scores[i]) - float(shadow.scores[j])) for i, j, _ in pairs)
    return FrameDrift(counts, diff)


def compare_raw(served: NDArray[np.generic], shadow: NDArray[np.generic]) -> tuple[float, float]:
    """Cosine similarity and relative L2 (``|a - b| / |b|``) of one frame's raw outputs."""
    a = np.asarray(served, np.float64).ravel()
    b = np.asarray(shadow, np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = 1.0 if na == nb == 0 else float(a @ b) / (na * nb) if na and nb else 0.0
    rel = float(np.linalg.norm(a - b)) / nb if nb else (0.0 if na == 0 else 1.0)
    return cosine, rel


def compare_raw_outputs(served: dict[str, NDArray[np.generic]], shadow: dict[str, NDArray[np.generic]],
                        names: Sequence[str]) -> FrameDrift:
    """One frame's raw output tensors (``names``, each this frame's slice) against the shadow's, tensor by tensor."""
    pairs = {k: compare_raw(served[k], shadow[k]) for k in names}
    return FrameDrift(MatchCounts(), 0.0, float(np.mean([p[0] for p in pairs.values()])),
                      float(np.mean([p[1] for p in pairs.values()])),
                      output_cosines={k: p[0] for k, p in pairs.items()},
                      output_relative_l2={k: p[1] for k, p in pairs.items()})


def out_of_range_fraction(values: NDArray[np.generic], bounds: Range) -> tuple[int, int]:
    """(values outside ``bounds``, values) of one frame's tensor."""
    v = np.asarray(values)
    outside = int(np.count_nonzero((v < bounds[0]) | (v > bounds[1])))
    return outside, int(v.size)


def _lowest_priority() -> None:
    """Give this process (and the threads it starts) only CPU time nobody else wants.

    Linux: SCHED_IDLE (pid 0: the calling thread, the only one at this point), else nice 19.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.nice(19)
    except (AttributeError, OSError) as exc:
        logger.info("shadow process keeps normal priority: %s", exc)


@dataclass(frozen=True)
class ShadowSetup:
    """Everything the shadow process needs (picklable)."""

    config: ModelConfig
    backend: type[Backend]  # resolved in the server: a backend registered there at run time works here too
    precision: str
    options: BackendOptions
    input_name: str
    head: Head  # the served model's head (its type resolved), to decode the shadow's outputs alike
    head_outputs: tuple[str, ...]
    ranges: dict[str, Range]
    coverage_tensors: tuple[str, ...]
    iou_threshold: float


@dataclass(frozen=True)
class ShadowInfo:
    """What the shadow process loaded: for the same-network check and the coverage series."""

    model_path: Path
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]  # the model's own outputs (extra coverage outputs left out)
    coverage_labels: list[str]
    unreadable: list[str]  # calibrated tensors the shadow model does not compute


class _Shadow:
    def __init__(self, setup: ShadowSetup) -> None:
        self.setup = setup
        kind = setup.backend
        self.source = kind.model_file(setup.config, setup.precision)  # an engine for a tensorrt shadow
        self.scratch = tempfile.TemporaryDirectory(prefix="trtserve-shadow-")
        path, readable = self.source, list[str]()
        extra = [t for t in setup.ranges if t != setup.input_name]
        if extra and self.source.suffix == ".onnx":
            path, readable = with_extra_outputs(self.source, extra, Path(self.scratch.name))
        self.backend = kind(path, setup.options).load()
        self.unreadable = [t for t in extra if t not in readable]
        self.ranges = {t: r for t, r in setup.ranges.items() if t not in self.unreadable}
        labels = {"all": [t for t in self.ranges if t != setup.input_name]}
        if setup.input_name in self.ranges:
            labels["input"] = [setup.input_name]
        labels.update({t: [t] for t in setup.coverage_tensors if t in self.ranges})
        self.coverage = {k: v for k, v in labels.items() if v}  # nothing to read: no series

    def info(self) -> ShadowInfo:
        head = set(self.setup.head_outputs)
        own = [t for t in self.backend.outputs if t.name in head or t.name not in self.ranges]
        return ShadowInfo(self.source, self.backend.inputs, own, list(self.coverage), self.unreadable)

    def compare(self, tensor: NDArray[np.generic], served: Served, geometries: list[Letterbox | None],
                thresholds: list[Thresholds]) -> list[FrameDrift]:
        setup = self.setup
        shadow_in = self.backend.inputs[0]
        if tensor.dtype == np.uint8 and shadow_in.dtype != np.uint8:
            # the served model normalizes inside (its input is the letterboxed frames): the shadow, on the model's
            # own float input, gets them normalized here, off the serving path — as calibration saw them
            tensor = Preprocessor(setup.config.input, shadow_in.dtype).to_tensor(np.asarray(tensor, np.uint8))
        tensor = tensor.astype(shadow_in.dtype, copy=False)
        fixed = shadow_in.shape[0]
        outputs = infer_padded(self.backend, setup.input_name, tensor, fixed if isinstance(fixed, int) else None)
        head_outputs = {k: outputs[k] for k in setup.head_outputs}
        n = len(geometries)
        per_frame = [{k: v[i] for k, v in served.items()} for i in range(n)] if isinstance(served, dict) else served
        framed = [i for i, s in enumerate(per_frame) if isinstance(s, Detections)]
        frames: list[FrameDrift | None] = [None] * n
        if framed:  # detections: the shadow's decoded alike, then matched
            shadow_out = head_outputs if len(framed) == n else {k: v[framed] for k, v in head_outputs.items()}
            shadow_dets = setup.head.decode_each(shadow_out, [geometries[i] for i in framed],  # type: ignore[misc]
                                                 [thresholds[i] for i in framed])
            for i, shadow_det in zip(framed, shadow_dets):
                frames[i] = compare_detections(per_frame[i], shadow_det, setup.iou_threshold)  # type: ignore[arg-type]
        for i, frame in enumerate(per_frame):
            if isinstance(frame, dict):  # raw outputs: compare the tensors themselves, one by one
                frames[i] = compare_raw_outputs(frame, {k: v[i] for k, v in head_outputs.items()},
                                                setup.head_outputs)
        done = [f for f in frames if f is not None]
        if not self.coverage:
            return done
        return [replace(f, out_of_range=self._coverage(i, tensor, outputs)) for i, f in enumerate(done)]

    def _coverage(self, i: int, tensor: NDArray[np.generic], outputs: dict[str, NDArray[np.generic]]
                  ) -> dict[str, float]:
        ratios: dict[str, float] = {}
        for label, tensors in self.coverage.items():
            outside = total = 0
            for t in tensors:
                values = tensor[i] if t == self.setup.input_name else outputs[t][i]
                o, n = out_of_range_fraction(values, self.ranges[t])
                outside, total = outside + o, total + n
            ratios[label] = outside / total if total else 0.0
        return ratios


_shadow: _Shadow | None = None  # in the shadow process


def shadow_open(setup: ShadowSetup) -> ShadowInfo:
    global _shadow
    _lowest_priority()
    _shadow = _Shadow(setup)
    return _shadow.info()


def shadow_compare(tensor: NDArray[np.generic], served: Served, geometries: list[Letterbox | None],
                   thresholds: list[Thresholds]) -> list[FrameDrift]:
    assert _shadow is not None, "the shadow process was not opened"
    return _shadow.compare(tensor, served, geometries, thresholds)


def shadow_close() -> None:
    global _shadow
    if _shadow is not None:
        _shadow.backend.close()
        _shadow.scratch.cleanup()
        _shadow = None


def shadow_main(conn: Connection, setup: ShadowSetup) -> None:
    """The shadow process: open, then answer requests on ``conn`` until ``None`` or EOF (see the module's protocol).

    A request that fails is answered with its error and the process goes on; only the server's ``None``, the
    server's end of the pipe closing, or a crash end it.
    """
    try:
        info = shadow_open(setup)
    except BaseException as exc:  # the server re-raises it: a model that cannot load is its error to report
        conn.send(("error", _picklable(exc)))
        return
    try:
        conn.send(("ok", info))
        while (request := conn.recv()) is not None:
            try:
                reply: tuple[str, Any] = ("ok", shadow_compare(*request))
            except Exception as exc:
                reply = ("error", _picklable(exc))
            conn.send(reply)
    except (EOFError, OSError):  # the server went away (its end of the pipe closed): nobody to answer
        pass
    finally:
        shadow_close()


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling (the server then sees its type), else a RuntimeError saying it."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
