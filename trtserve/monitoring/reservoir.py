"""The live-frame calibration reservoir: a bounded, weighted sample of the frames the drift shadow compared.

Per model, off by default (``calibration_reservoir:``). Every frame the FP32 shadow compared is offered, with its
agreement F1 (served INT8 vs FP32; the cosine similarity for raw-output models), to a **weighted reservoir
sample** over the whole stream (Efraimidis-Spirakis A-Res): the frame draws ``u ~ U(0, 1)`` and gets the key
``ln(u) / w`` with weight ``w = 1 + disagreement_weight * (1 - agreement)``; the reservoir keeps the frames with the
largest keys. With ``disagreement_weight`` 3 (the default), a frame on which INT8 and FP32 disagree entirely is
kept with four times the weight of one on which they agree; 0 gives a uniform sample. Keys are independent of
time, so the last hour does not crowd out the rest, and of restarts: they are stored with the frames.

The frames are stored as the model saw them: letterboxed to its input size (undoing only the normalization of
the tensor the shadow got), as lossless PNG, one file each, named ``<id>_<key>_<agreement>.png`` — the folder is
the index, so every change is one atomic rename or unlink and a restart reads the folder back. Bounds:
``max_frames`` and ``max_bytes`` (the frames with the smallest keys go first; a frame that does not fit is not
kept). A write that fails (disk full, permissions) stops adding: the frame is counted, the log says so once, and
adding is tried again a minute later.
"""

from __future__ import annotations

import errno
import heapq
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from trtserve.config import InputSpec, ReservoirSpec
from trtserve.errors import ConfigError

if TYPE_CHECKING:
    from trtserve.monitoring.metrics import Metrics

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{12})_([+-]\d+\.\d+)_(\d\.\d{4})\.png$")
RETRY_AFTER_WRITE_ERROR_S = 60.0


@dataclass(frozen=True)
class ReservoirFrame:
    """One stored frame: ``id`` grows with each frame stored (the pull's resume point); ``key`` its sampling key."""

    id: int
    key: float
    agreement: float
    size_bytes: int
    path: Path


def reservoir_dir(spec: ReservoirSpec, model: str, model_dir: Path) -> Path:
    """Where model ``model``'s frames live: ``<dir>/<model>``, or ``<model folder>/reservoir`` without ``dir``."""
    return spec.dir / model if spec.dir is not None else model_dir / "reservoir"


def letterboxed_from_tensor(spec: InputSpec, frame: NDArray[np.floating]) -> NDArray[np.uint8]:
    """One frame of a model input tensor back to the letterboxed BGR uint8 image it was made from.

    The inverse of :meth:`trtserve.vision.preprocess.Preprocessor.to_tensor` (layout, colour order, scale, mean,
    std), exact for float32 tensors after rounding. A uint8 ``H x W x 3`` frame (a model that normalizes inside
    takes the letterboxed BGR frames themselves) is returned as it is.
    """
    if frame.dtype == np.uint8 and frame.shape[-1] == 3 and frame.shape[:2] == (spec.height_px, spec.width_px):
        return np.asarray(frame)
    x = np.asarray(frame, np.float32)
    planes = x if spec.layout == "nchw" else np.moveaxis(x, -1, 0)  # channels first, model colour order
    std, mean = np.array(spec.std, np.float32), np.array(spec.mean, np.float32)
    values = (planes * std[:, None, None] + mean[:, None, None]) / np.float32(spec.scale)
    order = (2, 1, 0) if spec.color_order == "rgb" else (0, 1, 2)  # model channel c holds BGR channel order[c]
    bgr = np.empty((*values.shape[1:], 3), np.uint8)
    for c, src in enumerate(order):
        bgr[..., src] = np.clip(np.rint(values[c]), 0, 255).astype(np.uint8)
    return bgr


class Reservoir:
    """The reservoir of one model in ``directory``. Thread-safe: offered from drift monitor threads, read by pulls.

    Create with :meth:`open`, which refuses (ConfigError naming it) a folder it cannot write.
    """

    def __init__(self, model: str, directory: Path, spec: ReservoirSpec, metrics: Metrics | None = None,
                 rng: random.Random | None = None) -> None:
        self.model = model
        self.directory = directory
        self.spec = spec
        # this object's identity, sent with every pulled frame: a pull resumed against another replica or after a
        # restart sees another id and is refused (trtserve.calibration.from_server), never mixed
        self.instance_id = uuid.uuid4().hex
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._frames: dict[int, ReservoirFrame] = {}
        self._heap: list[tuple[float, int]] = []  # (key, id), smallest key first; stale entries skipped
        self._bytes = 0
        self._next_id = 1
        self._blocked_until = 0.0  # after a failed write: no adding until then
        self.offered = self.kept = self.write_errors = 0
        self._m_frames = self._m_bytes = self._m_errors = None
        if metrics is not None:
            self._m_frames = metrics.reservoir_frames.labels(model)
            self._m_bytes = metrics.reservoir_bytes.labels(model)
            self._m_errors = metrics.reservoir_write_errors.labels(model)

    @classmethod
    def open(cls, model: str, directory: Path, spec: ReservoirSpec, metrics: Metrics | None = None,
             rng: random.Random | None = None) -> Reservoir:
        """Make (or reopen) the reservoir in ``directory``: check it is writable, read back what it holds, and trim
        it to the bounds (which may have shrunk since). ConfigError when the folder cannot be made or written."""
        where = f"calibration_reservoir of model {model}: folder {directory}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".probe-{os.getpid()}-{threading.get_ident()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"{where} is not writable ({exc.strerror or exc}); make it writable by this user, "
                              "set calibration_reservoir.dir to a writable folder, or set "
                              "calibration_reservoir.enabled: false") from None
        reservoir = cls(model, directory, spec, metrics, rng)
        reservoir._scan()
        return reservoir

    def _scan(self) -> None:
        for path in self.directory.iterdir():
            if path.name.startswith("."):  # a write that was interrupted: never renamed into place
                if path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)
                continue
            match = _NAME.match(path.name)
            if match is None:
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue
            frame = ReservoirFrame(int(match[1]), float(match[2]), float(match[3]), size, path)
            self._add(frame)
            self._next_id = max(self._next_id, frame.id + 1)
        self._trim()
        if self._frames:
            logger.info("model %s: calibration reservoir %s holds %d frames (%d bytes)", self.model,
                        self.directory, len(self._frames), self._bytes)

    def _trim(self) -> None:
        """Drop the smallest keys until the frames fit the bounds."""
        with self._lock:
            plan = self._eviction(0, math.inf, self.spec.max_frames) or []
            self._drop(plan)
            self._gauges()

    def reconfigure(self, spec: ReservoirSpec) -> None:
        """Take new settings in place (a reload whose ``calibration_reservoir`` changed bounds or weight, its
        folder the same): one Reservoir object per folder, so one writer; shrunk bounds trim at once."""
        with self._lock:
            self.spec = spec
        self._trim()

    # --- state (under the lock, or before the reservoir is shared) ----------------------------------------------

    def _add(self, frame: ReservoirFrame) -> None:
        self._frames[frame.id] = frame
        heapq.heappush(self._heap, (frame.key, frame.id))
        self._bytes += frame.size_bytes

    def _min(self) -> ReservoirFrame | None:
        while self._heap and self._heap[0][1] not in self._frames:
            heapq.heappop(self._heap)
        return self._frames[self._heap[0][1]] if self._heap else None

    def _eviction(self, size: int, key: float, max_frames: int) -> list[ReservoirFrame] | None:
        """The frames to drop so that one of ``size`` bytes and ``key`` fits (``max_frames`` counting it), or None
        when it does not fit without dropping a frame of a larger key. Changes nothing (see :meth:`_drop`)."""
        plan: list[ReservoirFrame] = []
        count, total = len(self._frames), self._bytes
        candidates = sorted((f for f in self._frames.values()), key=lambda f: f.key)
        for frame in candidates:
            if count <= max_frames and total + size <= self.spec.max_bytes:
                break
            if frame.key >= key:
                return None
            plan.append(frame)
            count, total = count - 1, total - frame.size_bytes
        if count > max_frames or total + size > self.spec.max_bytes:
            return None
        return plan

    def _drop(self, plan: list[ReservoirFrame]) -> None:
        """Remove ``plan``'s frames from the state and their files from the folder."""
        for frame in plan:
            if self._frames.pop(frame.id, None) is not None:
                self._bytes -= frame.size_bytes
            self._remove_file(frame)

    def _remove_file(self, frame: ReservoirFrame) -> None:
        try:
            frame.path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("model %s: cannot delete reservoir frame %s: %s", self.model, frame.path, exc)

    def _gauges(self) -> None:
        if self._m_frames is not None and self._m_bytes is not None:
            self._m_frames.set(len(self._frames))
            self._m_bytes.set(self._bytes)

    # --- the drift monitor's side ---------------------------------------------------------------------------------

    def weight(self, agreement: float) -> float:
        """The sampling weight of a frame with this agreement (clipped to 0..1)."""
        a = min(1.0, max(0.0, agreement if math.isfinite(agreement) else 0.0))
        return 1.0 + self.spec.disagreement_weight * (1.0 - a)

    def offer(self, image_bgr: NDArray[np.uint8], agreement: float) -> bool:
        """Maybe keep one letterboxed frame (BGR uint8); True when it was stored. Never raises for disk trouble."""
        key = math.log(max(self._rng.random(), 1e-300)) / self.weight(agreement)
        with self._lock:
            self.offered += 1
            if time.monotonic() < self._blocked_until:
                self._count_error()
                return False
            smallest = self._min()
            if len(self._frames) >= self.spec.max_frames and smallest is not None and smallest.key >= key:
                return False  # the common case once full: decided before any encoding
        import cv2

        ok, encoded = cv2.imencode(".png", image_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            return False
        data = encoded.tobytes()
        with self._lock:
            victims = self._eviction(len(data), key, self.spec.max_frames - 1)
            if victims is None:
                return False
            frame_id = self._next_id
            path = self.directory / f"{frame_id:012d}_{key:+.9f}_{min(1.0, max(0.0, agreement)):.4f}.png"
            try:  # written first: a write that fails (disk full) drops nothing, so the reservoir keeps its frames
                _atomic_write(path, data)
            except OSError as exc:
                self._write_failed(exc)
                self._gauges()
                return False
            self._next_id += 1
            self._drop(victims)
            if self._blocked_until:
                self._blocked_until = 0.0
                logger.info("model %s: calibration reservoir %s is writable again; adding frames", self.model,
                            self.directory)
            self._add(ReservoirFrame(frame_id, key, agreement, len(data), path))
            self.kept += 1
            self._gauges()
        return True

    def offer_tensor(self, spec: InputSpec, tensor: NDArray[np.floating], agreements: Sequence[float]) -> int:
        """Offer each frame of a model input batch with its agreement; returns how many were stored."""
        return sum(self.offer(letterboxed_from_tensor(spec, tensor[i]), a) for i, a in enumerate(agreements))

    def _count_error(self) -> None:
        self.write_errors += 1
        if self._m_errors is not None:
            self._m_errors.inc()

    def _write_failed(self, exc: OSError) -> None:
        first = not self._blocked_until
        self._blocked_until = time.monotonic() + RETRY_AFTER_WRITE_ERROR_S
        self._count_error()
        if first:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            logger.error("model %s: calibration reservoir %s: %s (%s); it stops adding frames, counts them in "
                         "trtserve_calibration_reservoir_write_errors_total and tries again every %.0f s",
                         self.model, self.directory, "the disk is full" if full else "cannot write a frame",
                         exc.strerror or exc, RETRY_AFTER_WRITE_ERROR_S)

    # --- the pull's side ------------------------------------------------------------------------------------------

    def snapshot(self) -> list[ReservoirFrame]:
        """The frames held now, by id."""
        with self._lock:
            return sorted(self._frames.values(), key=lambda f: f.id)

    @property
    def last_id(self) -> int:
        with self._lock:
            return self._next_id - 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
