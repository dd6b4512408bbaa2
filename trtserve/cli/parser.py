"""``trtserve`` command line: a thin adapter over the library. This module only assembles the parser; each
command group (:mod:`trtserve.cli.models`, ``calibrate``, ``build``, ``serve``, ``bench``) registers its own
subcommands and imports what it runs only when it runs.

User errors (bad configuration, missing files, undecodable images) print one line to stderr and
exit with status 2; no traceback. Pass ``--verbose`` to see debug logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from trtserve import __version__
from trtserve.cli import bench, build, calibrate, detect, evaluate, models, serve
from trtserve.cli.common import EXIT_USER_ERROR
from trtserve.errors import TrtserveError

GROUPS = (models, detect, evaluate, calibrate, build, serve, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtserve", description="Serve object detectors on TensorRT and "
                                     "ONNX Runtime, calibrated to INT8.")
    parser.add_argument("--version", action="version", version=f"trtserve {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser.add_argument("--repository", type=Path, default=None,
                        help="model repository folder (default: $TRTSERVE_MODEL_REPOSITORY or ./engines)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in GROUPS:  # in the order of the stages: models, calibrate, build, serve, bench
        group.register(sub)
    for command in sub.choices.values():  # `trtserve eval --repository DIR` as well as `trtserve --repository DIR eval`
        if "--repository" not in command._option_string_actions:  # argparse has no public "has option"
            command.add_argument("--repository", type=Path, default=argparse.SUPPRESS, help="model repository folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
        return code
    except TrtserveError as exc:
        sys.stderr.write(f"trtserve: error: {exc}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130

