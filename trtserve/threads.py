"""The server's threads by role, visible to the operating system: ``top -H``, ``ps -L``, ``perf`` and ``/proc``.

Python names its threads for Python only (``trtserve-decode_0``); the kernel knows every thread of the process as
``trtserve``. The server's pools give each of their threads an OS name that says its role — ``decode-N`` (decode and
letterbox), ``engine-N-<model>`` (a model's batches: normalize, the engine, the head), ``runtime-ort`` (ONNX Runtime's
own intra-op worker threads, which take the name of the thread that opens the session: :func:`os_thread_named`) — and
:func:`cpu_s_by_role` reads a local process's CPU time per role from ``/proc``, which is how ``trtserve bench`` says
where a frame's CPU went inside the server. The main thread (the event loop: gRPC, protobuf, the batcher) keeps the
process's own name, so ``ps`` and ``pgrep trtserve`` still find the server.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

DECODE = "decode"
ENGINE = "engine"
DRIFT = "drift"
RUNTIME = "runtime"  # an engine runtime's own worker threads (ONNX Runtime's intra-op pool)
ROLES = (ENGINE, DECODE, DRIFT, RUNTIME)  # by OS thread name prefix; besides them: event_loop (the main thread), other
_LINUX_NAME_BYTES = 15  # TASK_COMM_LEN 16, with the terminating NUL
_PR_SET_NAME, _PR_GET_NAME = 15, 16


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """Linux's prctl from the C library, loaded once; None elsewhere or where it cannot be reached."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None


def set_os_thread_name(name: str) -> None:
    """Name the calling thread for the operating system (Linux; its first 15 bytes). Elsewhere, or where the C
    library is not reachable, nothing happens: the name is a convenience, never a requirement."""
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_NAME, name.encode()[:_LINUX_NAME_BYTES], 0, 0, 0)


def _os_thread_name() -> str | None:
    """The calling thread's OS name (Linux), or None."""
    prctl = _prctl()
    if prctl is None:
        return None
    buffer = ctypes.create_string_buffer(_LINUX_NAME_BYTES + 1)
    if prctl(_PR_GET_NAME, buffer, 0, 0, 0) != 0:
        return None
    return buffer.value.decode(errors="replace")


@contextmanager
def os_thread_named(name: str) -> Iterator[None]:
    """The calling thread carries OS name ``name`` inside the block, its own name again after it: threads a library
    starts meanwhile (ONNX Runtime's intra-op pool, created with its session) inherit ``name``."""
    before = _os_thread_name()
    set_os_thread_name(name)
    try:
        yield
    finally:
        if before is not None:
            set_os_thread_name(before)


def role_pool(workers: int, role: str, label: str = "") -> ThreadPoolExecutor:
    """A thread pool whose threads are named ``trtserve-<label or role>_N`` in Python and ``<role>-N[-<label>]`` for
    the OS (the index before the label, so that the kernel's 15 bytes keep it)."""
    prefix = f"trtserve-{label or role}"

    def name_thread() -> None:
        index = threading.current_thread().name.rsplit("_", 1)[-1]
        set_os_thread_name(f"{role}-{index}-{label}" if label else f"{role}-{index}")

    return ThreadPoolExecutor(workers, thread_name_prefix=prefix, initializer=name_thread)


def _stat_cpu_s(stat: str, tick: int) -> float:
    """utime + stime of a ``/proc/.../stat`` line, in seconds (fields 14 and 15 of proc(5))."""
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / tick


def cpu_s_by_role(pid: int) -> dict[str, float] | None:
    """CPU seconds (user + system) process ``pid``'s live threads have used, per role: :data:`ROLES` by OS thread
    name, ``event_loop`` for the main thread, ``other`` for the rest (gRPC's own threads, the metrics server, ...).
    Threads that have ended are not counted. None off Linux or for a process not here."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    roles: dict[str, float] = dict.fromkeys((*ROLES, "event_loop", "other"), 0.0)
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        role = ("event_loop" if task.name == str(pid) else
                next((r for r in ROLES if name.startswith(r + "-")), "other"))
        roles[role] += _stat_cpu_s(stat, tick)
    return roles


CpuReading = tuple[float, dict[str, float]]  # a process's CPU seconds in all, and its live threads' by role


def server_cpu_s_by_role(pid: int | None) -> CpuReading | None:
    """A local process's CPU seconds in all (``/proc/<pid>/stat``: its ended threads too) and by thread role
    (:func:`cpu_s_by_role`); None when unknown (no pid, not here, not Linux)."""
    if pid is None:
        return None
    try:
        total = _stat_cpu_s(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))
    except OSError:
        return None
    roles = cpu_s_by_role(pid)
    return None if roles is None else (total, roles)


def cpu_delta_by_role(before: CpuReading, after: CpuReading) -> dict[str, float]:
    """CPU seconds per role between two readings; what threads that ended meanwhile used is put under ``other``
    (the process's total keeps it, its live threads no longer list it)."""
    delta = {role: after[1][role] - before[1].get(role, 0.0) for role in after[1]}
    delta["other"] += (after[0] - before[0]) - sum(delta.values())
    return delta
