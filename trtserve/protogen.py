"""Generate the Python code of ``protos/`` into the package (``make protos``); reproducible."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) on every .proto under protos/, writing under ``out_dir``."""
    from grpc_tools import protoc

    sources = sorted(PROTOS.rglob("*.proto"))
    args = ["protoc", f"-I{PROTOS}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *(str(s) for s in sources)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {sources}")
    return [out_dir / s.relative_to(PROTOS).parent / f"{s.stem}{suffix}"
            for s in sources for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path)  # noqa: T201
