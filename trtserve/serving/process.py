"""A ``trtserve serve`` process on a free loopback port: start it, wait until its health says SERVING, stop it.

What the demo, the benchmarks and the end-to-end tests use to run a real server beside themselves.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from trtserve.errors import ServerError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server_process(repository: Path | None, model: str, precision: str, log_path: Path,
                         startup_timeout_s: float = 120.0, metrics_port: int = 0, extra_args: Sequence[str] = (),
                         http_port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``trtserve serve`` on a free loopback port; return it once its health says SERVING.

    ``metrics_port`` 0 lets the server pick a free one (the log says which). KServe over HTTP is off unless
    ``http_port`` is given (0: any free one), so servers started side by side never contend for port 8000.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    cmd = [sys.executable, "-m", "trtserve.cli"]
    if repository is not None:
        cmd += ["--repository", str(repository)]
    cmd += ["serve", "--grpc-port", str(port), "--model", model, "--precision", precision,
            "--metrics-port", str(metrics_port), "--http-port", "off" if http_port is None else str(http_port),
            *extra_args]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + startup_timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if server.poll() is not None:
                raise ServerError(f"the server exited with status {server.returncode} before it was ready; "
                                  f"see {log_path}:\n{log_path.read_text()[-2000:]}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=model), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return server, address
            except grpc.RpcError:  # not listening yet
                pass
            if time.monotonic() > deadline:
                stop_server_process(server)
                raise ServerError(f"the server was not ready within {startup_timeout_s} s; see {log_path}")
            time.sleep(0.2)


def stop_server_process(server: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM (the server drains), then wait; kill only if it overstays ``timeout_s``."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return int(server.returncode)
