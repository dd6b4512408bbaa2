"""Histogramming activations under a memory budget, whatever the model's input size and the batch.

Every activation that will be quantized is fetched from ONNX Runtime as an extra output and histogrammed. Done
naively, memory is (batch x every such tensor): a 480x640 detector peaks at several GB with a batch of 8. Here
the per-frame size of each tensor is read off ONNX shape inference (at the feed's own input shape), and the
work is split so that the tensors alive at once fit ``max_memory_bytes``:

1. the whole feed batch in one run when it fits (the usual case for small models);
2. otherwise the batch is split into sub-batches (each run sees fewer frames, all tensors);
3. when even one frame's tensors exceed the budget, the tensors are split into groups and the frames are run
   once per group (the feeds are replayed: re-iterated when they are a sequence, else spilled once to a
   temporary folder and read back memory-mapped).

The histograms are the same as one unbounded pass: each tensor's first batch fixes its bin width from the
maximum of the whole feed batch (a max-only run of that batch comes first when it is split), and the counts of
sub-batches add up exactly to the counts of the whole batch (see :mod:`calibrators.histogram`). Large tensors are
histogrammed in chunks, so the temporaries of one update stay small too.

The budget covers what calibration adds on top of the runtime and the model's weights: the fetched tensors,
the runtime's working activations, the feed batch and the histogram temporaries. ``MemoryUse`` reports the
plan and the measured peak RSS of the process.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from calibrators.histogram import AbsHistogram

logger = logging.getLogger(__name__)

Feed = Mapping[str, NDArray[np.floating]]
DEFAULT_MAX_MEMORY_BYTES = 1024 * 2**20
CHUNK_VALUES = 1 << 18  # values per histogram update (its temporaries are ~24 bytes a value)
MIN_MAX_MEMORY_BYTES = 32 * 2**20  # below this the fixed costs alone would not fit
_FIXED_BYTES = CHUNK_VALUES * 24  # histogram temporaries, counted against the budget once
_ELEMENT_BYTES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.DOUBLE: 8,
                  onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4, onnx.TensorProto.INT8: 1,
                  onnx.TensorProto.UINT8: 1, onnx.TensorProto.BOOL: 1, onnx.TensorProto.BFLOAT16: 2}


@dataclass(frozen=True)
class MemoryUse:
    """How the activations were collected under the budget, and the peak measured."""

    budget_bytes: int | None  # None: unbounded (one run per feed batch)
    passes: int  # runs over the frames (one per group of tensors)
    sub_batch: int | None  # frames per run; None: the whole feed batch
    estimated_bytes: int  # the plan's estimate of what calibration holds at once (fetched + working tensors)
    peak_rss_bytes: int  # the process's peak resident set size when calibration ended (VmHWM / ru_maxrss)

    def as_dict(self) -> dict[str, object]:
        mb = 2**20
        return {"budget_mb": None if self.budget_bytes is None else round(self.budget_bytes / mb, 1),
                "passes": self.passes, "sub_batch": self.sub_batch,
                "estimated_mb": round(self.estimated_bytes / mb, 1), "peak_rss_mb": round(self.peak_rss_bytes / mb, 1)}


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far: VmHWM on Linux (the high-water mark of this program's own
    memory; ru_maxrss would start from the parent's size at fork), else ru_maxrss (kilobytes on Linux, bytes on
    macOS)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def per_frame_bytes(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Bytes per frame (batch item) of every tensor whose shape inference resolves, at these input shapes."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    for graph_input in probe.graph.input:
        shape = input_shapes.get(graph_input.name)
        if shape is None:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        for dim, value in zip(dims, (1, *shape[1:])):
            dim.Clear()
            dim.dim_value = int(value)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception as exc:  # shape inference is best effort: sizes unknown, estimated below
        logger.info("shape inference failed (%s); tensor sizes are estimated", exc)
        return {}
    sizes: dict[str, int] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not dims or any(d is None for d in dims):
            continue
        count = int(np.prod([d for d in dims if d is not None], dtype=np.int64))
        sizes[info.name] = count * _ELEMENT_BYTES.get(tensor.elem_type, 4)
    return sizes


def conv_scratch_bytes(model: onnx.ModelProto, sizes: Mapping[str, int]) -> int:
    """The largest im2col buffer a convolution of ``model`` needs for one image (ONNX Runtime's CPU convolutions
    unfold their input: C_in/group x kH x kW x H_out x W_out values), from per-frame output sizes."""
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    scratch = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in dims:
            continue
        w = dims[node.input[1]]
        out = sizes.get(node.output[0])
        if out is None or len(w) < 3 or not w[0] or int(np.prod(w[2:])) == 1:
            continue
        scratch = max(scratch, out // w[0] * int(np.prod(w[1:])))
    return scratch


@dataclass(frozen=True)
class _Plan:
    groups: tuple[tuple[str, ...], ...]
    sub_batch: int | None
    estimated_bytes: int


def plan_collection(tensors: Sequence[str], sizes: Mapping[str, int], input_bytes: int, batch: int,
                    budget_bytes: int | None, scratch_bytes: int = 0, threads: int = 1) -> _Plan:
    """Groups of tensors and a sub-batch size that keep the estimate within ``budget_bytes`` (where it can).

    Per run of ``b`` frames the estimate is ``b`` x (the fetched tensors + the runtime's live activations + the
    input) + ``min(b, threads)`` x ``scratch_bytes`` (convolution buffers, one per image being computed) + the
    histogram temporaries.
    """
    known = [s for s in sizes.values() if s > 0]
    fallback = max(known) if known else max(input_bytes * 4, 1)
    size = {t: sizes.get(t, fallback) for t in tensors}
    # the runtime's own live activations while it runs: the two largest tensors of the graph, per frame
    working = sum(sorted(known, reverse=True)[:2]) if known else 2 * fallback

    def cost(frames: int, fetched: int) -> int:
        return frames * (fetched + working + input_bytes) + min(frames, threads) * scratch_bytes + _FIXED_BYTES

    def frames_within(fetched: int) -> int:
        """The most frames per run (at most ``batch``) within the budget; 0 if not even one frame fits."""
        lo, hi = 0, batch
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost(mid, fetched) <= (budget_bytes or 0) else (lo, mid - 1)
        return lo

    total = sum(size.values())
    if budget_bytes is None or cost(batch, total) <= budget_bytes:
        return _Plan((tuple(tensors),), None, cost(batch, total))
    sub = frames_within(total)
    if sub >= 1:
        return _Plan((tuple(tensors),), sub, cost(sub, total))
    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    used = 0
    for name in tensors:
        if current and cost(1, used + size[name]) > budget_bytes:
            groups.append(tuple(current))
            current, used = [], 0
        current.append(name)
        used += size[name]
    if current:
        groups.append(tuple(current))
    biggest = max(sum(size[t] for t in g) for g in groups)
    sub = max(1, frames_within(biggest))
    if cost(1, biggest) > budget_bytes:
        logger.warning("calibration memory budget of %.0f MB is below what one frame needs (%.0f MB with the "
                       "largest tensor and the runtime's working buffers); calibrating one frame at a time, one "
                       "tensor per pass, above the budget", budget_bytes / 2**20, cost(1, biggest) / 2**20)
    return _Plan(tuple(groups), sub, cost(sub, biggest))


def _start(hist: AbsHistogram, max_abs: float) -> None:
    """Fix the bin width of a histogram not started yet from the maximum of its first whole batch (as
    :meth:`AbsHistogram.update` of that batch would)."""
    if hist.counts is None and max_abs > 0 and np.isfinite(max_abs):
        hist.bin_width = max_abs / hist.num_bins
        hist.counts = np.zeros(hist.num_bins, np.int64)
        hist.counts[0] += hist.zeros_before_range


def _max_abs(value: NDArray[np.generic]) -> float:
    flat = value.reshape(-1)
    if flat.size == 0:
        return 0.0
    return float(max(abs(float(flat.max())), abs(float(flat.min()))))


def update_in_chunks(hist: AbsHistogram, value: NDArray[np.generic]) -> None:
    """``hist.update(value)`` in chunks of :data:`CHUNK_VALUES`, with the same result."""
    flat = np.ascontiguousarray(value).reshape(-1)
    if flat.size > CHUNK_VALUES and hist.counts is None:
        _start(hist, _max_abs(flat))
    for start in range(0, flat.size, CHUNK_VALUES):
        hist.update(flat[start : start + CHUNK_VALUES])


class _Replay:
    """Feeds that can be iterated once per pass: a sequence as it is, an iterator spilled to disk on pass one."""

    def __init__(self, feeds: Iterable[Feed], passes: int) -> None:
        self._feeds = feeds
        self._reusable = passes == 1 or isinstance(feeds, Sequence)
        self._folder: Path | None = None
        self._count = 0

    def __iter__(self) -> Iterator[Feed]:
        if self._reusable:
            yield from self._feeds
            return
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="calibrators-feeds-"))
            for feed in self._feeds:
                arrays: dict[str, Any] = {k: np.asarray(v) for k, v in feed.items()}
                np.savez(self._folder / f"{self._count:06d}.npz", **arrays)
                self._count += 1
                yield feed
            return
        for i in range(self._count):
            with np.load(self._folder / f"{i:06d}.npz") as data:
                yield {k: data[k] for k in data.files}

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _session(model: onnx.ModelProto, outputs: Sequence[str], input_names: Sequence[str]) -> object:
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in probe.graph.output}
    for name in outputs:
        if name not in input_names and name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep tensors as named
    options.enable_cpu_mem_arena = False  # freed activations go back to the system: the peak is what is alive
    options.log_severity_level = 3
    return ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])


def collect_histograms(model: onnx.ModelProto, tensors: Iterable[str], feeds: Iterable[Feed],
                       on_batch: Callable[[int], None] | None = None,
                       max_memory_bytes: int | None = DEFAULT_MAX_MEMORY_BYTES
                       ) -> tuple[dict[str, AbsHistogram], int, int, MemoryUse]:
    """Histograms of ``tensors`` over all ``feeds`` within ``max_memory_bytes`` (None: unbounded).

    Returns (histograms, batches, samples, memory use). Raises ValueError on feeds that do not fit the model.
    """
    if max_memory_bytes is not None and max_memory_bytes < MIN_MAX_MEMORY_BYTES:
        raise ValueError(f"a calibration memory budget of {max_memory_bytes / 2**20:.0f} MB is below the "
                         f"{MIN_MAX_MEMORY_BYTES // 2**20} MB minimum")
    wanted = list(dict.fromkeys(tensors))
    input_names = [i.name for i in model.graph.input]
    hists = {n: AbsHistogram() for n in wanted}
    iterator = iter(feeds)
    first = next(iterator, None)
    if first is None:
        raise ValueError("no calibration batches: the feeds were empty; give images or a video")
    _check_feed(first, input_names)
    batch = int(np.asarray(next(iter(first.values()))).shape[0])
    shapes = {k: tuple(np.asarray(v).shape) for k, v in first.items()}
    input_bytes = sum(int(np.prod(s[1:], dtype=np.int64)) * 4 for s in shapes.values())
    sizes = per_frame_bytes(model, shapes) if max_memory_bytes is not None else {}
    plan = plan_collection(wanted, sizes, input_bytes, batch, max_memory_bytes, conv_scratch_bytes(model, sizes),
                           os.cpu_count() or 1)
    if plan.sub_batch is not None or len(plan.groups) > 1:
        logger.info("calibration memory budget %.0f MB: %d pass(es) over the frames, %d frames per run",
                    (max_memory_bytes or 0) / 2**20, len(plan.groups), plan.sub_batch or batch)

    def all_feeds() -> Iterator[Feed]:
        yield first
        yield from iterator

    replay = _Replay(feeds if isinstance(feeds, Sequence) else all_feeds(), len(plan.groups))
    batches = samples = 0
    try:
        for index, group in enumerate(plan.groups):
            last_pass = index == len(plan.groups) - 1
            fetch = [n for n in group if n not in input_names]
            session = _session(model, fetch, input_names) if fetch else None
            batches = samples = 0
            for feed in replay:
                _check_feed(feed, input_names)
                arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()}
                n = int(next(iter(arrays.values())).shape[0])
                step = plan.sub_batch or n
                parts = [{k: v[s : s + step] for k, v in arrays.items()} for s in range(0, n, step)]
                if len(parts) > 1 and any(hists[t].counts is None for t in group):
                    maxima = dict.fromkeys(group, 0.0)  # a max-only run first: the bin width the whole batch sets
                    for part in parts:
                        for name, value in _values(session, fetch, group, part):
                            maxima[name] = max(maxima[name], _max_abs(value))
                    for name, m in maxima.items():
                        _start(hists[name], m)
                for part in parts:
                    for name, value in _values(session, fetch, group, part):
                        try:
                            update_in_chunks(hists[name], value)
                        except ValueError as exc:
                            raise ValueError(f"tensor {name!r} in calibration batch {batches + 1}: {exc}") from None
                        del value
                batches += 1
                samples += n
                if on_batch is not None and last_pass:
                    on_batch(samples)
            del session
    finally:
        replay.close()
    use = MemoryUse(max_memory_bytes, len(plan.groups), plan.sub_batch, plan.estimated_bytes, peak_rss_bytes())
    return hists, batches, samples, use


def _check_feed(feed: Feed, input_names: Sequence[str]) -> None:
    if set(feed) != set(input_names):
        raise ValueError(f"calibration feed has inputs {sorted(feed)}; the model expects {sorted(input_names)}")


def _values(session: object, fetch: list[str], group: Sequence[str], part: Mapping[str, NDArray[np.float32]]
            ) -> Iterator[tuple[str, NDArray[np.generic]]]:
    """(name, value) of the group's tensors for one run, inputs first (a bad feed is the root cause)."""
    for name in group:
        if name in part:
            yield name, part[name]
    if session is not None:
        outputs = session.run(fetch, dict(part))  # type: ignore[attr-defined]
        for k, name in enumerate(fetch):
            value = outputs[k]
            outputs[k] = None  # released as soon as it is histogrammed
            yield name, value

