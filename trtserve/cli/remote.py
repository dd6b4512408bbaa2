"""The client side of model control and reservoir pulls over trtserve.v1 (what ``trtserve models --server``,
``calibrate --from-server`` and ``recalibrate`` call). Errors become :class:`RemoteCallError` with the server's
code and reason."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from trtserve.calibration.from_server import PulledFrame
from trtserve.errors import RemoteCallError
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc

PULL_FRAMES_PER_CALL = 256
STATES = {pb.MODEL_STATE_READY: "READY", pb.MODEL_STATE_LOADING: "LOADING", pb.MODEL_STATE_UNLOADING: "UNLOADING",
          pb.MODEL_STATE_UNAVAILABLE: "UNAVAILABLE"}


class RemoteServer:
    """One trtserve server: ``token`` is sent as ``authorization: Bearer``; ``tls_ca`` (PEM bytes) turns TLS on."""

    def __init__(self, address: str, token: str | None = None, tls_ca: bytes | None = None,
                 timeout_s: float = 600.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = (grpc.secure_channel(address, grpc.ssl_channel_credentials(tls_ca)) if tls_ca is not None
                         else grpc.insecure_channel(address))
        self._stub = pb_grpc.DetectionServiceStub(self._channel)

    def _fail(self, what: str, exc: grpc.RpcError) -> RemoteCallError:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return RemoteCallError(f"{what} on {self.address}: {code}: {details}")

    def control(self, operation: str, name: str) -> dict[str, Any]:
        """``load`` / ``unload`` / ``reload`` model ``name``; the server's answer as a dict."""
        method = {"load": self._stub.LoadModel, "unload": self._stub.UnloadModel,
                  "reload": self._stub.ReloadModel}[operation]
        try:
            reply = method(pb.ModelControlRequest(name=name), metadata=self._metadata, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._fail(f"{operation} of model {name!r}", exc) from None
        return {"name": reply.name, "version": reply.version, "state": STATES.get(reply.state, "UNSPECIFIED"),
                "message": reply.message}

    def model(self, name: str) -> pb.ModelInfo:
        try:
            info: pb.ModelInfo = self._stub.GetModel(pb.GetModelRequest(name=name), metadata=self._metadata,
                                                     timeout=30)
        except grpc.RpcError as exc:
            raise self._fail(f"GetModel {name!r}", exc) from None
        return info

    def fetch(self, model: str) -> Any:
        """A :data:`trtserve.calibration.from_server.Fetch` over PullCalibrationFrames (bounded calls)."""

        def fetch(after_id: int, up_to_id: int) -> Iterator[PulledFrame]:
            request = pb.PullCalibrationFramesRequest(model=model, after_id=after_id, up_to_id=up_to_id,
                                                      max_frames=PULL_FRAMES_PER_CALL)
            try:
                for reply in self._stub.PullCalibrationFrames(request, metadata=self._metadata,
                                                               timeout=self.timeout_s):
                    f = reply.frame
                    yield PulledFrame(f.id, f.agreement, f.png, f.sha256, reply.snapshot_last_id, reply.remaining,
                                      reply.reservoir_id)
            except grpc.RpcError as exc:
                raise self._fail(f"pulling the calibration reservoir of {model!r} (interrupted; run the same "
                                 "command again to resume)", exc) from None

        return fetch

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RemoteServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
