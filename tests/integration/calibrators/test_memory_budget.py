"""Calibration memory is bounded by an explicit budget: same ranges as unbounded, peak RSS under the budget.

Each calibration runs in a child process, which reports its peak RSS (VmHWM, the kernel's high-water mark of the
process's memory, as ru_maxrss but not starting from the parent's size at fork) just before calibrating and after,
so the difference is what calibration itself held; nothing here is a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibrators.calibrate import calibrate
from calibrators.memory import collect_histograms, plan_collection

SIDE_PX = 96
CHANNELS = 64
BATCH = 16
MB = 2**20


def wide_model() -> onnx.ModelProto:
    """Five 64-channel convs at 96x96: ~2.4 MB per tensor per frame, ~12 MB of quantized activations a frame."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    x, c_in = "x", 3
    for k in range(5):
        w = numpy_helper.from_array(rng.normal(0, 0.2, (CHANNELS, c_in, 3, 3)).astype(np.float32), f"w{k}")
        inits.append(w)
        nodes += [helper.make_node("Conv", [x, w.name], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}")]
        x, c_in = f"r{k}", CHANNELS
    w_out = numpy_helper.from_array(rng.normal(0, 0.2, (4, CHANNELS, 1, 1)).astype(np.float32), "w_out")
    nodes.append(helper.make_node("Conv", [x, "w_out"], ["y"], name="head"))
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            ["N", 3, SIDE_PX, SIDE_PX])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, SIDE_PX, SIDE_PX])],
                              [*inits, w_out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def feeds(batches: int = 2, batch: int = BATCH) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.uniform(0, 1, (batch, 3, SIDE_PX, SIDE_PX)).astype(np.float32)} for _ in range(batches)]


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, onnx, onnxruntime
    from calibrators.calibrate import calibrate
    from calibrators.memory import peak_rss_bytes
    model = onnx.load(sys.argv[1])
    data = np.load(sys.argv[2])
    feeds = [{"x": data[k]} for k in sorted(data.files)]
    budget = None if sys.argv[3] == "none" else int(sys.argv[3])
    calibrate(model, [{"x": feeds[0]["x"][:1]}], max_memory_bytes=budget)  # warm: imports, one frame
    before = peak_rss_bytes()
    result = calibrate(model, feeds, max_memory_bytes=budget)
    after = peak_rss_bytes()
    print(json.dumps({"added_bytes": after - before, "before": before, "after": after, "amax": result.amax(),
                      "passes": result.memory.passes, "sub_batch": result.memory.sub_batch}))
""")


def run_child(tmp_path: Path, budget: int | None) -> dict:
    model_path = tmp_path / "wide.onnx"
    data_path = tmp_path / "feeds.npz"
    if not model_path.exists():
        onnx.save(wide_model(), str(model_path))
        arrays: dict[str, Any] = {f"b{i}": f["x"] for i, f in enumerate(feeds())}
        np.savez(data_path, **arrays)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model_path), str(data_path), str(budget or "none")],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_small_budget_bounds_peak_memory_and_keeps_the_ranges(tmp_path: Path) -> None:
    budget = 48 * MB
    unbounded = run_child(tmp_path, None)
    bounded = run_child(tmp_path, budget)
    assert bounded["sub_batch"] is not None and bounded["sub_batch"] < BATCH  # the budget changed the plan
    # unbounded, calibration holds a batch of 16 frames' activations: far above the budget
    assert unbounded["added_bytes"] > 3 * budget, (unbounded["before"] / MB, unbounded["after"] / MB)
    # bounded: what calibration added to the process's peak stays within the budget
    assert bounded["added_bytes"] <= budget, bounded["added_bytes"] / MB
    assert unbounded["amax"].keys() == bounded["amax"].keys()
    for name, amax in unbounded["amax"].items():  # sub-batches: ONNX Runtime rounds by batch size, ~1e-7
        assert bounded["amax"][name] == pytest.approx(amax, rel=1e-4), name


def test_tensor_groups_give_identical_histograms() -> None:
    """A budget below one frame's tensors: several passes over the frames, one group of tensors each; the
    histograms are exactly those of one unbounded pass (same batches of one frame, same bin widths, same counts)."""
    model = wide_model()
    tensors = ["x", "r0", "r1"]
    unbounded, *_ = collect_histograms(model, tensors, feeds(4, batch=1), max_memory_bytes=None)
    grouped, batches, samples, use = collect_histograms(model, tensors, iter(feeds(4, batch=1)),
                                                        max_memory_bytes=32 * MB)
    assert use.passes > 1 and (batches, samples) == (4, 4)  # an iterator: spilled once, replayed per pass
    for name in tensors:
        a, b = unbounded[name], grouped[name]
        assert a.counts is not None and b.counts is not None
        assert (a.bin_width, a.values_seen, a.max_abs, a.min_value) == (b.bin_width, b.values_seen, b.max_abs,
                                                                        b.min_value), name
        assert np.array_equal(a.counts, b.counts), name


def test_plan_splits_batch_then_tensors() -> None:
    sizes = {"a": 10 * MB, "b": 10 * MB, "c": 10 * MB}
    whole = plan_collection(["a", "b", "c"], sizes, 1 * MB, 8, 1024 * MB)
    assert whole.groups == (("a", "b", "c"),) and whole.sub_batch is None
    split = plan_collection(["a", "b", "c"], sizes, 1 * MB, 8, 200 * MB)
    assert split.groups == (("a", "b", "c"),) and split.sub_batch is not None and 1 <= split.sub_batch < 8
    assert split.estimated_bytes <= 200 * MB
    grouped = plan_collection(["a", "b", "c"], sizes, 1 * MB, 8, 50 * MB)
    assert len(grouped.groups) > 1 and sorted(t for g in grouped.groups for t in g) == ["a", "b", "c"]
    assert grouped.estimated_bytes <= 50 * MB


def test_budget_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="below the 32 MB minimum"):
        calibrate(wide_model(), feeds(1), max_memory_bytes=8 * MB)
