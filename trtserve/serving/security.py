"""Transport security and authentication: TLS / mutual TLS credentials, bearer-token auth, connection hygiene.

- :class:`TokenSource` — the tokens file, re-read when it changes (checked with one ``os.stat`` at most once per
  ``check_interval_s``, on the call path) or when asked (SIGHUP). A re-read that fails keeps the tokens already
  loaded and logs one error per failure; see :meth:`TokenSource.reload` for why it is not fail-closed.
- :class:`TokenAuthInterceptor` — ``authorization: Bearer <token>`` or UNAUTHENTICATED; failed attempts are logged
  rate-limited (a count, the peer, the method, the reason — never the token).
- :class:`KeepaliveSettings` / :func:`keepalive_options` — gRPC keepalive and connection idle/age limits, so dead
  and idle connections are reaped.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from trtserve.errors import ConfigError

logger = logging.getLogger(__name__)

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


def warn_if_readable_by_others(path: Path, what: str = "tokens file") -> bool:
    """Log a warning when ``path`` is readable by its group or by everyone; return whether it is.

    Kubernetes Secret volumes are 0644 unless ``defaultMode`` says otherwise, so this is the usual case there.
    The server starts anyway: the mode is the operator's decision, the warning makes sure it is a decision.
    """
    if os.name == "nt":  # no POSIX mode bits to read
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        return False
    who = "everyone" if st.st_mode & stat.S_IROTH else f"its group (gid {st.st_gid})"
    logger.warning("%s %s is readable by %s (mode %s): whoever can read it can call this server; chmod 600 it "
                   "(in Kubernetes: a Secret volume with defaultMode 0440 is readable by the pod's fsGroup only)",
                   what, path, who, oct(stat.S_IMODE(st.st_mode)))
    return True


def _signature(st: os.stat_result) -> tuple[int, ...]:
    # ctime as well as mtime: a tool that keeps mtime (cp -p, rsync -t) or a chmod still counts as a change;
    # inode and device: an atomic rename or a Kubernetes Secret's symlink swap
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class TokenSource:
    """The bearer tokens of one file, kept current.

    Contract: :meth:`tokens` returns the set now in force; at most once per ``check_interval_s`` it stats the
    file and re-reads it when its inode, size, mtime or ctime changed. :meth:`reload` re-reads at once (what
    the server does on SIGHUP). Construction reads the file and raises :class:`ConfigError` if it is missing,
    unreadable or holds no token — the server does not start without tokens. Not thread-safe: call it from one
    thread (the server's event loop).
    """

    def __init__(self, path: Path, check_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._signature = self._stat()
        self._tokens = self._load()
        self._checked_at = time.monotonic()
        self._last_error: str | None = None

    def _stat(self) -> tuple[int, ...] | None:
        try:
            return _signature(os.stat(self.path))
        except OSError:
            return None

    def _load(self) -> tuple[bytes, ...]:
        tokens = load_tokens(self.path)
        warn_if_readable_by_others(self.path)
        return tuple(sorted(t.encode() for t in tokens))

    def tokens(self) -> tuple[bytes, ...]:
        """The tokens in force, after a cheap check for a changed file (at most once per ``check_interval_s``)."""
        now = time.monotonic()
        if now - self._checked_at >= self.check_interval_s:
            self._checked_at = now
            signature = self._stat()
            if signature != self._signature:
                self._signature = signature
                self.reload("the file changed")
        return self._tokens

    def reload(self, why: str = "asked to") -> bool:
        """Re-read the file now; return whether the new tokens are in force.

        A file that is missing, unreadable or holds no token keeps the tokens already loaded (logged as an error
        once, until the file is fixed): a Secret being rotated or an editor's half-written file is a moment
        without a file far more often than a decision to lock everyone out, and locking everyone out — health
        probes aside — would take the service down. To revoke every token, write a file with a new one.
        """
        self._signature = self._stat()
        self._checked_at = time.monotonic()
        try:
            tokens = self._load()
        except ConfigError as exc:
            message = str(exc)
            if message != self._last_error:
                logger.error("%s (%s): still accepting the %d token(s) loaded before; fix the file (one token per "
                             "line) — it is read again when it changes, or on SIGHUP", message, why,
                             len(self._tokens))
                self._last_error = message
            return False
        changed = tokens != self._tokens
        self._tokens, self._last_error = tokens, None
        logger.info("tokens file %s re-read (%s): %d token(s)%s", self.path, why, len(tokens),
                    "" if changed else ", unchanged")
        return True


class _FailedAuthLog:
    """One warning line per ``interval_s`` at most: how many calls were refused, and the latest one's peer, method
    and reason. The first failure is logged at once; failures within the interval are summed and logged when it
    ends. Nothing of the credential the client sent is ever logged."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._logged_at = -math.inf
        self._pending = 0
        self._latest = ("", "", "")
        self._timer: asyncio.TimerHandle | None = None

    def record(self, peer: str, method: str, reason: str) -> None:
        now = time.monotonic()
        self._pending += 1
        self._latest = (peer, method, reason)
        if now - self._logged_at >= self.interval_s:
            self._emit(now)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._logged_at + self.interval_s - now, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._pending:
            self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        peer, method, reason = self._latest
        logger.warning("refused %d call(s) UNAUTHENTICATED in the last %g s; the latest from %s to %s: %s",
                       self._pending, self.interval_s, peer or "an unknown peer", method, reason)
        self._pending, self._logged_at = 0, now


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` from the token source (UNAUTHENTICATED).

    Calls to ``exempt_services`` (by default the health service, for probes) need no token. Refused calls are
    logged at most once per ``failed_auth_log_interval_s``, with their count, never with the token.
    """

    def __init__(self, tokens: TokenSource, exempt_services: tuple[str, ...] = (),
                 failed_auth_log_interval_s: float = 60.0) -> None:
        self._source = tokens
        self._exempt = frozenset(exempt_services)
        self._failures = _FailedAuthLog(failed_auth_log_interval_s)

    def _refusal(self, metadata: Any) -> str | None:
        """Why these call metadata are refused (never quoting the credential), or None when they are accepted."""
        header = dict(metadata or ()).get("authorization")
        if header is None:
            return "no authorization metadata"
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return "authorization metadata is not 'Bearer <token>'"
        given = header[len("Bearer "):].strip().encode()
        # constant time per token, and every token compared: the time says nothing about which one is close
        if sum(hmac.compare_digest(given, t) for t in self._source.tokens()) == 0:
            return "unknown token"
        return None

    def refused(self, authorization: str | None, peer: str, method: str) -> bool:
        """Whether a request with this ``Authorization`` value is refused — logged, rate-limited, as a refused gRPC
        call is. For the other front ends (HTTP), so that every port shares one policy and one log."""
        reason = self._refusal([("authorization", authorization)] if authorization is not None else [])
        if reason is not None:
            self._failures.record(peer, method, reason)
        return reason is not None

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        service = method.strip("/").split("/")[0]
        handler = await continuation(handler_call_details)
        if service in self._exempt or handler is None:
            return handler
        reason = self._refusal(handler_call_details.invocation_metadata)
        if reason is None:
            return handler

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            self._failures.record(context.peer(), method, reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or invalid bearer token (metadata 'authorization: Bearer <token>')")

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


@dataclass(frozen=True)
class KeepaliveSettings:
    """gRPC connection hygiene (YAML ``keepalive:``). None turns a limit off.

    ``time_s`` / ``timeout_s``: the server pings each connection after ``time_s`` without activity and closes it
    when no answer comes within ``timeout_s`` — a camera that lost power no longer holds its stream and its
    frames in flight. ``min_ping_interval_s``: clients may ping this often (more often: GOAWAY
    ``too_many_pings``). ``max_connection_idle_s``: a connection without a call for this long is closed (GOAWAY;
    the client reconnects when it next calls). ``max_connection_age_s``: every connection is closed after this
    long (gRPC adds ±10 % jitter), which spreads clients over new pods after a scale-up, but ends a long
    StreamDetect ``max_connection_age_grace_s`` later (None: ``grace_period_s``), so it is off by default.
    """

    time_s: float = 60.0
    timeout_s: float = 20.0
    min_ping_interval_s: float = 10.0
    max_connection_idle_s: float | None = 300.0
    max_connection_age_s: float | None = None
    max_connection_age_grace_s: float | None = None


def keepalive_options(keepalive: KeepaliveSettings, grace_period_s: float) -> list[tuple[str, int]]:
    """The ``grpc.aio.server`` options (channel arguments) for ``keepalive``; ``grace_period_s`` is the server's
    drain grace, the default grace of a connection past its maximum age."""
    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    options = [("grpc.keepalive_time_ms", ms(keepalive.time_s)),
               ("grpc.keepalive_timeout_ms", ms(keepalive.timeout_s)),
               # clients that ping between calls are not punished for it (their idle connection is still reaped)
               ("grpc.keepalive_permit_without_calls", 1),
               ("grpc.http2.min_ping_interval_without_data_ms", ms(keepalive.min_ping_interval_s)),
               ("grpc.http2.max_pings_without_data", 0)]  # keep pinging a quiet stream: that is when it matters
    if keepalive.max_connection_idle_s is not None:
        options.append(("grpc.max_connection_idle_ms", ms(keepalive.max_connection_idle_s)))
    if keepalive.max_connection_age_s is not None:
        grace = keepalive.max_connection_age_grace_s
        options += [("grpc.max_connection_age_ms", ms(keepalive.max_connection_age_s)),
                    ("grpc.max_connection_age_grace_ms", ms(grace_period_s if grace is None else grace))]
    return options
