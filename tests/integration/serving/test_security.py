"""TLS, mutual TLS, bearer tokens (kept current), reflection behind them, idle connections reaped — on a real
server; certificates are generated here."""

import asyncio
import contextlib
import datetime
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from trtserve.errors import ConfigError
from trtserve.repository import ModelRepository
from trtserve.serving.process import start_server_process, stop_server_process
from trtserve.serving.security import KeepaliveSettings, TlsSettings, TokenAuthInterceptor, TokenSource, load_tokens
from trtserve.serving.server import Server, ServerSettings
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ...conftest import ENGINES


def _cert(name: str, issuer_key, issuer_name, key, ca: bool = False, san: str | None = None):  # type: ignore[no-untyped-def]
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj) -> bytes:  # type: ignore[no-untyped-def]
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    ca = _cert("test-ca", ca_key, ca_name, ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = {"ca": _pem(ca), "server_cert": _pem(_cert("localhost", ca_key, ca_name, server_key, san="localhost")),
             "server_key": _pem(server_key), "client_cert": _pem(_cert("client", ca_key, ca_name, client_key)),
             "client_key": _pem(client_key)}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {name: d / name for name in files}


async def _serve(settings: ServerSettings, test) -> None:  # type: ignore[no-untyped-def]
    server = Server(settings, ModelRepository(ENGINES))
    await server.start()
    try:
        await test(server.port)
    finally:
        await server.stop()


def _models(channel: grpc.aio.Channel, metadata=()):  # type: ignore[no-untyped-def]
    return pb_grpc.DetectionServiceStub(channel).ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)


def test_tls_and_mutual_tls(pki: dict[str, Path]) -> None:
    options = (("grpc.ssl_target_name_override", "localhost"),)
    read = {k: v.read_bytes() for k, v in pki.items()}

    async def tls_only(port: int) -> None:
        creds = grpc.ssl_channel_credentials(read["ca"])
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options) as channel:
            assert [m.name for m in (await _models(channel)).models] == ["shapes"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:  # plaintext is refused
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _models(channel)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    settings = ServerSettings(grpc_port=0, metrics_port=0, tls=TlsSettings(pki["server_cert"], pki["server_key"]))
    asyncio.run(_serve(settings, tls_only))

    async def mutual(port: int) -> None:
        with_cert = grpc.ssl_channel_credentials(read["ca"], read["client_key"], read["client_cert"])
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", with_cert, options) as channel:
            assert (await _models(channel)).models
        without = grpc.ssl_channel_credentials(read["ca"])
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", without, options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _models(channel)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    settings = ServerSettings(grpc_port=0, metrics_port=0,
                              tls=TlsSettings(pki["server_cert"], pki["server_key"], pki["ca"]))
    asyncio.run(_serve(settings, mutual))


def test_bearer_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\nsecret-one\n\nsecret-two\n")

    async def test(port: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert (await _models(channel, (("authorization", "Bearer secret-two"),))).models
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "secret-one"),)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _models(channel, metadata)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            stream = pb_grpc.DetectionServiceStub(channel).StreamDetect(iter([pb.DetectRequest()]))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                _ = [r async for r in stream]
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token

    asyncio.run(_serve(ServerSettings(grpc_port=0, metrics_port=0, tokens_file=tokens), test))
    tokens.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no token"):
        load_tokens(tokens)


# --- the tokens file kept current, failed attempts logged, reflection behind the token, idle connections reaped

@contextlib.asynccontextmanager
async def _serving(settings: ServerSettings) -> AsyncIterator[Server]:
    server = Server(settings, ModelRepository(ENGINES))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _accepted(channel: grpc.aio.Channel, token: str) -> bool:
    try:
        await _models(channel, _bearer(token))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
        return False
    return True


def _write_tokens(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_a_token_removed_from_the_file_stops_working_without_a_restart(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    tokens = _write_tokens(tmp_path / "tokens", "alpha\nbravo\n")

    async def test() -> None:
        async with _serving(ServerSettings(grpc_port=0, metrics_port=None, tokens_file=tokens)) as server:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                assert await _accepted(channel, "bravo")
                tokens.write_text("alpha\ncharlie\n")  # bravo revoked, charlie added
                deadline = time.monotonic() + 5.0  # the file is checked at most once a second
                while await _accepted(channel, "bravo"):
                    assert time.monotonic() < deadline, "a revoked token still works 5 s after the change"
                    await asyncio.sleep(0.1)
                assert await _accepted(channel, "charlie") and await _accepted(channel, "alpha")

                tokens.unlink()  # a missing file keeps the tokens in force (logged), never opens the server
                await asyncio.sleep(1.1)
                assert await _accepted(channel, "alpha") and not await _accepted(channel, "bravo")

                _write_tokens(tokens, "delta\n")
                server.reload_tokens()  # what SIGHUP calls: in force at once, no interval to wait for
                assert await _accepted(channel, "delta") and not await _accepted(channel, "alpha")

    with caplog.at_level(logging.INFO, logger="trtserve.serving.security"):
        asyncio.run(test())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "still accepting the 2 token(s)" in errors[0], errors


def test_sighup_reloads_the_tokens_file_of_a_server_process(tmp_path: Path) -> None:
    tokens = _write_tokens(tmp_path / "tokens", "alpha\n")
    log = tmp_path / "server.log"
    process, address = start_server_process(ENGINES, "shapes", "fp32", log, extra_args=["--tokens-file", str(tokens)])
    try:
        def accepted(channel: grpc.Channel, token: str) -> bool:
            stub = pb_grpc.DetectionServiceStub(channel)
            try:
                stub.ListModels(pb.ListModelsRequest(), metadata=_bearer(token), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
                return False
            return True

        with grpc.insecure_channel(address) as channel:
            assert accepted(channel, "alpha")
            tokens.write_text("bravo\n")
            process.send_signal(signal.SIGHUP)  # without a handler SIGHUP would end the process
            deadline = time.monotonic() + 5.0
            while not accepted(channel, "bravo"):
                assert process.poll() is None, f"the server died of SIGHUP:\n{log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "the new token is not accepted 5 s after SIGHUP"
                time.sleep(0.1)
            assert not accepted(channel, "alpha")
            assert process.poll() is None
    finally:
        assert stop_server_process(process) == 0, log.read_text()[-2000:]


def test_failed_authentications_are_logged_once_per_interval_and_never_the_token(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokens = _write_tokens(tmp_path / "tokens", "the-real-token\n")
    sent = ("guess-one-4f1c", "guess-two-9a2b", "the-real-token-but-longer")

    async def test() -> None:
        # the interceptor on a bare gRPC server, the health service behind it, a short interval
        server = grpc.aio.server(interceptors=[TokenAuthInterceptor(TokenSource(tokens), (),
                                                                    failed_auth_log_interval_s=1.0)])
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def check(metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
                    try:
                        await stub.Check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        return exc.code()
                    return grpc.StatusCode.OK

                assert await check(_bearer("the-real-token")) == grpc.StatusCode.OK
                for metadata in (_bearer(sent[0]), (), (("authorization", sent[1]),), _bearer(sent[2]),
                                 _bearer(sent[0])):
                    assert await check(metadata) == grpc.StatusCode.UNAUTHENTICATED
                first = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
                await asyncio.sleep(1.5)  # the interval ends: the 4 held back are summed in one line
                assert await check(_bearer("the-real-token")) == grpc.StatusCode.OK
                both = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
                assert len(first) == 1 and "refused 1 call(s)" in first[0] and "127.0.0.1" in first[0], first
                assert len(both) == 2 and "refused 4 call(s)" in both[1], both
                assert "grpc.health.v1.Health/Check" in both[1] and "unknown token" in both[1]
        finally:
            await server.stop(None)

    with caplog.at_level(logging.INFO, logger="trtserve.serving.security"):
        asyncio.run(test())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not any(token in logged for token in sent) and "the-real-token" not in logged


def test_reflection_needs_the_token_unless_the_setting_opens_it(tmp_path: Path) -> None:
    tokens = _write_tokens(tmp_path / "tokens", "alpha\n")
    list_services = reflection_pb2.ServerReflectionRequest(list_services="")

    async def services(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> list[str]:
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([list_services]), metadata=metadata, timeout=10)
        return [s.name async for reply in stream for s in reply.list_services_response.service]

    async def requires_token() -> None:
        async with _serving(ServerSettings(grpc_port=0, metrics_port=None, tokens_file=tokens)) as server:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await services(channel)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "trtserve.v1.DetectionService" in await services(channel, _bearer("alpha"))

    async def open_reflection() -> None:
        settings = ServerSettings(grpc_port=0, metrics_port=None, tokens_file=tokens,
                                  auth_reflection_requires_token=False)
        async with _serving(settings) as server:
            address = f"127.0.0.1:{server.port}"

            def with_grpc_reflection_client() -> set[str]:  # the stock client, which sends no metadata
                with grpc.insecure_channel(address) as channel:
                    return set(ProtoReflectionDescriptorDatabase(channel).get_services())

            assert "trtserve.v1.DetectionService" in await asyncio.to_thread(with_grpc_reflection_client)
            async with grpc.aio.insecure_channel(address) as channel:
                assert not await _accepted(channel, "")  # the API itself still needs the token

    asyncio.run(requires_token())
    asyncio.run(open_reflection())


def test_idle_connections_are_reaped() -> None:
    async def state_after_idle(keepalive: KeepaliveSettings, wait_s: float) -> grpc.ChannelConnectivity:
        async with _serving(ServerSettings(grpc_port=0, metrics_port=None, keepalive=keepalive)) as server:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                await _models(channel)
                assert channel.get_state() == grpc.ChannelConnectivity.READY
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), wait_s)
                state = channel.get_state()
                assert (await _models(channel)).models  # a reaped client simply reconnects at its next call
                return state

    # the server closes (GOAWAY) a connection without calls after max_connection_idle_s; the client goes IDLE
    reaped = asyncio.run(state_after_idle(KeepaliveSettings(max_connection_idle_s=0.5), 5.0))
    assert reaped == grpc.ChannelConnectivity.IDLE
    # the default (300 s) leaves it alone
    assert asyncio.run(state_after_idle(KeepaliveSettings(), 1.5)) == grpc.ChannelConnectivity.READY
