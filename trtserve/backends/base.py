"""The backend seam: load a model file, describe its tensors, run one batch.

A backend does no heavy work in its constructor: :meth:`Backend.load` opens the model, so that
objects can be created (and configuration validated) without a GPU or the runtime library.
"""

from __future__ import annotations

import abc
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

from trtserve.errors import BackendError, InvalidFrameError
from trtserve.reports import OMIT_WHEN_NONE, JsonReport

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from trtserve.config import ModelConfig


@dataclass(frozen=True)
class TensorInfo:
    """Name, numpy dtype and shape of a model input or output; ``None`` marks a dynamic dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class BackendOptions:
    intra_op_threads: int = 0  # 0: the runtime's default
    graph_optimization: str = "all"  # disable | basic | extended | all
    providers: tuple[str, ...] = ()  # empty: the best the host offers
    # ONNX Runtime's intra-op threads spin between operators by default: fastest alone, but they burn the cores
    # that decode and the gRPC threads of a server need. The server turns it off.
    spin_wait: bool = True
    precision: str = "fp32"  # set by Detector.open; tells onnxruntime's TensorRT provider what to enable
    execution_contexts: int = 0  # tensorrt: concurrent batches (0: one per optimization profile of the engine)
    # the GPU (CUDA device index, as this process sees them) the model runs on; None: the runtime's current device
    # (GPU 0). model.yaml's ``device:`` sets it; a list there spreads instances over GPUs (backends/devices.py)
    device_id: int | None = None
    instances: int = 0  # batches the server runs at once (0: not serving, e.g. the CLI): spread over ``device:``
    # a reload while serving: a backend whose model file is built for the host (a TensorRT engine) builds it now
    # when none fits the current sources (a recalibrated Q/DQ model or cache), with the settings of the one it had
    rebuild_engine: bool = False


class HostFacts(Protocol):
    """What ``trtserve doctor`` found on this host (its report), as a backend reads it to say what it can run."""

    gpus: list[dict[str, str]]
    l4t: str | None
    cuda_runtime: str | None
    tensorrt: str | None
    dla_cores: int | None
    onnxruntime: str | None
    onnxruntime_providers: list[str]


@dataclass(frozen=True, kw_only=True)
class BackendSupport(JsonReport):
    """Whether a backend can run on a host, at which precisions, and if not, why (``trtserve doctor``)."""

    available: bool
    # the runtime's own execution providers, where it has them (left out of the JSON where it has none)
    providers: tuple[str, ...] | None = field(default=None, metadata=OMIT_WHEN_NONE)
    precisions: tuple[str, ...] = ()
    why_not: str | None = None


class Backend(abc.ABC):
    """One loaded model. Subclasses fill :meth:`_load`, :meth:`_infer` and :meth:`_close`."""

    name: ClassVar[str]

    def __init__(self, model_path: Path, options: BackendOptions | None = None) -> None:
        self.model_path = Path(model_path)
        self.options = options or BackendOptions()
        self._inputs: list[TensorInfo] = []
        self._outputs: list[TensorInfo] = []
        self._loaded = False

    @property
    def inputs(self) -> list[TensorInfo]:
        self._require_loaded()
        return self._inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        self._require_loaded()
        return self._outputs

    @property
    def runtime_version(self) -> str:
        """The runtime library's version (for build info); empty when unknown."""
        return ""

    @property
    def device(self) -> str:
        """Where the model runs, in a word or two (``cpu``, ``cuda:0``, a GPU name); for build info."""
        return "unknown"

    @classmethod
    @abc.abstractmethod
    def support(cls, host: HostFacts) -> BackendSupport:
        """What this backend can run on ``host`` (for ``trtserve doctor``); never raises, never loads a model."""

    @classmethod
    def model_file(cls, config: ModelConfig, precision: str, device_id: int | None = None,
                   rebuild: bool = False) -> Path:
        """The file this backend loads for ``config`` at ``precision`` on GPU ``device_id`` (default: the model.yaml
        artifact, the same on every device). ``rebuild``: see ``BackendOptions.rebuild_engine``."""
        return config.artifact(precision)

    @property
    def places_on_device(self) -> bool:
        """Whether ``options.device_id`` chooses where this loaded model runs (False on a CPU)."""
        return True

    def load(self) -> Backend:
        """Open the model. Raises :class:`ModelLoadError` with what to do when it cannot."""
        if not self._loaded:
            self._inputs, self._outputs = self._load()
            self._inputs_by_name = {t.name: t for t in self._inputs}
            self._loaded = True
        return self

    def infer(self, feeds: dict[str, NDArray[np.generic]]) -> dict[str, NDArray[np.generic]]:
        """Run one batch. Checks feeds against the input metadata first (names, dtype, rank, fixed dims).

        Returns fresh arrays owned by the caller, keyed by output name.
        """
        self._require_loaded()
        expected = self._inputs_by_name
        if feeds.keys() != expected.keys():
            raise InvalidFrameError(f"inputs {sorted(feeds)} do not match the model's {sorted(expected)}")
        for name, array in feeds.items():
            info = expected[name]
            if array.dtype != info.dtype:
                raise InvalidFrameError(f"input '{name}' has dtype {array.dtype}; the model expects {info.dtype}")
            if array.ndim != len(info.shape) or any(
                    d is not None and d != a for d, a in zip(info.shape, array.shape)):
                raise InvalidFrameError(f"input '{name}' has shape {list(array.shape)}; the model expects "
                                        f"{['?' if d is None else d for d in info.shape]}")
        try:
            return self._infer(feeds)
        except InvalidFrameError:
            raise
        except Exception as exc:  # the runtime's own errors become one typed error; their text (paths, node names,
            # the runtime's source files) goes to the log under an incident id, which is all a client is told
            incident = uuid.uuid4().hex[:12]
            logger.error("%s backend failed on a batch of %s [incident %s]: %s", self.name, self.model_path.name,
                         incident, exc)
            raise BackendError(f"the {self.name} backend failed on a batch of {self.model_path.name} (incident "
                               f"{incident}; the server log has the details)") from exc

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    def __enter__(self) -> Backend:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError(f"{type(self).__name__} used before load()")

    @abc.abstractmethod
    def _load(self) -> tuple[list[TensorInfo], list[TensorInfo]]: ...

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, NDArray[np.generic]]) -> dict[str, NDArray[np.generic]]: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources; the default has nothing to release."""
