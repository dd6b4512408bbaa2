"""Assemble and run the server: detection service, KServe v2 (gRPC and HTTP/REST), grpc.health.v1, reflection (v1
and v1alpha), graceful drain."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from trtserve import __version__
from trtserve.config import DriftSpec, apply_drift_block
from trtserve.detector import Detector
from trtserve.errors import ConfigError
from trtserve.monitoring.devices import device_collectors
from trtserve.monitoring.drift import DriftMonitor
from trtserve.monitoring.metrics import Metrics, start_metrics_http
from trtserve.monitoring.reservoir import Reservoir
from trtserve.repository import ModelRepository
from trtserve.serving import arrangement
from trtserve.serving.control_service import ControlledDetectionService
from trtserve.serving.grpc_metrics import MetricsInterceptor
from trtserve.serving.http_service import HttpService
from trtserve.serving.kserve_dataplane import KServeDataPlane
from trtserve.serving.kserve_service import KServeService
from trtserve.serving.model_control import ModelControl
from trtserve.serving.pipeline import Pipeline
from trtserve.serving.protocol import Drain, IntakeInterceptor
from trtserve.serving.reflection_v1 import enable_server_reflection
from trtserve.serving.security import TokenAuthInterceptor, TokenSource, keepalive_options, server_credentials
from trtserve.serving.settings import ServerSettings, serving_backend_options
from trtserve.threads import DECODE, role_pool
from trtserve.v1 import detection_pb2, detection_pb2_grpc

logger = logging.getLogger(__name__)


class Server:
    """Load models, serve them, drain on stop. ``port`` is the bound port after :meth:`start`."""

    def __init__(self, settings: ServerSettings, repository: ModelRepository | None = None) -> None:
        self.settings = settings
        self.repository = repository or ModelRepository()
        self.port = 0
        # decode and letterbox, for every model (each pipeline runs its engine on threads of its own)
        self._executor = role_pool(settings.workers, DECODE)
        self._drain = Drain()
        self._pipelines: dict[str, Pipeline] = {}
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.metrics = Metrics()
        self.metrics_port: int | None = None  # bound port after start
        self.http_port: int | None = None  # KServe v2 over HTTP: bound port after start (None: off)
        self._http: HttpService | None = None
        self._kserve = KServeDataPlane(self._pipelines, lambda: self._drain.draining)  # both KServe transports
        self._metrics_http: Any = None
        self._device_collectors: list[Any] = []
        self._tokens: TokenSource | None = None  # with auth on; re-read on change and on SIGHUP
        self._auth: TokenAuthInterceptor | None = None
        # loads, unloads and reloads models in self._pipelines, at start and while serving (model_control.py)
        self.models = ModelControl(self._pipelines, self.repository, self._open, self._model_health, self.metrics,
                                   settings.grace_period_s, settings.model_control)

    @property
    def pipelines(self) -> dict[str, Pipeline]:
        return self._pipelines

    async def start(self) -> None:
        s = self.settings
        try:
            for name in s.models:
                await self._load(name)
            if s.metrics_port is not None:
                self._metrics_http, self.metrics_port = start_metrics_http(
                    self.metrics.registry, s.metrics_host or s.host, s.metrics_port)
                self._device_collectors = device_collectors(self.metrics.registry, s.device_metrics)
            await self._start_grpc()
            if s.http_port is not None:
                self._http = HttpService(self._kserve, self.metrics, s.max_message_bytes, s.tls, self._auth,
                                         s.auth_exempt, s.grace_period_s)
                self.http_port = await self._http.start(s.host, s.http_port)
        except BaseException:
            await self._release()
            raise
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if s.repository_poll_s:
            self.models.start_polling(s.repository_poll_s)
        logger.info("serving %s on %s:%d%s%s", list(self._pipelines), s.host, self.port,
                    f", KServe HTTP on :{self.http_port}" if self.http_port else "",
                    f", metrics on :{self.metrics_port}/metrics" if self.metrics_port else "")

    async def _load(self, name: str) -> None:
        await self.models.load(name, at_start=True)

    async def _open(self, name: str, version: int) -> Pipeline:
        """Open and start model ``name``'s pipeline (detector, drift shadow, reservoir), not yet registered: the
        model control registers it. Loading runs off the event loop, so the models serving keep serving."""
        s = self.settings
        loop = asyncio.get_running_loop()
        config = await asyncio.to_thread(self.repository.get, name)
        reservoir = self.models.reservoir_for(config, config.reservoir_settings(s.calibration_reservoir))
        batcher = s.batcher
        if batcher.instances:
            detector = await asyncio.to_thread(Detector.open, config, s.precision, options=serving_backend_options(
                batcher.instances, s.intra_op_threads, reload=version > 1), normalize_in_model=s.normalize_in_model)
        else:  # instances: auto, measured on the engine itself (trtserve.serving.arrangement)
            def open_arranged(instances: int, threads: int) -> Detector:
                return Detector.open(config, s.precision, options=serving_backend_options(
                    instances, threads, reload=version > 1), normalize_in_model=s.normalize_in_model)

            detector, chosen, _ = await asyncio.to_thread(arrangement.choose, open_arranged, s.intra_op_threads,
                                                          batch=batcher.max_batch_size,
                                                          step=max(1, len(config.devices)))
            batcher = replace(batcher, instances=chosen.instances)
        drift = None
        try:
            spec = config.drift_settings(s.drift)
            if s.drift_overrides:
                spec = apply_drift_block(spec, s.drift_overrides, Path("<environment or command line>"))
            if reservoir is not None and not spec.enabled:
                logger.warning("model %s: calibration_reservoir is enabled but drift is off: the reservoir keeps "
                               "the frames the drift shadow compared, so it stays empty; enable drift", name)
            drift = await asyncio.to_thread(self._drift_monitor, detector, spec, loop, reservoir)
            pipeline = Pipeline(detector, self._executor, batcher, self.metrics, drift)
        except BaseException:  # closing waits for the shadow and the runtime: off the loop the others serve on
            if drift is not None:
                await asyncio.to_thread(drift.close)
            await asyncio.to_thread(detector.close)
            raise
        self.metrics.build_info.labels(name, detector.precision, __version__, detector.backend.name,
                                       detector.backend.runtime_version, detector.backend.device).set(1)
        await pipeline.start()
        return pipeline

    async def _model_health(self, name: str, serving: bool) -> None:
        await self._health.set(name, health_pb2.HealthCheckResponse.SERVING if serving
                               else health_pb2.HealthCheckResponse.NOT_SERVING)

    def _drift_monitor(self, detector: Detector, spec: DriftSpec, loop: asyncio.AbstractEventLoop,
                       reservoir: Reservoir | None = None) -> DriftMonitor | None:
        name = detector.config.name
        if not spec.enabled or spec.sample_rate <= 0:
            return None
        if spec.shadow_precision == detector.precision and spec.shadow_backend == detector.backend.name:
            logger.warning("model %s: drift monitoring off: the served model is already the %s %s shadow", name,
                           spec.shadow_precision, spec.shadow_backend)
            return None

        def on_verdict(serving: bool) -> None:  # from the shadow thread
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            loop.call_soon_threadsafe(lambda: loop.create_task(self._health.set(name, status)))

        return DriftMonitor.open(detector, spec, self.metrics, on_verdict, reservoir=reservoir)

    async def _start_grpc(self) -> None:
        s = self.settings
        # gRPC's own limit is twice ours: a message between the two is refused by IntakeInterceptor after the
        # frames before it were answered; only past gRPC's does the call end with nothing more answered.
        # so_reuseport off: a second server on a port already served fails to bind instead of sharing it.
        options = [("grpc.max_receive_message_length", 2 * s.max_message_bytes),
                   ("grpc.max_send_message_length", s.max_message_bytes),
                   ("grpc.max_concurrent_streams", s.max_concurrent_streams),
                   ("grpc.so_reuseport", 0),
                   *keepalive_options(s.keepalive, s.grace_period_s)]
        served = (detection_pb2.DESCRIPTOR.services_by_name["DetectionService"].full_name,
                  kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name)
        interceptors: list[grpc.aio.ServerInterceptor] = [
            MetricsInterceptor(self.metrics), IntakeInterceptor(served, s.max_message_bytes, self._drain)]
        if s.tokens_file is not None:
            self._tokens = TokenSource(s.tokens_file)
            self._auth = TokenAuthInterceptor(self._tokens, s.auth_exempt)  # the HTTP port checks through it too
            interceptors.append(self._auth)
        server = grpc.aio.server(options=options, interceptors=interceptors)
        self.detection_service = ControlledDetectionService(self._pipelines, self.settings.models[0],
                                                            s.stream_max_in_flight, self.models)
        detection_pb2_grpc.add_DetectionServiceServicer_to_server(self.detection_service, server)
        kserve = KServeService(self._pipelines, s.stream_max_in_flight, self._kserve)
        kserve.control = self.models  # RepositoryModelLoad / RepositoryModelUnload
        kpb_grpc.add_GRPCInferenceServiceServicer_to_server(kserve, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_server_reflection((*served, health.SERVICE_NAME), server)  # v1alpha and v1
        address = f"{s.host}:{s.grpc_port}"
        try:
            if s.tls is not None:
                self.port = server.add_secure_port(address, server_credentials(s.tls))
            else:
                if s.host not in ("127.0.0.1", "localhost", "::1"):
                    logger.warning("serving plaintext gRPC on %s; configure tls for anything beyond loopback",
                                   address)
                self.port = server.add_insecure_port(address)
        except RuntimeError:  # grpc: "Failed to bind to address ..."
            self.port = 0
        if not self.port:
            raise ConfigError(f"cannot listen for gRPC on {address}: the port is in use (another trtserve?) or the "
                              "address is not this host's; stop the other server or pick another --grpc-port")
        await server.start()
        self._server = server

    def reload_tokens(self, why: str = "SIGHUP") -> None:
        """Re-read the tokens file now (what SIGHUP does); a file that cannot be used keeps the old tokens."""
        if self._tokens is not None:
            self._tokens.reload(why)

    async def _set_health(self, status: int) -> None:
        # the whole server ("" and each served service's name, as Triton and grpc-health-probe ask) and each model
        services = ("", detection_pb2.DESCRIPTOR.services_by_name["DetectionService"].full_name,
                    kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name)
        for name in (*services, *self._pipelines):
            await self._health.set(name, status)

    async def stop(self) -> None:
        """Health NOT_SERVING first, then stop accepting, finish in-flight work within the grace period."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._drain.start()  # open streams read no more: they answer what they read, then end UNAVAILABLE
        # new calls are refused at once (both ports); calls already here keep their pipelines until they finish
        server, self._server = self._server, None
        await asyncio.gather(*([server.stop(self.settings.grace_period_s)] if server is not None else []),
                             *([self._http.stop()] if self._http is not None else []))
        await self.models.close()  # a reload under way finishes first; then every pipeline is in the mapping
        await self._release()

    async def _release(self) -> None:
        if self._server is not None:  # a start that failed after gRPC began listening (e.g. the HTTP port taken)
            await self._server.stop(0)
            self._server = None
        if self._http is not None:
            await self._http.stop()
            self._http = None
        for pipeline in self._pipelines.values():
            await pipeline.stop(drain=True, timeout_s=self.settings.grace_period_s)
        for pipeline in self._pipelines.values():
            pipeline.detector.close()
        for collector in self._device_collectors:
            if hasattr(collector, "close"):
                collector.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        self._executor.shutdown(wait=True)
