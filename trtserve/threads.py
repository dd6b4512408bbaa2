"""The server's threads by role, visible to the operating system: ``top -H``, ``ps -L``, ``perf`` and ``/proc``.

Python names its threads for Python only (``trtserve-decode_0``); the kernel knows every thread of the process as
``trtserve``. The server's pools give each of their threads an OS name that says its role — ``decode-N`` (decode and
letterbox), ``engine-<model>_N`` (a model's batches: normalize, the engine, the head) — and :func:`cpu_s_by_role`
reads a local process's CPU time per role from ``/proc``, which is how ``trtserve bench`` says where a frame's CPU
went inside the server. The main thread (the event loop: gRPC, protobuf, the batcher) keeps the process's own name,
so ``ps`` and ``pgrep trtserve`` still find the server.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DECODE = "decode"
ENGINE = "engine"
DRIFT = "drift"
ROLES = (ENGINE, DECODE, DRIFT)  # by OS thread name prefix; besides them: event_loop (the main thread) and other
_LINUX_NAME_BYTES = 15  # TASK_COMM_LEN 16, with the terminating NUL
_PR_SET_NAME = 15


def set_os_thread_name(name: str) -> None:
    """Name the calling thread for the operating system (Linux; its first 15 bytes). Elsewhere, or where the C
    library is not reachable, nothing happens: the name is a convenience, never a requirement."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:_LINUX_NAME_BYTES], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def role_pool(workers: int, role: str, label: str = "") -> ThreadPoolExecutor:
    """A thread pool whose threads are named ``trtserve-<label or role>_N`` in Python and ``<role>[-<label>]-N``
    (or ``_N``) for the OS."""
    prefix = f"trtserve-{label or role}"

    def name_thread() -> None:
        index = threading.current_thread().name.rsplit("_", 1)[-1]
        set_os_thread_name(f"{role}-{label}_{index}" if label else f"{role}-{index}")

    return ThreadPoolExecutor(workers, thread_name_prefix=prefix, initializer=name_thread)


def cpu_s_by_role(pid: int) -> dict[str, float] | None:
    """CPU seconds (user + system) process ``pid``'s live threads have used, per role: :data:`ROLES` by OS thread
    name, ``event_loop`` for the main thread, ``other`` for the rest (gRPC's own threads, the metrics server, a
    runtime's worker threads). Threads that have ended are not counted. None off Linux or for a process not here."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    roles: dict[str, float] = {role: 0.0 for role in (*ROLES, "event_loop", "other")}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        role = ("event_loop" if task.name == str(pid) else
                next((r for r in ROLES if name.startswith(r + "-")), "other"))
        roles[role] += (int(fields[11]) + int(fields[12])) / tick
    return roles
