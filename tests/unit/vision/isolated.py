"""Measure what decoding a frame costs — peak memory and time — each frame in its own forked process.

OpenCV allocates outside Python's tracemalloc, so memory is read from ``resource.getrusage`` (``ru_maxrss``): a
fresh ``python`` imports the frame intake once, warms its codecs (so their code pages are already resident), then
forks one child per case. A forked child's high-water mark starts at its RSS at the fork, so each child reports
its own growth. Every child runs under an address-space limit (``RLIMIT_AS``: its size at the fork plus
``headroom_mb``), so an old or broken intake fails an allocation instead of taking the machine down.

Usage: ``measure([(name, data, max_pixels), ...], repeats=5)`` -> one dict per case with ``error_type``,
``trtserve_error`` (an instance of trtserve.errors.TrtserveError), ``message``, ``rss_growth_kb``,
``median_s`` (of ``repeats`` calls) and ``exit`` (a child that died: its signal or status).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]

_CHILD = r"""
import gc, json, os, pickle, resource, statistics, sys, time
import numpy as np, cv2
from trtserve.errors import TrtserveError
from trtserve.vision.frames import decode_for_input

def needed_wh(w, h):  # a 256x256 model's letterbox, as the server asks
    s = min(256 / w, 256 / h)
    return max(1, round(w * s)), max(1, round(h * s))

cases, repeats, headroom_mb = pickle.load(open(sys.argv[1], "rb"))
warm = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
for ext in (".jpg", ".png"):
    decode_for_input(cv2.imencode(ext, warm)[1].tobytes(), 1 << 24, needed_wh)
for name, data, max_pixels in cases:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        result = {"name": name}
        try:
            vm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:"))
            limit = (vm_kb * 1024) + headroom_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            gc.collect()
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            times = []
            result.update(error_type=None, trtserve_error=False, message="")
            for _ in range(repeats):
                t0 = time.perf_counter()
                try:
                    decode_for_input(data, max_pixels, needed_wh)
                except BaseException as exc:
                    result.update(error_type=type(exc).__name__, trtserve_error=isinstance(exc, TrtserveError),
                                  message=str(exc)[:500])
                times.append(time.perf_counter() - t0)
            result.update(rss_growth_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0,
                          median_s=statistics.median(times))
        except BaseException as exc:
            result.update(error_type=type(exc).__name__, message=str(exc)[:500], rss_growth_kb=-1, median_s=-1)
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(payload) if payload else {"name": name, "error_type": "died", "trtserve_error": False,
                                                    "message": "", "rss_growth_kb": -1, "median_s": -1}
    result["exit"] = status
    print(json.dumps(result), flush=True)
"""


def measure(cases: list[tuple[str, bytes, int]], repeats: int = 1, headroom_mb: int = 1024,
            timeout_s: float = 300, repo: Path = REPO) -> list[dict[str, Any]]:
    """Decode each (name, data, max_pixels) through decode_for_input in its own forked process; see the module.

    ``repo`` is the checkout whose trtserve is imported (another one, to compare an older intake).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cases.pickle"
        path.write_bytes(pickle.dumps((cases, repeats, headroom_mb)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                              timeout=timeout_s, env=env, cwd=repo, check=False)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if len(results) != len(cases):
        raise RuntimeError(f"isolated decoding ended early (exit {done.returncode}): {done.stderr[-2000:]}")
    return results
