"""Client SDK for ``trtserve.v1``: sync (:class:`DetectionClient`) and asyncio (:class:`AsyncDetectionClient`).

A frame is BGR (H x W x 3) or grayscale (H x W) uint8; with ``jpeg_quality=None`` it is sent as raw pixels (BGR8, or
GRAY8 for a grayscale frame). A ``head: raw`` model answers with its own output tensors: :func:`tensors_of` gives
them as NumPy arrays; ``outputs`` asks for some of them only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import cv2
import grpc
import numpy as np
from numpy.typing import NDArray

from trtserve.errors import InvalidFrameError
from trtserve.v1 import detection_pb2 as pb
from trtserve.v1 import detection_pb2_grpc as pb_grpc
from trtserve.vision.detections import Detections

T = TypeVar("T")
# KServe v2 datatype names (DetectResponse.tensors) -> NumPy, little-endian as the bytes are sent
DATATYPES = {"BOOL": np.dtype(np.bool_), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"),
             "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"),
             "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"),
             "FP64": np.dtype("<f8")}


@dataclass(frozen=True)
class Frame:
    """A frame to send: BGR pixels, its stream and sequence number."""

    image_bgr: NDArray[np.uint8]  # H x W x 3 BGR, or H x W grayscale
    stream_id: str = ""
    sequence: int = 0


def detections_of(response: pb.DetectResponse) -> Detections:
    """A response's detections as arrays (boxes xyxy in frame pixels, scores, class ids)."""
    d = response.detections
    boxes = np.array([[x.box.x_min, x.box.y_min, x.box.x_max, x.box.y_max] for x in d], np.float32).reshape(-1, 4)
    return Detections(boxes, np.array([x.score for x in d], np.float32), np.array([x.class_id for x in d], np.int64))


def tensors_of(response: pb.DetectResponse) -> dict[str, NDArray[np.generic]]:
    """A ``head: raw`` model's answer: its output tensors by name, each this frame's (batch dim removed)."""
    out: dict[str, NDArray[np.generic]] = {}
    for t in response.tensors:
        if t.datatype not in DATATYPES:
            raise InvalidFrameError(f"tensor {t.name!r} has datatype {t.datatype!r}, which this client does not read")
        out[t.name] = np.frombuffer(t.data, DATATYPES[t.datatype]).reshape(tuple(t.shape))
    return out


def make_request(frame: Frame, model: str = "", jpeg_quality: int | None = 90, outputs: Sequence[str] = ()
                 ) -> pb.DetectRequest:
    """Encode a frame as JPEG (``jpeg_quality``) or, with ``None``, as raw pixels (BGR8; GRAY8 for an H x W frame).
    ``outputs``: for a ``head: raw`` model, the output tensors to answer with (empty: all)."""
    request = pb.DetectRequest(model=model, stream_id=frame.stream_id, sequence=frame.sequence, outputs=list(outputs))
    image = frame.image_bgr
    gray = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    if jpeg_quality is None:
        h, w = image.shape[:2]
        request.image.raw.CopyFrom(pb.RawImage(pixels=np.ascontiguousarray(image).tobytes(), height=h, width=w,
                                               format=pb.PIXEL_FORMAT_GRAY8 if gray else pb.PIXEL_FORMAT_BGR8))
    else:
        ok, buf = cv2.imencode(".jpg", frame.image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise InvalidFrameError("OpenCV could not JPEG-encode the frame; send a uint8 image (H x W x 3 BGR, or "
                                    "H x W grayscale)")
        request.image.encoded = buf.tobytes()
    return request


class DetectionClient:
    """Blocking client. ``with DetectionClient("127.0.0.1:8001") as c: c.detect(frame)``. ``outputs``: for a
    ``head: raw`` model, the output tensors to ask for (empty: all; read them with :func:`tensors_of`)."""

    def __init__(self, address: str, model: str = "", jpeg_quality: int | None = 90,
                 credentials: grpc.ChannelCredentials | None = None, outputs: Sequence[str] = ()) -> None:
        self._channel = (grpc.secure_channel(address, credentials) if credentials is not None
                         else grpc.insecure_channel(address))
        self._stub = pb_grpc.DetectionServiceStub(self._channel)
        self.model, self.jpeg_quality, self.outputs = model, jpeg_quality, tuple(outputs)

    def detect(self, image_bgr: NDArray[np.uint8], timeout_s: float | None = None) -> pb.DetectResponse:
        """One frame; raises grpc.RpcError with the server's status code on failure."""
        response: pb.DetectResponse = self._stub.Detect(
            make_request(Frame(image_bgr), self.model, self.jpeg_quality, self.outputs), timeout=timeout_s)
        return response

    def stream(self, frames: Iterable[Frame]) -> Iterator[pb.DetectResponse]:
        """Send frames on one StreamDetect call; yields exactly one answer per frame, in order."""
        requests = (make_request(f, self.model, self.jpeg_quality, self.outputs) for f in frames)
        yield from self._stub.StreamDetect(requests)

    def stream_frames(self, images: Iterable[NDArray[np.uint8]], stream_id: str = ""
                      ) -> Iterator[tuple[NDArray[np.uint8], pb.DetectResponse]]:
        """BGR frames (numbered from 0) on one StreamDetect call; yields each frame with its answer, in order."""
        sent: deque[NDArray[np.uint8]] = deque()

        def frames() -> Iterator[Frame]:
            for i, image in enumerate(images):
                sent.append(image)
                yield Frame(image, stream_id, i)

        for answer in self.stream(frames()):
            yield sent.popleft(), answer

    def models(self) -> pb.ListModelsResponse:
        response: pb.ListModelsResponse = self._stub.ListModels(pb.ListModelsRequest())
        return response

    def model_info(self, name: str = "") -> pb.ModelInfo:
        info: pb.ModelInfo = self._stub.GetModel(pb.GetModelRequest(name=name or self.model))
        return info

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        grpc.channel_ready_future(self._channel).result(timeout=timeout_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DetectionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncDetectionClient:
    """asyncio client with the same methods as :class:`DetectionClient`."""

    def __init__(self, address: str, model: str = "", jpeg_quality: int | None = 90,
                 credentials: grpc.ChannelCredentials | None = None, outputs: Sequence[str] = ()) -> None:
        self._channel = (grpc.aio.secure_channel(address, credentials) if credentials is not None
                         else grpc.aio.insecure_channel(address))
        self._stub = pb_grpc.DetectionServiceStub(self._channel)
        self.model, self.jpeg_quality, self.outputs = model, jpeg_quality, tuple(outputs)

    async def detect(self, image_bgr: NDArray[np.uint8], timeout_s: float | None = None) -> pb.DetectResponse:
        response: pb.DetectResponse = await self._stub.Detect(
            make_request(Frame(image_bgr), self.model, self.jpeg_quality, self.outputs), timeout=timeout_s)
        return response

    async def stream(self, frames: AsyncIterator[Frame] | Iterable[Frame]) -> AsyncIterator[pb.DetectResponse]:
        async def requests() -> AsyncIterator[pb.DetectRequest]:
            async for f in _aiter(frames):
                yield make_request(f, self.model, self.jpeg_quality, self.outputs)

        async for response in self._stub.StreamDetect(requests()):
            yield response

    async def stream_frames(self, images: AsyncIterator[NDArray[np.uint8]] | Iterable[NDArray[np.uint8]],
                            stream_id: str = "") -> AsyncIterator[tuple[NDArray[np.uint8], pb.DetectResponse]]:
        """BGR frames (numbered from 0) on one StreamDetect call; yields each frame with its answer, in order."""
        sent: deque[NDArray[np.uint8]] = deque()

        async def frames() -> AsyncIterator[Frame]:
            i = 0
            async for image in _aiter(images):
                sent.append(image)
                yield Frame(image, stream_id, i)
                i += 1

        async for answer in self.stream(frames()):
            yield sent.popleft(), answer

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncDetectionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _aiter(items: AsyncIterator[T] | Iterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterator):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
