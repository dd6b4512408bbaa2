"""Logging that a hostile client cannot turn into a flood: one line per kind of fault per interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLog:
    """Log a fault class at most once per ``interval_s``; the next line says how many were left out since.

    Thread-safe (the decode pool and the event loop both report). Keys are the fault classes a caller names
    ("unparsable message", "decode failure"), never client-supplied text, so the table stays small.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` under ``key`` unless ``key`` was logged less than ``interval_s`` ago (then it
        is counted); returns whether it was logged."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            left_out = self._suppressed.pop(key, 0)
        if left_out:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, left_out, self.interval_s)
        self._logger.log(level, message, *args)
        return True

    def warning(self, key: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, message, *args)


# What native decoders print straight to file descriptor 2 about a client's bad image (libjpeg, libpng, OpenCV's
# codecs): one per frame, and a client decides how many frames. Prefixes, matched at the start of a line.
NATIVE_DECODER_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file", "Invalid SOS parameters",
                           "Unsupported marker type", "libpng warning", "libpng error", "[ WARN", "imread_",
                           "imdecode_")


def rate_limit_native_stderr(prefixes: tuple[str, ...] = NATIVE_DECODER_WARNINGS, interval_s: float = 60.0
                             ) -> Callable[[], None]:
    """Route this process's file descriptor 2 through a filter: lines starting with one of ``prefixes`` (what native
    libraries print about a client's bad frame) are written once per kind per ``interval_s`` with a count; every
    other line passes through unchanged, in order. Returns a function that restores fd 2. For a server process:
    the native code writes to the descriptor, so nothing else can hold it back. The filter's own lines go to the
    original descriptor directly (never back through the pipe it drains)."""
    import os

    original = os.dup(2)
    out = logging.getLogger("trtserve.native")
    out.propagate = False
    handler = logging.StreamHandler(os.fdopen(os.dup(original), "w", buffering=1))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    out.addHandler(handler)
    import faulthandler  # a crash's dump must not wait for the pump thread: straight to the original descriptor

    faulthandler.enable(file=handler.stream)
    limited = RateLimitedLog(out, interval_s)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def passthrough(data: bytes) -> None:
        try:
            os.write(original, data)
        except OSError:  # the terminal or the collector went away: keep draining, or every writer to fd 2 blocks
            pass

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source:
            pending = b""
            while chunk := source.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace")
                    prefix = next((p for p in prefixes if text.lstrip().startswith(p)), None)
                    if prefix is None:
                        passthrough(line + b"\n")
                    else:
                        try:
                            limited.warning(prefix, "native decoder: %s", text.strip()[:200])
                        except Exception:  # the filter must outlive any logging failure
                            pass
            if pending:
                passthrough(pending)

    thread = threading.Thread(target=pump, name="trtserve-stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        os.dup2(original, 2)  # closes the pipe's last write end: the pump drains and stops
        thread.join(timeout=2.0)
        if thread.is_alive():  # a child process still holds the pipe: leave the pump its descriptor
            return
        os.close(original)
        out.removeHandler(handler)
        handler.close()

    return restore
