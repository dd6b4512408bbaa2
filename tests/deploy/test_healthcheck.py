"""``trtserve health`` (the images' HEALTHCHECK) against a real grpc.health.v1 server on a free local port."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from trtserve.cli import main
from trtserve.deploy.health import check_health, default_address


@pytest.fixture()
def server() -> Iterator[tuple[str, health.HealthServicer]]:
    servicer = health.HealthServicer()
    srv = grpc.server(ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        srv.stop(None)


def test_serving_and_not_serving(server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]) -> None:
    address, servicer = server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("shapes", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main(["health", "--address", address]) == 0
    assert main(["health", "--address", address, "--service", "shapes"]) == 1
    assert capsys.readouterr().out.splitlines() == ["SERVING", "NOT_SERVING"]
    unknown = check_health(address, "yolo")
    assert not unknown.serving and unknown.detail.startswith("SERVICE_UNKNOWN")


def test_unreachable_server_is_unhealthy_not_a_crash() -> None:
    result = check_health("127.0.0.1:1", timeout_s=1.0)
    assert not result.serving and result.detail.startswith("UNAVAILABLE")


def test_default_address_follows_the_grpc_port_variable() -> None:
    assert default_address({}) == "127.0.0.1:8001"
    assert default_address({"TRTSERVE_GRPC_PORT": "9001"}) == "127.0.0.1:9001"


def test_default_address_follows_the_server_config_file(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("grpc_port: 9101\n")
    assert default_address({"TRTSERVE_CONFIG": str(config)}) == "127.0.0.1:9101"
    assert default_address({"TRTSERVE_CONFIG": str(config), "TRTSERVE_GRPC_PORT": "9102"}) == "127.0.0.1:9102"
