"""Transport security and authentication: TLS / mutual TLS credentials and bearer-token auth."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from trtserve.errors import ConfigError

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")


@dataclass(frozen=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: mutual TLS, clients must present a certificate it signed


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    key, cert = _read(tls.key_file, "TLS private key"), _read(tls.cert_file, "TLS certificate")
    ca = _read(tls.client_ca_file, "client CA bundle") if tls.client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def load_tokens(path: Path) -> frozenset[str]:
    """One token per line; blank lines and ``#`` comments ignored. An empty file is an error."""
    tokens = frozenset(line.strip() for line in _read(path, "tokens file").decode().splitlines()
                       if line.strip() and not line.strip().startswith("#"))
    if not tokens:
        raise ConfigError(f"tokens file {path} holds no token; one token per line")
    return tokens


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` from the tokens file (UNAUTHENTICATED)."""

    def __init__(self, tokens: frozenset[str], exempt_services: tuple[str, ...] = ()) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        self._exempt = frozenset(exempt_services)

    def _authorized(self, metadata: Any) -> bool:
        header = dict(metadata or ()).get("authorization", "")
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return False
        given = header[len("Bearer "):].strip().encode()
        return any(hmac.compare_digest(given, t) for t in self._tokens)  # constant time per token

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        service = handler_call_details.method.strip("/").split("/")[0]
        handler = await continuation(handler_call_details)
        if service in self._exempt or handler is None or self._authorized(handler_call_details.invocation_metadata):
            return handler

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or invalid bearer token (metadata 'authorization: Bearer <token>')")

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)
