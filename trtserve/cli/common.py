"""What the command groups share: printing text or JSON, the options of commands that open a model, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trtserve.detector import Detector

EXIT_USER_ERROR = 2
Subcommands = Any  # argparse's _SubParsersAction (private); each group adds its parsers to it


# What OpenCV's video reader and FFmpeg print straight to file descriptor 2 about a source ("[h264 @ 0x...] error
# while decoding MB", "[mov,mp4,... @ 0x...] moov atom not found", "[ WARN:0@0.1] global cap_ffmpeg_impl.hpp ..."),
# besides the image decoders' own lines: commands that read videos send them through the rate-limited filter of
# :func:`trtserve.logs.rate_limit_native_stderr` (one line per kind a minute, with a count), never raw.
NATIVE_VIDEO_WARNINGS = ("[",)


@contextlib.contextmanager
def native_warnings_filtered() -> Iterator[None]:
    """Native libraries' lines about bad frames and sources rate-limited while the block runs (see above); nothing
    to filter where there is no file descriptor 2."""
    from trtserve.logs import NATIVE_DECODER_WARNINGS, rate_limit_native_stderr

    try:
        restore = rate_limit_native_stderr(NATIVE_DECODER_WARNINGS + NATIVE_VIDEO_WARNINGS)
    except OSError:  # a closed stderr: nothing native can reach the user either
        yield
        return
    try:
        yield
    finally:
        restore()


def emit(payload: Any, as_json: bool, text: str) -> None:
    """Print ``payload`` as JSON with ``--json``, else ``text``."""
    sys.stdout.write((json.dumps(payload, indent=2) if as_json else text) + "\n")


def model_command(sub: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand that opens one model of the repository in this process (``--model``, ``--threads``)."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--model", default="shapes", help="model name in the repository (default: shapes)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: default)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def open_detector(args: argparse.Namespace) -> Detector:
    """The detector a :func:`model_command` names (``--model``, ``--precision``, ``--threads``)."""
    from trtserve.backends.base import BackendOptions
    from trtserve.detector import Detector
    from trtserve.repository import ModelRepository

    config = ModelRepository(args.repository).get(args.model)
    options = BackendOptions(intra_op_threads=args.threads)
    return Detector.open(config, getattr(args, "precision", "fp32"), options=options)
