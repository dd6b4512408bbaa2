"""The exception hierarchy of trtserve.

Two families, as operators need them apart: :class:`RequestError` means one request (or one frame)
failed and the server goes on; :class:`ServerError` means a model or the server cannot go on.
Each class names its gRPC status code (by name, so that this module never imports grpc); the
serving layer maps codes in exactly one place.
"""

from __future__ import annotations


class TrtserveError(Exception):
    """Base of every error trtserve raises on purpose. ``str(err)`` is the user-facing message."""

    grpc_code: str = "INTERNAL"


def code_name(error: BaseException) -> str:
    """The gRPC status code name for an exception: its ``grpc_code``, CANCELLED or INTERNAL (a bug)."""
    if isinstance(error, TrtserveError):
        return error.grpc_code
    if type(error).__name__ == "CancelledError":  # asyncio's or concurrent.futures'
        return "CANCELLED"
    return "INTERNAL"


def clip(value: object, limit: int = 100) -> str:
    """``value`` quoted as in ``repr``, cut to ``limit`` characters then "…": what an error message may echo of
    a client's input (a model name, a tensor name), so a hostile value cannot blow up a message or a trailer."""
    text = repr(value) if isinstance(value, str) else repr(str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RequestError(TrtserveError):
    """One request failed; the server keeps serving."""


class InvalidFrameError(RequestError):
    """A frame could not be decoded or has a shape, dtype or size the model cannot take."""

    grpc_code = "INVALID_ARGUMENT"


class ModelNotFoundError(RequestError):
    grpc_code = "NOT_FOUND"


class QueueFullError(RequestError):
    """The model's queue is full: retry later or add capacity."""

    grpc_code = "RESOURCE_EXHAUSTED"


class DeadlineExceededError(RequestError):
    """The caller's deadline passed before the frame reached the engine."""

    grpc_code = "DEADLINE_EXCEEDED"


class NotServingError(RequestError):
    """Not accepting work: not started yet, or draining for shutdown."""

    grpc_code = "UNAVAILABLE"


class CalibrationInputError(RequestError):
    """Calibration was given frames it cannot use (a missing folder or video, no readable image, a bad batch)."""

    grpc_code = "INVALID_ARGUMENT"


class UsageError(RequestError):
    """A command was called with arguments that do not fit together; the message says what to pass instead."""

    grpc_code = "INVALID_ARGUMENT"


class ServerError(TrtserveError):
    """A model or the server cannot go on (bad configuration, a model that will not load)."""

    grpc_code = "UNAVAILABLE"


class RemoteCallError(ServerError):
    """A call to a trtserve server failed (a client command): the message carries the server's code and reason."""

    grpc_code = "UNAVAILABLE"


class ConfigError(ServerError):
    """A configuration file is invalid. The message names the file, the key, the value and what was expected."""

    grpc_code = "FAILED_PRECONDITION"


class ModelLoadError(ServerError):
    """A model file is missing, corrupt, or does not match its configuration."""

    grpc_code = "FAILED_PRECONDITION"


class BackendError(ServerError):
    """The inference backend failed while running a batch."""

    grpc_code = "INTERNAL"


class TensorRTUnavailableError(ConfigError):
    """TensorRT (or the CUDA runtime bindings) is not installed on this host."""


class EngineBuildError(ModelLoadError):
    """TensorRT refused to parse or build the network; the message says which node or setting and what to do."""
