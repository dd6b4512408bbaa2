"""OS thread names by role, and the per-role CPU reading the bench uses (Linux /proc)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from trtserve.threads import DECODE, ENGINE, cpu_s_by_role, os_thread_named, role_pool, set_os_thread_name

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OS thread names are read from /proc")


def _os_name(tid: int) -> str:
    return Path(f"/proc/{os.getpid()}/task/{tid}/comm").read_text().strip()


@linux_only
def test_pool_threads_carry_their_role_for_the_os() -> None:
    with role_pool(2, DECODE) as decode, role_pool(1, ENGINE, "a-very-long-model-name") as engine:
        names = {decode.submit(lambda: (threading.current_thread().name, _os_name(threading.get_native_id())))
                 .result() for _ in range(4)}
        engine_name = engine.submit(lambda: (threading.current_thread().name,
                                             _os_name(threading.get_native_id()))).result()
    assert all(py.startswith("trtserve-decode_") and os_name == f"decode-{py.rsplit('_', 1)[1]}"
               for py, os_name in names)
    assert engine_name[0] == "trtserve-a-very-long-model-name_0"
    assert engine_name[1] == "engine-0-a-very"  # the kernel keeps 15 bytes: the index comes before the label
    assert _os_name(threading.get_native_id()) != "engine-0-a-very"  # the caller's own name is untouched


@linux_only
def test_threads_started_inside_os_thread_named_inherit_the_name_and_the_caller_gets_its_own_back() -> None:
    """How ONNX Runtime's intra-op workers, started with their session, come to be named ``runtime-ort``."""
    own = _os_name(threading.get_native_id())
    started: list[str] = []
    with os_thread_named("runtime-test"):
        assert _os_name(threading.get_native_id()) == "runtime-test"
        worker = threading.Thread(target=lambda: started.append(_os_name(threading.get_native_id())))
        worker.start()
        worker.join()
    assert started == ["runtime-test"] and _os_name(threading.get_native_id()) == own


@linux_only
def test_cpu_by_role_attributes_a_busy_threads_time_to_its_role() -> None:
    spun, release = threading.Event(), threading.Event()

    def spin() -> None:
        set_os_thread_name("engine-test")
        end = time.thread_time() + 0.15
        while time.thread_time() < end:
            pass
        spun.set()
        release.wait(10)  # alive while it is read: an ended thread's time is no longer listed per thread

    before = cpu_s_by_role(os.getpid())
    thread = threading.Thread(target=spin)
    thread.start()
    assert spun.wait(30)
    during = cpu_s_by_role(os.getpid())
    release.set()
    thread.join()
    assert before is not None and during is not None
    assert set(during) == {"engine", "decode", "drift", "runtime", "event_loop", "other"}
    assert during["engine"] - before["engine"] >= 0.1
    assert during["decode"] == before["decode"]


def test_cpu_by_role_of_a_process_that_is_not_there_is_none() -> None:
    assert cpu_s_by_role(2**22 + 12345) is None
