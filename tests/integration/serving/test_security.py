"""TLS, mutual TLS and bearer tokens on a real server; certificates are generated here."""

import asyncio
import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trtserve.errors import ConfigError
from trtserve.repository import ModelRepository
from trtserve.serving.security import TlsSettings, load_tokens
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
