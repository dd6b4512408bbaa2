"""A grpc.health.v1 probe for container HEALTHCHECKs and scripts (``trtserve health``).

Kubernetes uses its native gRPC probes; Docker and Podman have none, so the images run this instead.
It connects over plaintext gRPC (as Kubernetes' probes do), asks ``Health/Check`` for one service name
("" is the whole server, a model name is that model) and reports SERVING or why not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_PORT = 8001


@dataclass(frozen=True)
class HealthResult:
    serving: bool
    detail: str  # SERVING, NOT_SERVING, SERVICE_UNKNOWN, or the transport error


def default_address(environ: dict[str, str] | None = None) -> str:
    """``127.0.0.1:<TRTSERVE_GRPC_PORT or 8001>``: the server as seen from inside its own container."""
    env = os.environ if environ is None else environ
    return f"127.0.0.1:{env.get('TRTSERVE_GRPC_PORT', DEFAULT_PORT)}"


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
