"""A grpc.health.v1 probe for container HEALTHCHECKs and scripts (``trtserve health``).

Kubernetes uses its native gRPC probes; Docker and Podman have none, so the images run this instead.
It connects over plaintext gRPC (as Kubernetes' probes do), asks ``Health/Check`` for one service name
("" is the whole server, a model name is that model) and reports SERVING or why not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8001
DEFAULT_CONFIG = Path("/etc/trtserve/server.yaml")  # where the images mount the server config


@dataclass(frozen=True)
class HealthResult:
    serving: bool
    detail: str  # SERVING, NOT_SERVING, SERVICE_UNKNOWN, or the transport error


def default_address(environ: Mapping[str, str] | None = None) -> str:
    """``127.0.0.1:<grpc_port>``: the server as seen from inside its own container.

    The port is resolved as the server resolves it: the config file the entrypoint uses (``TRTSERVE_CONFIG``,
    else ``/etc/trtserve/server.yaml`` when present), then ``TRTSERVE_GRPC_PORT``; 8001 when neither says.
    """
    from trtserve.errors import ConfigError
    from trtserve.serving.settings import load_server_settings

    env = os.environ if environ is None else environ
    config = env.get("TRTSERVE_CONFIG") or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)
    try:
        port = load_server_settings(Path(config) if config else None, env).grpc_port
    except ConfigError:  # the server refuses such a config too: probe the default, which reports it down
        port = DEFAULT_PORT
    return f"127.0.0.1:{port}"


def check_health(address: str, service: str = "", timeout_s: float = 3.0) -> HealthResult:
    """Ask ``grpc.health.v1.Health/Check`` at ``address``; never raises for an unreachable server."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return HealthResult(False, f"SERVICE_UNKNOWN: {service!r} is not served there")
            return HealthResult(False, f"{code.name}: {exc.details()}")
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return HealthResult(reply.status == health_pb2.HealthCheckResponse.SERVING, name)
