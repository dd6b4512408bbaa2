"""``trtserve models | scenes``: the model repository (``detect``: detect.py, ``eval``: evaluate.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from trtserve.cli.common import EXIT_USER_ERROR, Subcommands, emit
from trtserve.errors import UsageError

logger = logging.getLogger(__name__)


def cmd_models(args: argparse.Namespace) -> int:
    if args.server is not None or args.action is not None:
        return _control(args)
    from trtserve.cli.model_check import check_models, describe
    from trtserve.repository import ModelRepository

    rows: list[dict[str, Any]] = check_models(ModelRepository(args.repository))
    emit(rows, args.json, describe(rows))
    return 0 if all(r["ok"] for r in rows) else EXIT_USER_ERROR


def _control(args: argparse.Namespace) -> int:
    """``trtserve models --server ADDR load|unload|reload NAME``: model control on a running server."""
    from trtserve.cli.remote import RemoteServer

    if args.server is None or args.action is None or args.name is None:
        raise UsageError("model control needs all of --server ADDR, an action (load, unload, reload) and a model "
                         "NAME, e.g. `trtserve models --server 127.0.0.1:8001 reload shapes`")
    with RemoteServer(args.server, token_from(args), tls_ca_from(args)) as server:
        reply = server.control(args.action, args.name)
    emit(reply, args.json, f"{reply['name']}: {reply['state']} version {reply['version']}: {reply['message']}")
    return 0


def token_from(args: argparse.Namespace) -> str | None:
    """``--token``, else ``$TRTSERVE_TOKEN``."""
    import os

    token: str | None = args.token or os.environ.get("TRTSERVE_TOKEN") or None
    return token


def tls_ca_from(args: argparse.Namespace) -> bytes | None:
    """The PEM bytes of ``--tls-ca FILE`` (TLS on, the server's certificate checked against it); None: plaintext."""
    path: Path | None = getattr(args, "tls_ca", None)
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--tls-ca {path}: cannot read it ({exc.strerror or exc}); pass the PEM file of the CA "
                         "that signed the server's certificate") from None


def add_remote_options(p: argparse.ArgumentParser) -> None:
    """``--token`` and ``--tls-ca``: how a client command reaches a server with tokens and TLS."""
    p.add_argument("--token", help="bearer token for a server with tokens (default: $TRTSERVE_TOKEN)")
    p.add_argument("--tls-ca", type=Path, default=None, metavar="FILE",
                   help="connect with TLS, checking the server's certificate against this CA (PEM); the address's "
                        "host must be a name the certificate holds")


def cmd_scenes(args: argparse.Namespace) -> int:
    from trtserve.datasets.synthetic import CALIBRATION_SEED, render_scene, write_coco

    path = write_coco([render_scene(args.seed if args.seed is not None else CALIBRATION_SEED, i)
                       for i in range(args.num)], args.out)
    emit({"images": args.num, "annotations": str(path)}, args.json, f"wrote {args.num} scenes and {path}")
    return 0


def register(sub: Subcommands) -> None:
    """Add this group's subcommands to the ``trtserve`` parser."""
    p = sub.add_parser("models", help="list the model repository; with --server, load/unload/reload a model there")
    p.add_argument("action", nargs="?", choices=["load", "unload", "reload"],
                   help="with --server: load (a loaded model is reloaded), unload or reload NAME while serving")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--server", "--address", dest="server", metavar="ADDR",
                   help="a running server (host:port) with model_control: true")
    add_remote_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("scenes", help="write synthetic scenes (PNG + COCO annotations), e.g. to calibrate with")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num", type=int, default=300)
    p.add_argument("--seed", type=int, default=None, help="root seed (default: the calibration stream)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scenes)
