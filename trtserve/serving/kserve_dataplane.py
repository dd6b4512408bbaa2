"""KServe v2 / Open Inference Protocol, independent of the transport: what a model looks like, checking a request,
running it through the model's pipeline, and the model's statistics.

The gRPC servicer (:mod:`trtserve.serving.kserve_service`) and the HTTP/REST one (:mod:`trtserve.serving.http_service`)
are siblings that both call :class:`KServeDataPlane` and never each other (KServe's own server is built the same
way): an HTTP request is translated into the same ``ModelInferRequest`` message and checked by the same
:func:`parse_infer_request`, so both transports refuse the same requests with the same words, and every frame goes
through :meth:`Pipeline.detect <trtserve.serving.pipeline.Pipeline.detect>` like a ``trtserve.v1`` frame.

Each model is exposed as version ``"1"`` in Triton's conventions for a model with ``max_batch_size > 0`` (the
batch dimension is left out of ModelConfig's ``dims`` and is ``-1`` first in ModelMetadata's ``shape``):

* input ``IMAGE``: ``BYTES``, dims ``[1]`` (a request's shape is ``[N, 1]``; ``[N]`` is accepted too) — one encoded
  JPEG/PNG per element, in ``contents.bytes_contents`` or in one ``raw_input_contents`` buffer in Triton's BYTES
  wire format (each element a 4-byte little-endian length, then its bytes);
* a detector (any head but ``raw``) answers with ``DETECTIONS``: ``FP32`` dims ``[max_detections, 6]`` — x1, y1,
  x2, y2 (frame pixels), score, class id; rows past a frame's count are zero — and ``NUM_DETECTIONS``: ``INT32``
  dims ``[1]`` (returned as ``[N, 1]``, as declared);
* a ``head: raw`` model answers with its own output tensors, by name, each element its frame's slice (dims, datatype
  from the model).

A request that names outputs is answered with those only, in its order; one that names none gets them all.

Beside each model ``m``, its raw tensor interface is served as the model **``m.raw``** (what a client that
preprocesses itself sends: DeepStream's nvinferserver in gRPC mode, or any Triton client holding the model's own
tensors): input the model's own input tensor by its name, datatype and dims (the bundled ``shapes.raw``: ``images``
``FP32 [-1, 3, 256, 256]``), outputs the model's own output tensors, each element its frame's slice. A separate model
name and not a model version, because Triton clients address versions as integers (perf_analyzer's ``-x``,
tritonclient's ``model_version``, nvinferserver's ``version``): a name works with all of them unchanged. Its frames go
through the model's own pipeline and batcher (:meth:`Pipeline.infer_tensor
<trtserve.serving.pipeline.Pipeline.infer_tensor>`), so they share batches and the engine with ``m``'s frames; they
are counted under the model ``m.raw`` (metrics, ModelStatistics), and the drift shadow compares their output tensors.
A model that normalizes inside (``normalize_in_model: true``) has no raw interface (NOT_FOUND, saying why). A raw
request is checked as Triton checks one (:func:`parse_tensor_request`): exactly that input, its datatype, dims
``[N, *dims]`` with N at most the max batch, and exactly as many bytes (raw contents) or values (typed contents).

A request is checked whole before any element is decoded, as Triton checks it (:func:`parse_infer_request`):
an unknown version is NOT_FOUND; more than the model's max batch of elements (``max_batch_size``, or
``max_queue_size`` when smaller — such a request could never be admitted), an unknown, repeated or
classification output, or a tensor that is ambiguous or malformed is INVALID_ARGUMENT. Every element then
goes through the model's batcher like a ``trtserve.v1`` frame, so both protocols share batching (elements of
concurrent requests are batched together). A request's elements succeed or fail together: the first element
to fail cancels its siblings (their frames never reach the engine) and answers the request with its status,
and a cancelled call cancels them all.

Statistics (:meth:`KServeDataPlane.statistics`) are read from the model's Prometheus series — the same counters
``/metrics`` exports — so the two never disagree. A frame counts as one request there: a KServe request of N
elements counts N, as its N frames are batched and timed one by one.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as kpb

from trtserve import __version__
from trtserve.errors import InvalidFrameError, ModelNotFoundError, clip
from trtserve.serving.pipeline import RAW_SUFFIX, FrameOutcome, Pipeline, RawInput, TensorOutcome

INPUT_NAME = "IMAGE"
OUTPUT_DETECTIONS = "DETECTIONS"
OUTPUT_COUNT = "NUM_DETECTIONS"
OUTPUTS = (OUTPUT_DETECTIONS, OUTPUT_COUNT)
MODEL_VERSION = "1"
VERSIONS = ("", MODEL_VERSION)  # "" asks for the latest, as in Triton
# the protocol extensions implemented (ServerMetadata lists these; Triton's others are not served)
EXTENSIONS = ("model_configuration", "binary_tensor_data", "statistics")
_NON_BYTES_CONTENTS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                       "fp32_contents", "fp64_contents")
# numpy dtype -> (KServe datatype, ModelConfig data type)
_DATATYPES: dict[np.dtype, tuple[str, int]] = {
    np.dtype(np.bool_): ("BOOL", mc.TYPE_BOOL), np.dtype(np.uint8): ("UINT8", mc.TYPE_UINT8),
    np.dtype(np.uint16): ("UINT16", mc.TYPE_UINT16), np.dtype(np.uint32): ("UINT32", mc.TYPE_UINT32),
    np.dtype(np.uint64): ("UINT64", mc.TYPE_UINT64), np.dtype(np.int8): ("INT8", mc.TYPE_INT8),
    np.dtype(np.int16): ("INT16", mc.TYPE_INT16), np.dtype(np.int32): ("INT32", mc.TYPE_INT32),
    np.dtype(np.int64): ("INT64", mc.TYPE_INT64), np.dtype(np.float16): ("FP16", mc.TYPE_FP16),
    np.dtype(np.float32): ("FP32", mc.TYPE_FP32), np.dtype(np.float64): ("FP64", mc.TYPE_FP64)}
# KServe datatype -> the typed contents field that carries it in a gRPC request (FP16 and BYTES have none here)
_CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                   "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                   "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                   "FP64": "fp64_contents"}
T = TypeVar("T")


def deserialize_bytes(raw: bytes, max_items: int | None = None) -> list[bytes]:
    """Triton's BYTES wire format: each element is a 4-byte little-endian length, then the bytes.

    With ``max_items``, reading stops with InvalidFrameError as soon as a ``max_items + 1``-th element starts, so a
    buffer of many tiny elements never becomes a long list. Returns copies (the caller owns them).
    """
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if max_items is not None and len(items) >= max_items:
            raise InvalidFrameError(f"raw BYTES tensor carries more than the {max_items} elements it declares")
        if offset + 4 > len(raw):
            raise InvalidFrameError("raw BYTES tensor is truncated (a length prefix is cut off)")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidFrameError(f"raw BYTES tensor is truncated: element of {length} bytes runs past the end")
        items.append(raw[offset : offset + length])
        offset += length
    return items


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    """The inverse of :func:`deserialize_bytes`."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as KServe shows it; ``dims`` leave out the batch dimension (-1: dynamic)."""

    name: str
    datatype: str  # KServe's: BYTES, FP32, INT32, ...
    config_type: int  # ModelConfig's DataType
    dims: tuple[int, ...]


def _datatype(dtype: np.dtype) -> tuple[str, int]:
    return _DATATYPES.get(np.dtype(dtype), ("FP32", mc.TYPE_FP32))


def kserve_datatype(dtype: np.dtype) -> str:
    """KServe's name of a NumPy dtype (FP32, INT64, ...)."""
    return _datatype(dtype)[0]


def model_inputs(pipeline: Pipeline, raw: bool = False) -> tuple[TensorSpec, ...]:
    """``IMAGE`` (encoded images); with ``raw``, the model's own input tensor (the ``<name>.raw`` interface)."""
    if raw:
        spec = pipeline.raw_input
        assert spec is not None, "a model without a raw interface"
        return (TensorSpec(spec.name, *_datatype(spec.dtype), spec.dims),)
    return (TensorSpec(INPUT_NAME, "BYTES", mc.TYPE_STRING, (1,)),)


def raw_outputs(pipeline: Pipeline) -> tuple[TensorSpec, ...]:
    """The model's own output tensors (batch dim left out; -1 where the model leaves a dim dynamic)."""
    return tuple(TensorSpec(info.name, *_datatype(info.dtype), tuple(-1 if d is None else int(d)
                                                                     for d in info.shape[1:]))
                 for info in pipeline.detector.backend.outputs)


def model_outputs(pipeline: Pipeline, raw: bool = False) -> tuple[TensorSpec, ...]:
    """DETECTIONS and NUM_DETECTIONS for a detector; a ``head: raw`` model's own output tensors, and every model's
    own output tensors with ``raw`` (its ``<name>.raw`` interface)."""
    detector = pipeline.detector
    if raw or detector.head.type == "raw":
        return raw_outputs(pipeline)
    k = detector.thresholds.max_detections
    return (TensorSpec(OUTPUT_DETECTIONS, "FP32", mc.TYPE_FP32, (k, 6)),
            TensorSpec(OUTPUT_COUNT, "INT32", mc.TYPE_INT32, (1,)))


@dataclass(frozen=True)
class InferCall:
    """A ModelInfer request that passed :func:`parse_infer_request`: its images, and the outputs to answer with."""

    images: list[bytes]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class TensorCall:
    """A ModelInfer request to a ``<name>.raw`` model that passed :func:`parse_tensor_request`: one array per frame
    (the model's input for that frame, batch dim removed), and the outputs to answer with."""

    frames: list[np.ndarray]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ServedModel:
    """A KServe model name resolved: the pipeline behind it, and whether it is that model's raw tensor interface."""

    name: str
    pipeline: Pipeline
    raw: bool = False


def max_elements(pipeline: Pipeline) -> int:
    """Elements one request may carry: the model's max batch, or its queue bound when smaller."""
    return min(pipeline.settings.max_batch_size, pipeline.settings.max_queue_size)


def check_version(model: str, version: str) -> None:
    """ModelNotFoundError (NOT_FOUND) naming the available versions, unless ``version`` is ``""`` or ``"1"``."""
    if version not in VERSIONS:
        raise ModelNotFoundError(f"model {clip(model)} has no version {clip(version)}; "
                                 f"available versions: [{MODEL_VERSION!r}]")


def _names(names: Sequence[str], total: int) -> str:
    """At most the first few of ``total`` client-chosen names, each clipped, for an error message."""
    more = f", … ({total - len(names)} more)" if total > len(names) else ""
    return f"[{', '.join(clip(n) for n in names)}{more}]"


def _requested_outputs(request: kpb.ModelInferRequest, known: Sequence[str]) -> tuple[str, ...]:
    names: list[str] = []
    for output in request.outputs:
        if output.name not in known:
            raise InvalidFrameError(f"unknown output {clip(output.name)} requested; model "
                                    f"{clip(request.model_name)} has outputs {list(known)}")
        if output.name in names:
            raise InvalidFrameError(f"output {output.name!r} is requested more than once")
        if "classification" in output.parameters:
            raise InvalidFrameError(f"output {output.name!r}: the classification extension is not supported "
                                    "(a detector's outputs are boxes, not class scores); request it without "
                                    "class_count")
        names.append(output.name)  # other parameters (binary_data) change nothing over gRPC: ignored, as Triton does
    return tuple(names) or tuple(known)


def _elements(tensor: kpb.ModelInferRequest.InferInputTensor, raw: Sequence[bytes], max_batch: int) -> list[bytes]:
    if tensor.datatype != "BYTES":
        raise InvalidFrameError(f"input {INPUT_NAME!r} has datatype {clip(tensor.datatype)}; expected BYTES "
                                "(encoded JPEG/PNG images)")
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise InvalidFrameError(f"input {INPUT_NAME!r} has shape {clip(shape)}; expected [N, 1] or [N] "
                                "(N encoded images)")
    declared = shape[0]
    if declared > max_batch:
        raise InvalidFrameError(f"input {INPUT_NAME!r} has {declared} elements; at most {max_batch} per request "
                                "(the model's max batch size): split the request")
    contents = tensor.contents
    carried = [f for f in _NON_BYTES_CONTENTS if len(getattr(contents, f))]
    if carried:
        raise InvalidFrameError(f"input {INPUT_NAME!r} carries {carried[0]}; a BYTES input takes bytes_contents "
                                "or raw_input_contents")
    if len(raw) > 1:
        raise InvalidFrameError(f"the request carries {len(raw)} raw_input_contents buffers for its one input "
                                f"{INPUT_NAME!r}; expected one")
    if raw:
        if len(contents.bytes_contents):
            raise InvalidFrameError(f"input {INPUT_NAME!r} carries both contents and raw_input_contents; "
                                    "send one of them")
        images = deserialize_bytes(raw[0], max_items=declared)
    else:
        if len(contents.bytes_contents) > declared:
            raise InvalidFrameError(f"input {INPUT_NAME!r} declares {declared} elements but carries "
                                    f"{len(contents.bytes_contents)}")
        images = list(contents.bytes_contents)
    if len(images) != declared:
        raise InvalidFrameError(f"input {INPUT_NAME!r} declares {declared} elements but carries {len(images)}")
    return images


def parse_infer_request(request: kpb.ModelInferRequest, max_batch: int, outputs: Sequence[str] = OUTPUTS
                        ) -> InferCall:
    """Check a ModelInfer request whole, before any element is decoded, and return its images and outputs.

    Pure: no server needed. ``max_batch`` is the most elements one request may carry (:func:`max_elements`);
    ``outputs`` the model's output names (:func:`model_outputs`). Raises ModelNotFoundError (NOT_FOUND) for an
    unknown version and InvalidFrameError (INVALID_ARGUMENT) for everything else, never another exception; echoed
    client values are clipped. The element count is checked on the declared shape first, and the raw buffer is
    read no further than that count.
    """
    check_version(request.model_name, request.model_version)
    requested = _requested_outputs(request, outputs)
    inputs = request.inputs
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise InvalidFrameError(f"expected exactly one input named {INPUT_NAME!r}, got "
                                f"{_names([i.name for i in inputs[:5]], len(inputs))}")
    return InferCall(_elements(request.inputs[0], request.raw_input_contents, max_batch), requested)


def parse_tensor_request(request: kpb.ModelInferRequest, max_batch: int, spec: RawInput,
                         outputs: Sequence[str]) -> TensorCall:
    """Check a ModelInfer request to a ``<name>.raw`` model whole, as Triton checks one, and split it into frames.

    Pure. ``spec``: the model's input tensor; ``outputs``: its output names. NOT_FOUND (ModelNotFoundError) for an
    unknown version; INVALID_ARGUMENT (InvalidFrameError) naming the tensor for anything else: another input name or
    more than one input, another datatype, a shape other than ``[N, *dims]``, N above ``max_batch``, an unknown or
    repeated output, raw contents whose byte count is not N x the frame's, typed contents of another type or count.
    Raw contents are read little-endian, as the protocol sends them.
    """
    check_version(request.model_name, request.model_version)
    requested = _requested_outputs(request, outputs)
    name = spec.name
    datatype = _datatype(spec.dtype)[0]
    inputs = request.inputs
    if len(inputs) != 1 or inputs[0].name != name:
        raise InvalidFrameError(f"expected exactly one input named {name!r} (the model's own input tensor), got "
                                f"{_names([i.name for i in inputs[:5]], len(inputs))}")
    tensor = inputs[0]
    if tensor.datatype != datatype:
        raise InvalidFrameError(f"input {name!r} has datatype {clip(tensor.datatype)}; expected {datatype}")
    shape = list(tensor.shape)
    expected = [-1, *spec.dims]
    if len(shape) != len(expected) or shape[1:] != list(spec.dims) or shape[0] < 1:
        raise InvalidFrameError(f"input {name!r} has shape {clip(shape)}; expected {expected} (N frames of "
                                f"{list(spec.dims)})")
    n = shape[0]
    if n > max_batch:
        raise InvalidFrameError(f"input {name!r} has a batch of {n}; at most {max_batch} per request (the model's "
                                "max_batch_size): split the request")
    per_frame = int(np.prod(spec.dims))
    contents = tensor.contents
    carried = [f for f in (*_NON_BYTES_CONTENTS, "bytes_contents") if len(getattr(contents, f))]
    raw = request.raw_input_contents
    if raw:
        if len(raw) > 1:
            raise InvalidFrameError(f"the request carries {len(raw)} raw_input_contents buffers for its one input "
                                    f"{name!r}; expected one")
        if carried:
            raise InvalidFrameError(f"input {name!r} carries both contents and raw_input_contents; send one of them")
        blob = raw[0]
        size = n * per_frame * spec.dtype.itemsize
        if len(blob) != size:
            raise InvalidFrameError(f"input {name!r} carries {len(blob)} bytes; {datatype} {shape} is {size} bytes")
        array = np.frombuffer(blob, spec.dtype.newbyteorder("<")).astype(spec.dtype, copy=False).reshape(shape)
    else:
        field = _CONTENTS_FIELD.get(datatype)
        if field is None or carried != [field]:
            where = f"contents.{field}" if field else "raw_input_contents (no typed contents field carries it)"
            got = f"it carries {carried[0]}" if carried else "it carries no data"
            raise InvalidFrameError(f"input {name!r} of {datatype}: {got}; send it in {where} or raw_input_contents")
        values = getattr(contents, field)
        if len(values) != n * per_frame:
            raise InvalidFrameError(f"input {name!r} carries {len(values)} values; {datatype} {shape} has "
                                    f"{n * per_frame}")
        array = np.asarray(values, spec.dtype).reshape(shape)
    return TensorCall([array[i] for i in range(n)], requested)


async def all_or_none(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` concurrently and return their results in order; the first to fail fails them all.

    Like Python 3.11's ``TaskGroup`` (this runs on 3.10): when one raises, the others are cancelled, awaited, and
    the first failure (in time; the earliest in order among those failing together) is raised. When the caller
    is cancelled, every one is cancelled too. Nothing is left running and no exception goes unretrieved.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failures = [e for t in tasks if t in done and not t.cancelled() and (e := t.exception()) is not None]
        if failures:
            raise failures[0]
        return [t.result() for t in tasks]  # all done (one cancelled by someone else raises CancelledError)
    finally:
        running = [t for t in tasks if not t.done()]
        for t in running:
            t.cancel()
        if running:
            await asyncio.wait(running)
        for t in tasks:  # retrieve the siblings' own failures, so asyncio does not log them as never retrieved
            if t.done() and not t.cancelled():
                t.exception()


def _tensor_arrays(outcomes: Sequence[TensorOutcome], names: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: np.stack([o.outputs[name] for o in outcomes]) for name in names}


def _output_arrays(pipeline: Pipeline, outcomes: Sequence[FrameOutcome]) -> dict[str, np.ndarray]:
    """Every output of the model for these frames, batch first, in the declared shapes."""
    if pipeline.detector.head.type == "raw":
        names = [spec.name for spec in model_outputs(pipeline)]
        return {name: np.stack([o.detections.raw[name] for o in outcomes]) for name in names}
    k = pipeline.detector.thresholds.max_detections
    detections = np.zeros((len(outcomes), k, 6), np.float32)
    counts = np.zeros((len(outcomes), 1), np.int32)
    for i, outcome in enumerate(outcomes):
        d = outcome.detections
        n = min(len(d), k)
        counts[i, 0] = n
        detections[i, :n, :4] = d.boxes_xyxy[:n]
        detections[i, :n, 4] = d.scores[:n]
        detections[i, :n, 5] = d.class_ids[:n]
    return {OUTPUT_DETECTIONS: detections, OUTPUT_COUNT: counts}


def _duration(count: float, seconds: float) -> kpb.StatisticDuration:
    return kpb.StatisticDuration(count=int(count), ns=int(seconds * 1e9))


def _histogram(child: Any) -> tuple[float, float]:
    """(count, sum) of a Prometheus histogram child."""
    samples = {s.name.rsplit("_", 1)[-1]: s.value for family in child.collect() for s in family.samples}
    return samples.get("count", 0.0), samples.get("sum", 0.0)


def model_statistics(name: str, pipeline: Pipeline, raw: bool = False) -> kpb.ModelStatistics:
    """Triton's ModelStatistics of one model, from its Prometheus series (``trtserve_frames_total``,
    ``trtserve_stage_duration_seconds``, ``trtserve_batch_size``): success is the answered frames and their total
    time in the server, fail the failed ones (their time is not measured: ns 0), queue / compute_input (decode,
    letterbox, normalize) / compute_infer / compute_output (head, NMS) the stage times of the answered frames;
    inference_count the frames run by the engine and execution_count its batches, batch_stats the batches per size
    (their durations are not measured per size: ns 0). ``raw``: the model's raw interface (``<name>.raw``): its own
    frames, and the engine's batches that carried any of them (batch_stats by how many of its frames they held); the
    engine counts of ``<name>`` are the engine's, so they include the batches the two interfaces shared."""
    m = pipeline.raw_metrics if raw else pipeline.metrics
    stage = {s: _histogram(child) for s, child in m.stage.items()}
    ok = sum(s.value for family in m.ok.collect() for s in family.samples if s.name.endswith("_total"))
    failed = sum(s.value for family in m.metrics.frames.collect() for s in family.samples
                 if s.name.endswith("_total") and s.labels.get("model") == m.model
                 and s.labels.get("precision") == m.precision and s.labels.get("outcome") == "error")
    if raw:  # not a Prometheus series: the batch sizes there are the engine's (under <name>)
        executions = float(sum(m.totals.executions.values()))
        frames = float(sum(size * n for size, n in m.totals.executions.items()))
    else:
        executions, frames = _histogram(m.batch_size.child)
    return kpb.ModelStatistics(
        name=name, version=MODEL_VERSION, last_inference=int(m.last_ok_s * 1000),  # Triton: ms since the epoch
        inference_count=int(frames), execution_count=int(executions),
        inference_stats=kpb.InferStatistics(
            success=_duration(ok, stage["total"][1]), fail=_duration(failed, 0.0),
            queue=_duration(*stage["queue"]), compute_input=_duration(*stage["preprocess"]),
            compute_infer=_duration(*stage["inference"]), compute_output=_duration(*stage["postprocess"]),
            cache_hit=_duration(0, 0.0), cache_miss=_duration(0, 0.0)),  # no response cache
        batch_stats=[kpb.InferBatchStatistics(batch_size=size, compute_input=_duration(n, 0.0),
                                              compute_infer=_duration(n, 0.0), compute_output=_duration(n, 0.0))
                     for size, n in sorted(m.totals.executions.items())])


class KServeDataPlane:
    """The KServe v2 operations over the server's pipelines; both transports call it (module docstring).

    Every method raises only trtserve errors for what the client got wrong (ModelNotFoundError, InvalidFrameError,
    the pipeline's QueueFullError, ...); the transport maps them to its status codes. ``draining`` says whether the
    server is shutting down (then it is live but not ready).
    """

    def __init__(self, pipelines: Mapping[str, Pipeline], draining: Callable[[], bool] = lambda: False) -> None:
        self.pipelines = pipelines
        self._draining = draining

    def names(self) -> list[str]:
        """Every KServe model served: each loaded model, then the raw interfaces of those that have one."""
        return [*self.pipelines, *(n + RAW_SUFFIX for n, p in self.pipelines.items() if p.raw_input is not None
                                   and n + RAW_SUFFIX not in self.pipelines)]

    def _find(self, name: str) -> ServedModel | str:
        """The model served under ``name``, or why there is none (for NOT_FOUND)."""
        if name in self.pipelines:
            return ServedModel(name, self.pipelines[name])
        if name.endswith(RAW_SUFFIX) and (base := name[: -len(RAW_SUFFIX)]) in self.pipelines:
            pipeline = self.pipelines[base]
            if pipeline.raw_input is None:
                return f"model {clip(name)} is not served: {pipeline.raw_unavailable}"
            return ServedModel(name, pipeline, raw=True)
        return f"model {clip(name)} is not loaded; loaded: {self.names()}"

    def model(self, name: str, version: str = "") -> ServedModel:
        """The model served under ``name`` (``<model>.raw``: its raw tensor interface); NOT_FOUND for an unknown
        name or version."""
        found = self._find(name)
        if isinstance(found, str):
            raise ModelNotFoundError(found)
        check_version(name, version)
        return found

    def pipeline(self, name: str, version: str = "") -> Pipeline:
        return self.model(name, version).pipeline

    def server_ready(self) -> bool:
        return bool(self.pipelines) and not self._draining()

    def model_ready(self, name: str, version: str = "") -> bool:
        return not isinstance(self._find(name), str) and version in VERSIONS and not self._draining()

    def server_metadata(self) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(name="trtserve", version=__version__, extensions=list(EXTENSIONS))

    def model_metadata(self, name: str, version: str = "") -> kpb.ModelMetadataResponse:
        m = self.model(name, version)
        p = m.pipeline
        tensor = kpb.ModelMetadataResponse.TensorMetadata
        return kpb.ModelMetadataResponse(
            name=name, versions=[MODEL_VERSION], platform=f"trtserve_{p.detector.backend.name}",
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=[-1, *t.dims]) for t in model_inputs(p, m.raw)],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=[-1, *t.dims])
                     for t in model_outputs(p, m.raw)])

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        m = self.model(name, version)
        p = m.pipeline
        return mc.ModelConfig(
            name=name, platform=f"trtserve_{p.detector.backend.name}",
            max_batch_size=max_elements(p),  # what one request may carry, so perf_analyzer stays inside it
            input=[mc.ModelInput(name=t.name, data_type=t.config_type, dims=list(t.dims))
                   for t in model_inputs(p, m.raw)],
            output=[mc.ModelOutput(name=t.name, data_type=t.config_type, dims=list(t.dims))
                    for t in model_outputs(p, m.raw)],
            dynamic_batching=mc.ModelDynamicBatching(
                preferred_batch_size=list(p.settings.preferred_batch_sizes),
                max_queue_delay_microseconds=int(p.settings.max_queue_delay_ms * 1000)),
            instance_group=[mc.ModelInstanceGroup(count=p.settings.instances, kind=mc.ModelInstanceGroup.KIND_CPU
                                                  if p.detector.backend.device == "cpu"
                                                  else mc.ModelInstanceGroup.KIND_GPU)])

    def repository_index(self) -> kpb.RepositoryIndexResponse:
        return kpb.RepositoryIndexResponse(models=[
            kpb.RepositoryIndexResponse.ModelIndex(name=n, version=MODEL_VERSION, state="READY")
            for n in self.names()])

    def statistics(self, name: str = "", version: str = "") -> kpb.ModelStatisticsResponse:
        """Every model's statistics when ``name`` is empty, as in Triton; else that model's (NOT_FOUND if unknown)."""
        models = [self.model(n) for n in self.names()] if not name else [self.model(name, version)]
        return kpb.ModelStatisticsResponse(model_stats=[model_statistics(m.name, m.pipeline, m.raw) for m in models])

    async def infer(self, request: kpb.ModelInferRequest) -> kpb.ModelInferResponse:
        """Check the request whole (:func:`parse_infer_request`, or :func:`parse_tensor_request` for a ``.raw``
        model), then run every element at once, all or none.

        The answer's ``raw_output_contents`` hold the requested outputs in request order.
        """
        found = self._find(request.model_name)
        if isinstance(found, str):
            raise ModelNotFoundError(found)
        pipeline = found.pipeline
        specs = {t.name: t for t in model_outputs(pipeline, found.raw)}
        if found.raw:
            assert pipeline.raw_input is not None
            tensors = parse_tensor_request(request, max_elements(pipeline), pipeline.raw_input, tuple(specs))
            outputs = tensors.outputs
            ran = await all_or_none([pipeline.infer_tensor(frame) for frame in tensors.frames])
            arrays = _tensor_arrays(ran, outputs)
        else:
            call = parse_infer_request(request, max_elements(pipeline), tuple(specs))
            outputs = call.outputs
            outcomes: list[FrameOutcome] = await all_or_none([pipeline.detect(img) for img in call.images])
            arrays = _output_arrays(pipeline, outcomes)
        out = kpb.ModelInferResponse.InferOutputTensor
        return kpb.ModelInferResponse(
            model_name=request.model_name, model_version=MODEL_VERSION, id=request.id,
            outputs=[out(name=n, datatype=specs[n].datatype, shape=list(arrays[n].shape)) for n in outputs],
            raw_output_contents=[np.ascontiguousarray(arrays[n]).tobytes() for n in outputs])
