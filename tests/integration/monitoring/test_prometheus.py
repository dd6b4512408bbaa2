"""A real Prometheus server (Debian's package) scraping a real trtserve while streams run.

`make test` installs Prometheus and sets TRTSERVE_REQUIRE_TOOLS=1, so in CI a missing binary fails
instead of skipping.
"""

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import pytest

from trtserve.config import DriftSpec
from trtserve.datasets.synthetic import video_frames
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import BatcherConfig
from trtserve.serving.process import free_port
from trtserve.serving.server import Server, ServerSettings
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

from ...conftest import ENGINES, ROOT, require_tool


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = _get(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert reply["status"] == "success", (expr, reply)
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])


@pytest.fixture()
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    binary = require_tool("prometheus", "prometheus")
    processes: list[subprocess.Popen[bytes]] = []

    def start(metrics_port: int) -> Prometheus:
        port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(ROOT / "monitoring" / "alerts.yml")],
                  "scrape_configs": [{"job_name": "trtserve",
                                      "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}]}
        (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        log = open(tmp_path / "prometheus.log", "wb")  # closed with the process
        processes.append(subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2)
                return Prometheus(port)
            except OSError:
                if processes[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "prometheus.log").read_text()[-3000:]) from None
                time.sleep(0.2)

    yield start
    for p in processes:
        p.terminate()
        p.wait(timeout=30)


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((ROOT / "monitoring" / "grafana" / "trtserve.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    for variable in ("$model", "$job", "$namespace", "$pod"):
        expr = expr.replace(variable, ".*")
    return expr.replace("$__rate_interval", "10s")


def dashboard_variable_queries() -> list[str]:
    dashboard = json.loads((ROOT / "monitoring" / "grafana" / "trtserve.json").read_text())
    return [v["query"].removeprefix("label_values(").rsplit(",", 1)[0] for v in dashboard["templating"]["list"]
            if v["type"] == "query"]


def alert_rule_count() -> int:
    import yaml

    return sum(len(g["rules"]) for g in yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text())["groups"])


def test_prometheus_scrapes_rates_latency_quantiles_and_drift(prometheus_for: Any) -> None:
    frames = [cv2.imencode(".jpg", s.image_bgr)[1].tobytes() for s in video_frames(40)]
    settings = ServerSettings(grpc_port=0, metrics_port=0, precision="int8",
                              batcher=BatcherConfig(max_batch_size=8, max_queue_delay_ms=5),
                              drift=DriftSpec(enabled=True, sample_rate=0.5, min_window_frames=8))

    async def main() -> None:
        server = Server(settings, ModelRepository(ENGINES))
        await server.start()
        prom = await asyncio.to_thread(prometheus_for, server.metrics_port)
        sent = 0
        stop = asyncio.Event()

        async def camera(channel: grpc.aio.Channel, name: str) -> None:
            nonlocal sent
            stub = pb_grpc.DetectionServiceStub(channel)
            while not stop.is_set():
                async def requests():  # type: ignore[no-untyped-def]
                    for i, data in enumerate(frames):
                        await asyncio.sleep(0.02)  # ~50 frames/s per camera at most
                        yield pb.DetectRequest(stream_id=name, sequence=i, image=pb.Image(encoded=data))

                async for answer in stub.StreamDetect(requests()):
                    assert answer.status == pb.STATUS_OK
                    sent += 1

        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                t0 = time.monotonic()
                cameras = [asyncio.create_task(camera(channel, f"cam-{k}")) for k in range(4)]
                await asyncio.sleep(12)  # a dozen scrapes
                client_fps = sent / (time.monotonic() - t0)
                results = await asyncio.to_thread(check, prom, client_fps)
                stop.set()
                await asyncio.gather(*cameras)
        finally:
            await server.stop()
        assert results["rules"] == alert_rule_count()

    def check(prom: Prometheus, client_fps: float) -> dict[str, Any]:
        fps = prom.scalar('sum(rate(trtserve_frames_total{model="shapes",outcome="ok"}[6s]))')
        assert client_fps / 3 < fps < client_fps * 3, (fps, client_fps)
        p99 = prom.scalar('histogram_quantile(0.99, sum by (le) '
                          '(rate(trtserve_stage_duration_seconds_bucket{stage="total"}[6s])))')
        assert 0.0005 < p99 < 5.0
        p50_inference = prom.scalar('histogram_quantile(0.5, sum by (le) '
                                    '(rate(trtserve_stage_duration_seconds_bucket{stage="inference"}[6s])))')
        assert 0 < p50_inference <= p99
        assert prom.scalar('trtserve_drift_window_agreement_f1{model="shapes",precision="int8"}') >= 0.9
        assert prom.scalar('increase(trtserve_drift_samples_total{model="shapes"}[10s])') > 0
        assert prom.scalar('trtserve_model_ready{model="shapes"}') == 1
        assert prom.scalar('max(trtserve_queue_capacity)') == 64
        for expr in dashboard_expressions():  # every panel's query is valid PromQL on live data
            prom.query(grafana_to_promql(expr))
        for expr in dashboard_variable_queries():  # and every variable finds its values
            assert prom.query(grafana_to_promql(expr)), expr
        target = 'job=~".*",namespace=~".*",pod=~".*",model=~".*"'
        for expr in (f'sum by (model, outcome) (rate(trtserve_frames_total{{{target}}}[10s]))',
                     f'min by (model, precision) (trtserve_drift_window_agreement_f1{{{target}}})',
                     f'sum by (model, precision) (trtserve_model_ready{{{target}}})',
                     'sum(up{job=~".*",namespace=~".*",pod=~".*"})'):
            assert expr in map(grafana_to_promql, dashboard_expressions()) and prom.query(expr), expr
        assert prom.scalar('sum(up{job=~".*",namespace=~".*",pod=~".*"})') == 1
        info = prom.query('max by (namespace, pod, model, precision, version, backend, runtime_version, device) '
                          f'(trtserve_build_info{{{target}}})')
        assert info and info[0]["metric"]["model"] == "shapes"  # the "What is running" table
        assert not prom.query('{__name__=~"trtserve_.*_created"}')  # no _created series
        assert prom.query('grpc_server_handled_total{grpc_service="trtserve.v1.DetectionService"}')
        rules = _get(f"{prom.base}/api/v1/rules")["data"]["groups"]
        assert all(r["health"] == "ok" for g in rules for r in g["rules"])
        return {"rules": sum(len(g["rules"]) for g in rules)}

    asyncio.run(main())
