"""Assemble and run the gRPC server: detection service, grpc.health.v1, reflection, graceful drain."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from trtserve.backends import BackendOptions
from trtserve.detector import Detector
from trtserve.kserve import KServeService
from trtserve.pipeline import BatcherConfig, Pipeline
from trtserve.repository import ModelRepository
from trtserve.security import (
    HEALTH_SERVICE,
    REFLECTION_SERVICES,
    TlsSettings,
    TokenAuthInterceptor,
    load_tokens,
    server_credentials,
)
from trtserve.service import DetectionService
from trtserve.v1 import detection_pb2, detection_pb2_grpc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    models: tuple[str, ...] = ("shapes",)
    precision: str = "fp32"
    host: str = "127.0.0.1"
    grpc_port: int = 8001  # 0: any free port
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    workers: int = 2
    grace_period_s: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_streams: int = 100  # per connection (HTTP/2 streams)
    stream_max_in_flight: int = 4  # frames of one StreamDetect call in the pipeline at once
    tls: TlsSettings | None = None  # None: plaintext (fine on loopback only)
    tokens_file: Path | None = None  # bearer-token auth when set
    auth_exempt_services: tuple[str, ...] = (HEALTH_SERVICE, *REFLECTION_SERVICES)


class Server:
    """Load models, serve them, drain on stop. ``port`` is the bound port after :meth:`start`."""

    def __init__(self, settings: ServerSettings, repository: ModelRepository | None = None) -> None:
        self.settings = settings
        self.repository = repository or ModelRepository()
        self.port = 0
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="trtserve-worker")
        self._pipelines: dict[str, Pipeline] = {}
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None

    @property
    def pipelines(self) -> dict[str, Pipeline]:
        return self._pipelines

    async def start(self) -> None:
        for name in self.settings.models:
            detector = Detector.open(self.repository.get(name), self.settings.precision,
                                     options=BackendOptions())
            self._pipelines[name] = Pipeline(detector, self._executor, self.settings.batcher)
            await self._pipelines[name].start()
        s = self.settings
        options = [("grpc.max_receive_message_length", s.max_message_bytes),
                   ("grpc.max_send_message_length", s.max_message_bytes),
                   ("grpc.max_concurrent_streams", s.max_concurrent_streams)]
        interceptors = ([TokenAuthInterceptor(load_tokens(s.tokens_file), s.auth_exempt_services)]
                        if s.tokens_file is not None else [])
        server = grpc.aio.server(options=options, interceptors=interceptors)
        self.detection_service = DetectionService(self._pipelines, self.settings.models[0], s.stream_max_in_flight)
        detection_pb2_grpc.add_DetectionServiceServicer_to_server(self.detection_service, server)
        kserve = KServeService(self._pipelines, s.stream_max_in_flight)
        kpb_grpc.add_GRPCInferenceServiceServicer_to_server(kserve, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        service_names = (detection_pb2.DESCRIPTOR.services_by_name["DetectionService"].full_name,
                         kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
                         health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(service_names, server)
        address = f"{s.host}:{s.grpc_port}"
        if s.tls is not None:
            self.port = server.add_secure_port(address, server_credentials(s.tls))
        else:
            if s.host not in ("127.0.0.1", "localhost", "::1"):
                logger.warning("serving plaintext gRPC on %s; configure tls for anything beyond loopback", address)
            self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        logger.info("serving %s on %s:%d", list(self._pipelines), self.settings.host, self.port)

    async def _set_health(self, status: int) -> None:
        await self._health.set("", status)
        for name in self._pipelines:
            await self._health.set(name, status)

    async def stop(self) -> None:
        """Health NOT_SERVING first, then stop accepting, finish in-flight work within the grace period."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            # new calls are refused at once; calls already here keep their pipelines until they finish
            await self._server.stop(self.settings.grace_period_s)
        for pipeline in self._pipelines.values():
            await pipeline.stop(drain=True, timeout_s=self.settings.grace_period_s)
        for pipeline in self._pipelines.values():
            pipeline.detector.close()
        self._executor.shutdown(wait=True)
