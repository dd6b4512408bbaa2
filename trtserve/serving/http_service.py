"""KServe v2 / Open Inference Protocol over HTTP/REST (aiohttp, in the server's event loop), on the same pipelines.

What ``tritonclient.http``, ``perf_analyzer -i http``, ``curl`` and the KServe SDKs speak. A request is translated
into the same ``ModelInferRequest`` the gRPC transport receives and handed to the same
:class:`~trtserve.serving.kserve_dataplane.KServeDataPlane` — same checks, same messages, same pipeline and batcher;
only the framing differs. Served (Triton's paths; ``/versions/{v}`` may follow ``/v2/models/{m}`` everywhere):

======================================  ==============================================================
``GET /v2/health/live``, ``/ready``     200, or 400 when not ready (as Triton); no token needed by default
``GET /v2``                             server metadata (name, version, extensions)
``GET /v2/models/{m}``                  model metadata; ``/ready`` (200 / 400), ``/config``, ``/stats``
``GET /v2/models/stats``                every model's statistics
``POST /v2/models/{m}/infer``           inference: JSON tensors, or the binary-data extension
``POST /v2/repository/index``           the loaded models
======================================  ==============================================================

Every model ``m`` is also served as ``m.raw``, its raw tensor interface (the model's own input tensor in, its own
output tensors out; see :mod:`trtserve.serving.kserve_dataplane`): numeric tensors in JSON ``data`` or binary data.

Inference bodies: a JSON object (``inputs``, optional ``outputs``, ``id``, ``parameters``), or — the binary tensor
data extension — a JSON header of ``Inference-Header-Content-Length`` bytes followed by the inputs that declare
``"parameters": {"binary_data_size": n}``, back to back in input order (a BYTES tensor in Triton's length-prefixed
format). In JSON an ``IMAGE`` element is the **base64** of the encoded image (JSON strings cannot carry arbitrary
bytes). Outputs come back as JSON ``data`` (flattened, row-major) unless ``"binary_data": true`` for that output, or
``"parameters": {"binary_data_output": true}`` for all: then binary, after the JSON header, sized by
``binary_data_size``, with ``Inference-Header-Content-Length`` in the response.

Errors are ``{"error": "<message>"}`` with Triton's status mapping: 400 for INVALID_ARGUMENT (a wrong tensor name,
datatype or shape, malformed JSON, a binary section that does not add up), 404 NOT_FOUND (model or version, or a
path that does not exist), 413 for a body over ``max_message_bytes``, 503 when the model's queue is full or the server
is draining, 401 without a valid bearer token, 501 for Triton endpoints trtserve does not serve (model control,
shared memory, trace, logging), 500 with only an incident id for a bug. Nothing of the server's internals leaks.

Security is the gRPC port's: the same TLS settings (mutual TLS too) and the same bearer-token source
(``Authorization: Bearer <token>``); the health paths are open exactly when ``grpc.health.v1.Health`` is in
``auth.exempt_services`` (the default), everything when ``inference.GRPCInferenceService`` is.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2 as kpb

from trtserve.errors import ConfigError, InvalidFrameError, clip, code_name
from trtserve.logs import RateLimitedLog
from trtserve.monitoring.metrics import Metrics
from trtserve.serving.kserve_dataplane import KServeDataPlane, serialize_bytes
from trtserve.serving.protocol import public_reason
from trtserve.serving.security import HEALTH_SERVICE, TlsSettings, TokenAuthInterceptor

logger = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
KSERVE_SERVICE = "inference.GRPCInferenceService"
# gRPC status code name -> HTTP status, as Triton maps its errors (queue full is Triton's UNAVAILABLE: 503)
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "CANCELLED": 400, "NOT_FOUND": 404, "UNAUTHENTICATED": 401,
               "RESOURCE_EXHAUSTED": 503, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 503, "FAILED_PRECONDITION": 503,
               "UNIMPLEMENTED": 501, "INTERNAL": 500}
# JSON data of a numeric tensor -> the typed contents field of the gRPC message
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents"}
_NUMPY = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
          "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64}
_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_UNSERVED_PATHS = ("/v2/repository/models/{model}/load", "/v2/repository/models/{model}/unload",
                   "/v2/systemsharedmemory{rest:.*}", "/v2/cudasharedmemory{rest:.*}", "/v2/trace/setting",
                   "/v2/models/{model}/trace/setting", "/v2/logging")


class HttpError(Exception):
    """An answer other than 200 decided by the transport itself (not the data plane): status and message."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # the gRPC code name it stands for, for the request counter


def _repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6.31; ``label`` is deprecated there
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def message_json(message: Message) -> dict[str, Any]:
    """A protobuf message as Triton's HTTP JSON: proto field names, every scalar field (zeros included), and 64-bit
    integers as JSON numbers (protobuf's own JSON writes them as strings, which C++ clients refuse)."""
    return _numbers(message, json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                                       preserving_proto_field_name=True))


def _numbers(message: Message, out: dict[str, Any]) -> dict[str, Any]:
    for field in message.DESCRIPTOR.fields:
        if field.name not in out:
            continue
        value = getattr(message, field.name)
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                for key in value:
                    if value_field.message_type is not None:
                        _numbers(value[key], out[field.name][str(key)])
            elif _repeated(field):
                out[field.name] = [_numbers(v, o) for v, o in zip(value, out[field.name])]
            else:
                _numbers(value, out[field.name])
        elif field.type in _INT64_TYPES:
            out[field.name] = [int(v) for v in out[field.name]] if _repeated(field) else int(out[field.name])
    return out


def _flatten(data: Any) -> Iterator[Any]:
    """Nested JSON lists, depth first, without recursion (a hostile body nests as deep as json.loads allows)."""
    stack = [iter([data])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str, default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is not default and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise InvalidFrameError(f"{what}: {key!r} has the wrong JSON type ({type(value).__name__}); see the KServe "
                                "v2 inference request format")
    return value


def _binary_flag(parameters: Any, key: str, what: str) -> bool | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise InvalidFrameError(f"{what}: 'parameters' must be a JSON object")
    flag = parameters.get(key)
    if flag is not None and not isinstance(flag, bool):
        raise InvalidFrameError(f"{what}: parameter {key!r} must be true or false")
    return flag


def _json_bytes(name: str, values: list[Any]) -> list[bytes]:
    items = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidFrameError(f"input {clip(name)} element {i} is not a string; in JSON a BYTES element is "
                                    "the base64 of the encoded image (or send binary data)")
        try:
            items.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidFrameError(f"input {clip(name)} element {i} is not valid base64; in JSON a BYTES element "
                                    "is the base64 of the encoded image (or send it as binary data with "
                                    f"{HEADER_LENGTH})") from None
    return items


def parse_http_infer(body: bytes, header_length: str | None, model: str, version: str
                     ) -> tuple[kpb.ModelInferRequest, dict[str, bool], bool]:
    """An HTTP inference body -> the gRPC ``ModelInferRequest`` it stands for, which outputs asked for binary data,
    and the request's default (``binary_data_output``). Pure. Raises InvalidFrameError (400) naming what is wrong:
    a header length that is not a number within the body, JSON that does not parse or is not an object, a field of
    the wrong type, binary sizes that do not add up to the rest of the body. The tensor names, datatypes and shapes
    themselves are checked afterwards by the data plane, the same way as over gRPC."""
    if header_length is None:
        head, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidFrameError(f"{HEADER_LENGTH} {clip(header_length)} is not a number of bytes") from None
        if not 0 <= length <= len(body):
            raise InvalidFrameError(f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
        head, binary = body[:length], body[length:]
    try:
        document = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidFrameError(f"the request's JSON does not parse: {clip(str(exc))}") from None
    except RecursionError:
        raise InvalidFrameError("the request's JSON nests too deeply to parse; a KServe v2 request nests a few "
                                "levels") from None
    if not isinstance(document, dict):
        raise InvalidFrameError("the request's JSON must be an object with 'inputs'")
    request = kpb.ModelInferRequest(model_name=model, model_version=version)
    request.id = _get(document, "id", str, "request", "")
    default_binary = bool(_binary_flag(document.get("parameters"), "binary_data_output", "request"))
    inputs = _get(document, "inputs", list, "request", [])
    tensors: list[tuple[kpb.ModelInferRequest.InferInputTensor, bytes | None, list[Any] | None]] = []
    offset = 0
    for i, spec in enumerate(inputs):
        what = f"input {i}"
        if not isinstance(spec, dict):
            raise InvalidFrameError(f"{what} must be a JSON object with name, shape, datatype and data")
        name = _get(spec, "name", str, what, "")
        datatype = _get(spec, "datatype", str, what, "")
        shape = _get(spec, "shape", list, what, [])
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 63 for d in shape):
            raise InvalidFrameError(f"input {clip(name)}: shape must be a list of non-negative 64-bit integers")
        tensor = kpb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
        parameters = spec.get("parameters")
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidFrameError(f"input {clip(name)}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidFrameError(f"input {clip(name)} declares {size} bytes of binary data at offset {offset}, "
                                        f"but the body's binary part has {len(binary)}: the binary data does not "
                                        f"add up ({HEADER_LENGTH} and binary_data_size)")
            tensors.append((tensor, binary[offset : offset + size], None))
            offset += size
        else:
            data = spec.get("data")
            if data is None:
                raise InvalidFrameError(f"input {clip(name)} has neither 'data' nor binary_data_size")
            tensors.append((tensor, None, list(_flatten(data))))
    if offset != len(binary):
        raise InvalidFrameError(f"the body carries {len(binary)} bytes of binary data but its inputs declare {offset}: "
                                f"the binary data does not add up ({HEADER_LENGTH} and binary_data_size)")
    raw = any(b is not None for _, b, _ in tensors)
    for tensor, blob, values in tensors:
        if values is not None:
            blob = _json_tensor(tensor, values, raw)
        if blob is not None:
            request.raw_input_contents.append(blob)
        request.inputs.append(tensor)
    binary_outputs: dict[str, bool] = {}
    for i, spec in enumerate(_get(document, "outputs", list, "request", [])):
        if not isinstance(spec, dict):
            raise InvalidFrameError(f"output {i} must be a JSON object with a name")
        name = _get(spec, "name", str, f"output {i}", "")
        out = request.outputs.add(name=name)
        parameters = spec.get("parameters")
        flag = _binary_flag(parameters, "binary_data", f"output {clip(name)}")
        binary_outputs[name] = default_binary if flag is None else flag
        classes = parameters.get("classification") if isinstance(parameters, dict) else None
        if classes is not None:
            out.parameters["classification"].int64_param = int(classes) if isinstance(classes, int) else 1
    return request, binary_outputs, default_binary


def _json_tensor(tensor: kpb.ModelInferRequest.InferInputTensor, values: list[Any], raw: bool) -> bytes | None:
    """Put a tensor's JSON data into the message: typed contents, or (when other inputs are binary, since gRPC's raw
    contents are all or none) raw bytes. Returns the raw bytes, or None when set as contents."""
    datatype = tensor.datatype
    if datatype == "BYTES":
        items = _json_bytes(tensor.name, values)
        if raw:
            return serialize_bytes(items)
        tensor.contents.bytes_contents.extend(items)
        return None
    if datatype not in _NUMPY:
        raise InvalidFrameError(f"input {clip(tensor.name)} has datatype {clip(datatype)}, which JSON data cannot "
                                "carry; send it as binary data")
    try:
        if raw or datatype not in _CONTENTS:
            return np.asarray(values, dtype=_NUMPY[datatype]).tobytes()
        getattr(tensor.contents, _CONTENTS[datatype]).extend(values)
    except (TypeError, ValueError, OverflowError):
        raise InvalidFrameError(f"input {clip(tensor.name)}: its JSON data are not all {datatype} values") from None
    return None


def http_infer_response(response: kpb.ModelInferResponse, binary_outputs: Mapping[str, bool],
                        default_binary: bool) -> web.Response:
    """The HTTP answer for a data-plane response: JSON, with binary outputs appended after it when asked."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, blob in zip(response.outputs, response.raw_output_contents):
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary_outputs.get(tensor.name, default_binary):
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = np.frombuffer(blob, _NUMPY[tensor.datatype]).tolist()
        outputs.append(out)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version,
                                "outputs": outputs}
    if response.id:
        document["id"] = response.id
    head = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return web.Response(body=head, content_type="application/json")
    return web.Response(body=b"".join([head, *blobs]), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(head))})


def error_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}).encode(), content_type="application/json")


def ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """The HTTP port's TLS from the gRPC port's settings: the same certificate, and mutual TLS with a client CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if tls.client_ca_file is not None:
            context.load_verify_locations(str(tls.client_ca_file))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the TLS files {tls.cert_file} / {tls.key_file} for HTTP: {exc}") from None
    return context


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpService:
    """KServe v2 over HTTP/REST on ``host:port`` (module docstring). :meth:`start` binds and returns the bound port;
    :meth:`stop` stops accepting and lets requests in progress finish within ``grace_period_s``."""

    def __init__(self, dataplane: KServeDataPlane, metrics: Metrics, max_message_bytes: int,
                 tls: TlsSettings | None = None, auth: TokenAuthInterceptor | None = None,
                 exempt_services: Sequence[str] = (HEALTH_SERVICE,), grace_period_s: float = 10.0) -> None:
        """``auth``: the gRPC port's own token check (None: no tokens), so both ports share one policy and one log
        of refusals."""
        self.dataplane = dataplane
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self._tls = tls
        self._auth = auth
        self._health_open = HEALTH_SERVICE in exempt_services or KSERVE_SERVICE in exempt_services
        self._all_open = KSERVE_SERVICE in exempt_services
        self._grace_period_s = grace_period_s
        self._runner: web.AppRunner | None = None
        self._log = RateLimitedLog(logger)
        self.port = 0

    def application(self) -> web.Application:
        # aiohttp refuses a larger body itself (413), before reading it all; the check below answers it in JSON
        app = web.Application(client_max_size=self._max_message_bytes, middlewares=[self._errors])
        r = app.router
        r.add_get("/v2/models/stats", self._counted("ModelStatistics", self._model_stats))  # before {model}
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            r.add_get(prefix, self._counted("ModelMetadata", self._model_metadata))
            r.add_get(prefix + "/ready", self._counted("ModelReady", self._model_ready))
            r.add_get(prefix + "/config", self._counted("ModelConfig", self._model_config))
            r.add_get(prefix + "/stats", self._counted("ModelStatistics", self._model_stats))
            r.add_post(prefix + "/infer", self._counted("ModelInfer", self._infer))
        r.add_get("/v2/health/live", self._health(lambda: True))
        r.add_get("/v2/health/ready", self._health(self.dataplane.server_ready))
        r.add_get("/v2", self._counted("ServerMetadata", self._server_metadata))
        r.add_post("/v2/repository/index", self._counted("RepositoryIndex", self._repository_index))
        for path in _UNSERVED_PATHS:
            r.add_route("*", path, self._unserved)
        return app

    async def start(self, host: str, port: int) -> int:
        runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=self._grace_period_s)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context(self._tls) if self._tls else None,
                           reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}; stop the other "
                              "server or pick another --http-port (0: any free port; null turns HTTP off)") from None
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the plumbing every route shares ------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every answer that is not 200 as ``{"error": ...}``, aiohttp's own (404, 405, 413) included."""
        try:
            return await handler(request)
        except HttpError as exc:
            return error_response(exc.status, str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 413:
                return error_response(413, str(self._too_large(request)))
            reason = {404: "no such endpoint", 405: "method not allowed on this endpoint"}.get(exc.status, exc.reason)
            return error_response(exc.status, f"{reason}: {request.method} {clip(request.path)}")

    def _too_large(self, request: web.Request) -> HttpError:
        self._log.warning("oversize", "refused an HTTP body of %s bytes (max_message_bytes %d)",
                          request.content_length, self._max_message_bytes)
        return HttpError(413, f"the request body is over the server's max_message_bytes of "
                                   f"{self._max_message_bytes}; send fewer or smaller images per request (encode "
                                   "them as JPEG) or raise max_message_bytes", "RESOURCE_EXHAUSTED")

    def _authenticate(self, request: web.Request, method: str, open_: bool) -> None:
        if self._auth is None or open_ or self._all_open:
            return
        # the gRPC interceptor's own check and its rate-limited log of refusals: one policy for both ports
        if self._auth.refused(request.headers.get("Authorization"), f"http:{request.remote or 'an unknown peer'}",
                              f"HTTP {method}"):
            raise HttpError(401, "missing or invalid bearer token (header 'Authorization: Bearer <token>')",
                            "UNAUTHENTICATED")

    def _counted(self, method: str, handler: Handler) -> Handler:
        """Authentication, error mapping and ``trtserve_requests_total{method="HTTP <method>"}`` for one route."""
        known = self._metrics.models
        requests = self._metrics.requests
        label = f"HTTP {method}"

        async def route(request: web.Request) -> web.StreamResponse:
            model = request.match_info.get("model", "")
            code = "OK"
            try:
                self._authenticate(request, method, False)
                return await handler(request)
            except HttpError as exc:
                code = exc.code
                raise
            except Exception as exc:
                code = code_name(exc)
                status = HTTP_STATUS.get(code, 500)
                raise HttpError(status, public_reason(exc, f"HTTP {method} {clip(request.path)}"), code) from None
            except BaseException as exc:  # the client went away: its call is cancelled
                code = code_name(exc)
                raise
            finally:
                requests.labels(model if model in known else "", label, code).inc()

        return route

    def _health(self, ready: Callable[[], bool]) -> Handler:
        async def route(request: web.Request) -> web.StreamResponse:
            self._authenticate(request, "health", self._health_open)
            return web.Response(status=200 if ready() else 400)  # Triton: 400 when not ready, empty body both ways

        return route

    async def _unserved(self, request: web.Request) -> web.StreamResponse:
        self._log.warning("unserved", "answered 501 to HTTP %s %s", request.method, clip(request.path))
        raise HttpError(501, f"{request.method} {clip(request.path)} is not served by trtserve (no model control, "
                             "shared memory, trace or log settings); see the README's KServe section", "UNIMPLEMENTED")

    @staticmethod
    def _version(request: web.Request) -> str:
        return request.match_info.get("version", "")

    # --- the routes -------------------------------------------------------------------------------------------

    async def _server_metadata(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(message_json(self.dataplane.server_metadata()))

    async def _model_metadata(self, request: web.Request) -> web.StreamResponse:
        m = self.dataplane.model_metadata(request.match_info["model"], self._version(request))
        return web.json_response(message_json(m))

    async def _model_ready(self, request: web.Request) -> web.StreamResponse:
        ready = self.dataplane.model_ready(request.match_info["model"], self._version(request))
        return web.Response(status=200 if ready else 400)

    async def _model_config(self, request: web.Request) -> web.StreamResponse:
        config = self.dataplane.model_config(request.match_info["model"], self._version(request))
        return web.json_response(message_json(config))  # Triton's HTTP config is the ModelConfig itself

    async def _model_stats(self, request: web.Request) -> web.StreamResponse:
        stats = self.dataplane.statistics(request.match_info.get("model", ""), self._version(request))
        return web.json_response(message_json(stats))

    async def _repository_index(self, request: web.Request) -> web.StreamResponse:
        index = self.dataplane.repository_index()
        return web.json_response([message_json(m) for m in index.models])

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > self._max_message_bytes:
            raise self._too_large(request)  # before reading a byte of it
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large(request) from None
        message, binary_outputs, default_binary = parse_http_infer(
            body, request.headers.get(HEADER_LENGTH), request.match_info["model"], self._version(request))
        response = await self.dataplane.infer(message)
        return http_infer_response(response, binary_outputs, default_binary)
