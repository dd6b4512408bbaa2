"""``trtserve build | doctor``: TensorRT engines for this host, and what this host can run."""

from __future__ import annotations

import argparse
from pathlib import Path

from trtserve.cli.common import Subcommands, emit


def cmd_build(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from trtserve.repository import ModelRepository
    from trtserve.tensorrt.builder import build_engine
    from trtserve.tensorrt.keys import GIB, BuildSettings, default_settings

    config = ModelRepository(args.repository).get(args.model)
    base = default_settings(config, args.precision)
    max_batch = base.max_batch if args.max_batch is None else args.max_batch
    settings = BuildSettings(
        precision=args.precision, max_batch=max_batch,
        opt_batch=min(base.opt_batch, max_batch) if args.opt_batch is None else args.opt_batch,
        workspace_bytes=int(args.workspace_gb * GIB) if args.workspace_gb is not None else base.workspace_bytes,
        dla_core=args.dla_core if args.dla_core is not None else base.dla_core,
        execution_contexts=args.contexts)
    result = build_engine(config, settings, args.timing_cache, device_id=args.device)
    r = result.record
    emit({"plan": str(result.plan), **asdict(r)}, args.json,
          f"built {result.plan} in {r.build_time_s} s\n  {r.build_path}; TensorRT {r.tensorrt_version} on {r.gpu_name} "
          f"(compute {r.compute_capability}); batch {settings.opt_batch} opt / {settings.max_batch} max")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from trtserve.deploy.doctor import diagnose, render

    report = diagnose()
    emit(report.as_dict(), args.json, render(report))
    return 0


def register(sub: Subcommands) -> None:
    """Add this group's subcommands to the ``trtserve`` parser."""
    p = sub.add_parser("build", help="build a TensorRT engine for this host's GPU and TensorRT version")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], required=True)
    p.add_argument("--max-batch", type=int, help="largest batch (default: the model's max_batch_size)")
    p.add_argument("--opt-batch", type=int, help="batch TensorRT tunes for (default: engine.opt_batch or max)")
    p.add_argument("--workspace-gb", type=float, help="builder workspace in GiB (default: engine.workspace_gb, 2)")
    p.add_argument("--dla-core", type=int, help="build for this DLA core, with GPU fallback (Jetson)")
    p.add_argument("--timing-cache", type=Path, help="read and update this TensorRT timing cache file")
    p.add_argument("--contexts", type=int, default=2, help="optimization profiles = concurrent batches (default 2)")
    p.add_argument("--device", type=int, default=None, metavar="N",
                   help="build on GPU N (CUDA index, as model.yaml's device:); default: GPU 0")
    p.add_argument("--repository", type=Path, default=argparse.SUPPRESS, help="model repository folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("doctor", help="what this host has and which backends and precisions will work")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)
