"""Server settings from a YAML file, the environment and command-line flags — in that precedence.

defaults < ``--config FILE`` < ``TRTSERVE_*`` environment variables < explicit command-line flags.
Unknown keys and wrong types are rejected with the file (or variable), the key and the value named.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trtserve.config import PRECISIONS, DriftSpec, ReservoirSpec, YamlReader, apply_drift_block, apply_reservoir_block
from trtserve.errors import ConfigError
from trtserve.serving.security import HEALTH_SERVICE, REFLECTION_SERVICES, KeepaliveSettings, TlsSettings

if TYPE_CHECKING:
    from trtserve.backends.base import BackendOptions

# The settings live here, not beside the server and the pipeline that use them: `trtserve health` (the probe
# containers run every 15 s) reads the config without loading OpenCV, NumPy, ONNX Runtime or the model code.


def serving_backend_options(instances: int, intra_op_threads: int = 0, reload: bool = False) -> BackendOptions:
    """How the server runs a backend: ``instances`` batches at once on cores / instances threads each (unless
    ``intra_op_threads`` says otherwise), and no spin-waiting that would take the cores decoding needs. ``reload``:
    a load while serving (model control), which rebuilds a TensorRT engine whose sources changed."""
    from trtserve.backends.base import BackendOptions  # NumPy: not for the health probe

    threads = intra_op_threads or max(1, (os.cpu_count() or 1) // instances)
    return BackendOptions(intra_op_threads=threads, spin_wait=False, instances=instances, rebuild_engine=reload)


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 64  # frames of a model admitted at once: decoding, queued or in a batch (then refused)
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = 2  # batches in the backend at once: one computes while the next is assembled; 0 (YAML
    # ``auto``): measured at load (trtserve.serving.arrangement: the fewest within 5 % of the best throughput)


@dataclass(frozen=True)
class ServerSettings:
    models: tuple[str, ...] = ("shapes",)
    precision: str = "fp32"
    host: str = "127.0.0.1"
    grpc_port: int = 8001  # 0: any free port
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    workers: int = 2  # threads that decode and letterbox frames, for every model (each engine has its own)
    intra_op_threads: int = 0  # ONNX Runtime threads per batch; 0: the host's cores / batcher.instances
    grace_period_s: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_streams: int = 100  # per connection (HTTP/2 streams)
    stream_max_in_flight: int = 4  # frames of one StreamDetect call in the pipeline at once
    tls: TlsSettings | None = None  # None: plaintext (fine on loopback only)
    tokens_file: Path | None = None  # bearer-token auth when set
    auth_exempt_services: tuple[str, ...] = (HEALTH_SERVICE,)  # callable without a token (probes need health)
    auth_reflection_requires_token: bool = True  # False: reflection is callable without a token as well
    keepalive: KeepaliveSettings = field(default_factory=KeepaliveSettings)  # pings, idle/age limits
    metrics_port: int | None = 8002  # Prometheus /metrics; 0: any free port; None: off
    # KServe v2 over HTTP/REST; 0: any free port; None: off. `trtserve serve` (load_server_settings) defaults it to
    # DEFAULT_HTTP_PORT, Triton's 8000; settings built in code serve no HTTP unless they ask (tests, embedders)
    http_port: int | None = None
    metrics_host: str | None = None  # None: the same as host
    device_metrics: str = "auto"  # auto | none (NVML, tegrastats)
    drift: DriftSpec = field(default_factory=DriftSpec)  # defaults for every model (model.yaml drift: on top)
    drift_overrides: Mapping[str, Any] = field(default_factory=dict)  # env / flag drift keys: over model.yaml too
    # the model normalizes the letterboxed uint8 frames itself where the backend can (trtserve.backends.input_prefix)
    normalize_in_model: bool = False
    event_loop: str = "asyncio"  # asyncio | uvloop (Linux / macOS, `pip install uvloop`) | auto: uvloop if installed
    # model control (serving/model_control.py): load/unload/reload RPCs, off by default as in Triton; the poll
    # reloads loaded models whose files changed (None: off) and works without the RPCs
    model_control: bool = False
    repository_poll_s: float | None = None
    calibration_reservoir: ReservoirSpec = field(default_factory=ReservoirSpec)  # defaults for every model

    @property
    def auth_exempt(self) -> tuple[str, ...]:
        """The services callable without a token when tokens are on: ``auth_exempt_services``, and reflection
        unless ``auth_reflection_requires_token``."""
        return self.auth_exempt_services + (() if self.auth_reflection_requires_token else REFLECTION_SERVICES)


_TOP = {"models", "precision", "host", "grpc_port", "workers", "intra_op_threads", "grace_period_s",
        "max_message_bytes", "batcher", "max_concurrent_streams", "stream_max_in_flight", "tls", "auth",
        "metrics_port", "metrics_host", "device_metrics", "drift", "keepalive", "http_port",
        "model_control", "normalize_in_model", "event_loop", "repository_poll_s", "calibration_reservoir"}
DEFAULT_HTTP_PORT = 8000
# what turns a port off: YAML null, or one of these words from the environment or a flag
PORT_OFF = ("null", "none", "off")
_TLS = {"cert_file", "key_file", "client_ca_file"}
_AUTH = {"tokens_file", "exempt_services", "reflection_requires_token"}
_KEEPALIVE = {"time_s", "timeout_s", "min_ping_interval_s", "max_connection_idle_s", "max_connection_age_s",
              "max_connection_age_grace_s"}
_BATCHER = {"max_batch_size", "max_queue_delay_ms", "max_queue_size", "preferred_batch_sizes", "instances"}
ENV_PREFIX = "TRTSERVE_"
# environment variable -> (key, parser)
_ENV: dict[str, tuple[str, Any]] = {
    "MODELS": ("models", lambda v: [m.strip() for m in v.split(",") if m.strip()]),
    "PRECISION": ("precision", str),
    "HOST": ("host", str),
    "GRPC_PORT": ("grpc_port", int),
    "WORKERS": ("workers", int),
    "INTRA_OP_THREADS": ("intra_op_threads", int),
    "GRACE_PERIOD_S": ("grace_period_s", float),
    "MAX_BATCH_SIZE": ("batcher.max_batch_size", int),
    "MAX_QUEUE_DELAY_MS": ("batcher.max_queue_delay_ms", float),
    "MAX_QUEUE_SIZE": ("batcher.max_queue_size", int),
    "INSTANCES": ("batcher.instances", lambda v: "auto" if v.strip() == "auto" else int(v)),
    "NORMALIZE_IN_MODEL": ("normalize_in_model", lambda v: _flag(v)),
    "EVENT_LOOP": ("event_loop", str),
    "METRICS_PORT": ("metrics_port", int),
    "HTTP_PORT": ("http_port", str),  # a number, or null / none / off
    "METRICS_HOST": ("metrics_host", str),
    "SHADOW_RATE": ("drift.sample_rate", float),
}


def _apply(settings: ServerSettings, data: Mapping[str, Any], source: Path) -> ServerSettings:
    top = YamlReader(source, dict(data), "", _TOP)
    batcher_data = top.get("batcher", dict, {}, "a mapping")
    b = YamlReader(source, batcher_data, "batcher", _BATCHER)
    cur = settings.batcher
    preferred = b.get("preferred_batch_sizes", list, list(cur.preferred_batch_sizes), "a list of integers")
    if not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in preferred):
        b.fail("batcher.preferred_batch_sizes", preferred, "a list of positive integers")
    batcher = BatcherConfig(
        max_batch_size=b.number("max_batch_size", cur.max_batch_size, lo=1, hi=1024, integer=True),
        max_queue_delay_ms=b.number("max_queue_delay_ms", cur.max_queue_delay_ms, lo=0, hi=60000),
        max_queue_size=b.number("max_queue_size", cur.max_queue_size, lo=1, hi=1_000_000, integer=True),
        preferred_batch_sizes=tuple(preferred),
        instances=0 if b.data.get("instances") == "auto" else b.number("instances", cur.instances, lo=1, hi=64,
                                                                       integer=True))
    tls = settings.tls
    if "tls" in top.data:
        t = YamlReader(source, top.get("tls", dict, expected="a mapping"), "tls", _TLS)
        old = settings.tls  # a later source may set only some of the keys
        ca = t.get("client_ca_file", str, str(old.client_ca_file) if old and old.client_ca_file else None)
        tls = TlsSettings(Path(t.get("cert_file", str, str(old.cert_file) if old else ...,
                                     "the server certificate (PEM)")),
                          Path(t.get("key_file", str, str(old.key_file) if old else ...,
                                     "the server private key (PEM)")),
                          Path(ca) if ca else None)
    tokens_file, exempt = settings.tokens_file, settings.auth_exempt_services
    reflection_requires_token = settings.auth_reflection_requires_token
    if "auth" in top.data:
        a = YamlReader(source, top.get("auth", dict, expected="a mapping"), "auth", _AUTH)
        tokens = a.get("tokens_file", str, None, "a file with one token per line")
        tokens_file = Path(tokens) if tokens else tokens_file
        listed = a.get("exempt_services", list, list(exempt), "a list of gRPC service names")
        if not all(isinstance(x, str) for x in listed):
            a.fail("auth.exempt_services", listed, "a list of gRPC service names")
        exempt = tuple(listed)
        reflection_requires_token = a.get("reflection_requires_token", bool, reflection_requires_token,
                                          "true or false")
        if reflection_requires_token and set(exempt) & set(REFLECTION_SERVICES):
            a.fail("auth.exempt_services", listed, "no reflection service while auth.reflection_requires_token "
                   "is true (set it to false to open reflection)")
    keepalive = settings.keepalive
    if "keepalive" in top.data:
        k = YamlReader(source, top.get("keepalive", dict, expected="a mapping"), "keepalive", _KEEPALIVE)

        def seconds(name: str, lo: float, nullable: bool = False) -> Any:
            if name not in k.data:
                return getattr(settings.keepalive, name)
            if nullable and k.data[name] is None:
                return None  # null turns the limit off
            return k.number(name, lo=lo, hi=30 * 86400.0)

        keepalive = KeepaliveSettings(
            time_s=seconds("time_s", 1.0), timeout_s=seconds("timeout_s", 0.1),
            min_ping_interval_s=seconds("min_ping_interval_s", 0.0),
            max_connection_idle_s=seconds("max_connection_idle_s", 0.1, nullable=True),
            max_connection_age_s=seconds("max_connection_age_s", 0.1, nullable=True),
            max_connection_age_grace_s=seconds("max_connection_age_grace_s", 0.0, nullable=True))
    drift = settings.drift
    if "drift" in top.data:
        drift = apply_drift_block(settings.drift, top.get("drift", dict, expected="a mapping"), source)
    reservoir = settings.calibration_reservoir
    if "calibration_reservoir" in top.data:
        reservoir = apply_reservoir_block(reservoir, top.get("calibration_reservoir", dict, expected="a mapping"),
                                          source)
    poll_s = settings.repository_poll_s
    if "repository_poll_s" in top.data:
        poll_s = None if top.data["repository_poll_s"] is None else top.number("repository_poll_s", lo=0.1,
                                                                                hi=86400.0)
    metrics_port = settings.metrics_port
    if "metrics_port" in top.data:
        metrics_port = None if top.data["metrics_port"] is None else top.number(
            "metrics_port", lo=0, hi=65535, integer=True)
    http_port = settings.http_port
    if "http_port" in top.data:
        value = top.data["http_port"]
        if value is None or (isinstance(value, str) and value.strip().lower() in PORT_OFF):
            http_port = None
        else:
            port = int(value.strip()) if isinstance(value, str) and value.strip().isdigit() else value
            if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
                top.fail("http_port", value, "a port in [0, 65535] (0: any free port), or null to turn HTTP off")
            http_port = port
    models = top.get("models", list, list(settings.models), "a list of model names")
    if not models or not all(isinstance(m, str) and m for m in models):
        top.fail("models", models, "a non-empty list of model names")
    return replace(
        settings, models=tuple(models), precision=top.choice("precision", PRECISIONS, settings.precision),
        host=top.get("host", str, settings.host), grpc_port=top.number("grpc_port", settings.grpc_port, lo=0,
                                                                        hi=65535, integer=True),
        workers=top.number("workers", settings.workers, lo=1, hi=256, integer=True),
        intra_op_threads=top.number("intra_op_threads", settings.intra_op_threads, lo=0, hi=256, integer=True),
        grace_period_s=top.number("grace_period_s", settings.grace_period_s, lo=0, hi=3600),
        max_message_bytes=top.number("max_message_bytes", settings.max_message_bytes, lo=1024, integer=True),
        max_concurrent_streams=top.number("max_concurrent_streams", settings.max_concurrent_streams, lo=1,
                                          hi=100000, integer=True),
        stream_max_in_flight=top.number("stream_max_in_flight", settings.stream_max_in_flight, lo=1, hi=1024,
                                        integer=True),
        tls=tls, tokens_file=tokens_file, auth_exempt_services=exempt,
        auth_reflection_requires_token=reflection_requires_token, keepalive=keepalive, batcher=batcher, drift=drift,
        metrics_port=metrics_port, metrics_host=top.get("metrics_host", str, settings.metrics_host),
        model_control=top.get("model_control", bool, settings.model_control, "true or false"),
        repository_poll_s=poll_s, calibration_reservoir=reservoir,
        http_port=http_port, device_metrics=top.choice("device_metrics", ("auto", "none"), settings.device_metrics),
        normalize_in_model=top.get("normalize_in_model", bool, settings.normalize_in_model, "true or false"),
        event_loop=top.choice("event_loop", EVENT_LOOPS, settings.event_loop))


EVENT_LOOPS = ("asyncio", "uvloop", "auto")


def _flag(value: str) -> bool:
    """An environment variable's true / false (1 / 0, yes / no, on / off)."""
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parent, _, leaf = key.rpartition(".")
        (out.setdefault(parent, {}) if parent else out)[leaf] = value
    return out


def load_server_settings(config_file: Path | None = None, environ: Mapping[str, str] | None = None,
                         overrides: Mapping[str, Any] | None = None) -> ServerSettings:
    """Settings with the documented precedence; ``overrides`` uses dotted keys (``batcher.instances``)."""
    settings = ServerSettings(http_port=DEFAULT_HTTP_PORT)
    if config_file is not None:
        try:
            document = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{config_file}: no such server configuration file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_file}: not valid YAML: {exc}") from None
        settings = _apply(settings, document, Path(config_file))
    env = os.environ if environ is None else environ
    from_env: dict[str, Any] = {}
    for suffix, (key, parse) in _ENV.items():
        name = ENV_PREFIX + suffix
        if name in env:
            try:
                from_env[key] = parse(env[name])
            except ValueError:
                raise ConfigError(f"environment variable {name}={env[name]!r} is not a valid "
                                  f"{getattr(parse, '__name__', 'value')}") from None
    if from_env:
        settings = _apply(settings, _nest(from_env), Path("<environment>"))
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    if explicit:
        settings = _apply(settings, _nest(explicit), Path("<command line>"))
    # drift keys from the environment or the command line also win over each model's own drift: block
    forced = {k.removeprefix("drift."): v for k, v in {**from_env, **explicit}.items() if k.startswith("drift.")}
    return replace(settings, drift_overrides=forced) if forced else settings
