"""Rate-limited logging (trtserve/logs.py): a hostile client cannot turn faults into a flood of log lines."""

import logging
import subprocess
import sys
import textwrap

import pytest

from trtserve.logs import RateLimitedLog


def test_one_line_per_fault_class_per_interval_then_the_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("t"), interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        assert log.warning("bad", "bad message from %s", "a")
        assert not any(log.warning("bad", "bad message from %s", "b") for _ in range(9))
        assert log.warning("other", "another kind")  # kinds are limited apart
        now[0] = 61.0
        assert log.warning("bad", "bad message from %s", "c")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad message from a", "another kind",
                     "bad message from c (and 9 more like it in the last 60 s)"]


def test_native_decoder_warnings_on_fd_2_are_rate_limited_and_the_rest_passes() -> None:
    """libjpeg prints "Corrupt JPEG data" to fd 2 once per bad frame; the filter keeps one line (and a count)."""
    script = textwrap.dedent("""
        import os, sys
        import cv2, numpy as np
        from trtserve.logs import rate_limit_native_stderr
        restore = rate_limit_native_stderr(interval_s=60)
        ok, buf = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))
        data = buf.tobytes()
        i = data.index(b"\\xff\\xc0")
        stray = data[:i] + b"\\x00" + data[i:]  # libjpeg: "Corrupt JPEG data: 1 extraneous bytes before marker"
        for _ in range(50):
            cv2.imdecode(np.frombuffer(stray, np.uint8), cv2.IMREAD_COLOR)
        os.write(2, b"an ordinary line\\n")
        restore()
        os.write(2, b"after restore\\n")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    corrupt = [line for line in lines if "Corrupt JPEG data" in line]
    assert len(corrupt) == 1 and "native decoder" in corrupt[0]
    assert "an ordinary line" in lines and lines[-1] == "after restore"
