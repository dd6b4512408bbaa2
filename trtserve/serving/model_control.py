"""Model control while serving: load, unload and reload models of the repository without downtime.

Contract (what the tests check):

* **Reload** (and a load of a model already loaded): the new version is opened (its detector, drift shadow and
  pipeline) and warmed beside the serving one — off the event loop, so streams keep flowing. Then the server's
  ``pipelines`` mapping, which both servicers read for every frame, points at the new pipeline: a frame not yet
  admitted goes to the new version, a frame already admitted finishes on the old one (no batch mixes versions —
  the switch is at a batch boundary), and the old pipeline then drains and closes. No frame sees an error.
* **A failed load** (an unknown model, a broken model.yaml or model file, a shadow that will not start) leaves the
  serving version serving; the call fails with the cause's status code and a message saying which version still
  serves and why; :meth:`ModelControl.status` keeps the reason (``last_control_error`` in GetModel).
* **Two operations at once on one model: the second is refused** (:class:`ModelBusyError`, ABORTED), saying how
  long the first has run — not queued: a queued reload would load the same files again, and a caller that wants
  it retries once the first finished. Operations on different models run concurrently.
* **Unload**: the model leaves the mapping (its frames then get NOT_FOUND), its admitted frames finish, and its
  health turns NOT_SERVING.
* **Versions**: 1 at the first load, +1 for each successful reload (``trtserve_model_version{model}``); the drift
  series and window restart with each version, with a log line.
* ``repository_poll_s``: loaded models whose folder's files changed (and then stayed unchanged for one more poll,
  so a calibration writing several files is picked up once) are reloaded; a failed poll reload is logged once per
  state of the files, not retried until they change again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtserve.config import ModelConfig, ReservoirSpec
from trtserve.detector import Detector
from trtserve.errors import ModelNotFoundError, NotServingError, RequestError, ServerError, TrtserveError, clip
from trtserve.monitoring.metrics import Metrics
from trtserve.monitoring.reservoir import Reservoir, reservoir_dir
from trtserve.repository import ModelRepository
from trtserve.serving.pipeline import Pipeline
from trtserve.vision.letterbox import Letterbox

logger = logging.getLogger(__name__)

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"
SETTLE_S = 0.05  # after the switch, frames handed to the old pipeline just before it are still admitted there


class ModelBusyError(RequestError):
    """Another load, unload or reload of the same model is running."""

    grpc_code = "ABORTED"


class ModelControlOffError(RequestError):
    """Model control RPCs are off on this server."""

    grpc_code = "FAILED_PRECONDITION"


class ModelControlError(ServerError):
    """A load or reload failed; ``grpc_code`` is the cause's (NOT_FOUND for an unknown model, ...)."""

    def __init__(self, message: str, grpc_code: str) -> None:
        super().__init__(message)
        self.grpc_code = grpc_code


@dataclass
class ModelStatus:
    """Where one model stands: the version serving (0: none yet), its state, and why the latest operation failed."""

    name: str
    version: int = 0
    state: str = UNAVAILABLE
    reason: str = ""
    message: str = ""  # what the latest operation did
    fingerprint: tuple[tuple[str, int, int, int], ...] = ()  # the files the serving version was opened from
    failed_fingerprint: tuple[tuple[str, int, int, int], ...] | None = None  # the poll does not retry these


OpenPipeline = Callable[[str, int], Awaitable[Pipeline]]  # (model, version) -> a started pipeline, not registered


def folder_fingerprint(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """(name, size, mtime_ns, inode) of the regular files directly in a model's folder (not its subfolders — the
    engine cache and the reservoir — nor dotfiles, which are writes in progress)."""
    found = []
    try:
        for path in sorted(directory.iterdir()):
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if path.is_file():
                found.append((path.name, st.st_size, st.st_mtime_ns, st.st_ino))
    except OSError:
        return ()
    return tuple(found)


def warm_up(detector: Detector) -> None:
    """Run a blank batch of 1 and of the max batch, so the first frames of a new version pay no first-run cost.

    A version that cannot run one blank frame is broken (raises: the load fails, the old version keeps serving);
    one that fails only at the max batch is logged (serving would fail such batches alone, as before the reload).
    """
    spec = detector.config.input
    hw = (spec.height_px, spec.width_px)
    blank = np.full((*hw, 3), spec.pad_value, np.uint8)
    geometry = Letterbox.plan(hw, hw)
    detector.run_batch([blank], [geometry], [detector.thresholds])
    n = detector.config.max_batch_size
    if n > 1:
        try:
            detector.run_batch([blank] * n, [geometry] * n, [detector.thresholds] * n)
        except Exception as exc:
            logger.warning("model %s: warm-up at the max batch (%d) failed: %s: %s; serving it anyway",
                           detector.config.name, n, type(exc).__name__, exc)


class ModelControl:
    """Loads, unloads and reloads the models in ``pipelines`` (the server's mapping, read by both servicers).

    ``open_pipeline(name, version)`` opens and starts a pipeline for the repository's model ``name`` without
    registering it; ``set_health(name, serving)`` sets its grpc.health.v1 status. Call everything on the server's
    event loop.
    """

    def __init__(self, pipelines: MutableMapping[str, Pipeline], repository: ModelRepository,
                 open_pipeline: OpenPipeline, set_health: Callable[[str, bool], Awaitable[None]], metrics: Metrics,
                 grace_period_s: float, rpc_enabled: bool = False) -> None:
        self.pipelines = pipelines
        self.repository = repository
        self._open = open_pipeline
        self._set_health = set_health
        self.metrics = metrics
        self.grace_period_s = grace_period_s
        self.rpc_enabled = rpc_enabled
        self._status: dict[str, ModelStatus] = {}
        self._busy: dict[str, tuple[str, float]] = {}  # model -> (operation, monotonic start)
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._poll_task: asyncio.Task[None] | None = None
        self._reservoirs: dict[str, tuple[ReservoirSpec, Reservoir]] = {}  # of the versions serving
        # what the version being opened asked for (None: off), made current when it serves (_commit_reservoir)
        self._pending_reservoirs: dict[str, tuple[ReservoirSpec, Reservoir] | None] = {}

    # --- what the servicers call ----------------------------------------------------------------------------------

    def check_rpc(self) -> None:
        """ModelControlOffError unless model control RPCs are on."""
        if not self.rpc_enabled:
            raise ModelControlOffError("model control is off on this server: start it with `model_control: true` "
                                       "in its configuration to load, unload and reload models while serving")

    def status(self, name: str) -> ModelStatus:
        """The status of ``name`` (UNAVAILABLE with version 0 for a model never loaded)."""
        return self._status.get(name) or ModelStatus(name)

    async def load(self, name: str, at_start: bool = False) -> ModelStatus:
        """Load ``name`` from the repository; a model already loaded is reloaded (as in Triton). ``at_start``: a
        failure raises the cause itself (the server refuses to start with it), not a ModelControlError.

        A name that is not one of the repository's models (a path such as ``../x`` never is) is refused with
        NOT_FOUND before anything is recorded for it: no status entry, no metric series."""
        self.repository.check(name)
        try:
            return await self._replace(name, "load")
        except ModelControlError as exc:
            if at_start and exc.__cause__ is not None:
                raise exc.__cause__ from None
            raise

    async def reload(self, name: str) -> ModelStatus:
        """Reload a loaded model from its files; ModelNotFoundError when it is not loaded."""
        if name not in self.pipelines:
            raise ModelNotFoundError(f"model {clip(name)} is not loaded, so it cannot be reloaded; load it instead "
                                     f"(loaded: {sorted(self.pipelines)})")
        return await self._replace(name, "reload")

    async def unload(self, name: str) -> ModelStatus:
        """Stop serving ``name``: its admitted frames finish, later ones get NOT_FOUND."""
        if name not in self.pipelines:
            raise ModelNotFoundError(f"model {clip(name)} is not loaded; loaded: {sorted(self.pipelines)}")
        status = self._begin(name, "unload")
        return await self._shielded(name, self._unload(status))

    async def _unload(self, status: ModelStatus) -> ModelStatus:
        name = status.name
        old = self.pipelines.pop(name)
        status.state = UNLOADING
        await self._set_health(name, False)
        drained = await self._retire(old)
        status.state, status.reason = UNAVAILABLE, ""
        status.message = f"unloaded version {status.version} ({drained} admitted frames finished)"
        try:
            self.metrics.model_version.remove(name)
        except KeyError:
            pass
        logger.info("model %s: %s", name, status.message)
        return status

    # --- the operations -------------------------------------------------------------------------------------------

    def _begin(self, name: str, operation: str) -> ModelStatus:
        if self._closing:
            raise NotServingError(f"the server is shutting down; {operation} of model {clip(name)} refused")
        if name in self._busy:
            running, since = self._busy[name]
            raise ModelBusyError(f"a {running} of model {clip(name)} is already running (for "
                                 f"{time.monotonic() - since:.1f} s); wait for it to finish, then retry the "
                                 f"{operation}")
        self._busy[name] = (operation, time.monotonic())
        self._idle.clear()
        return self._status.setdefault(name, ModelStatus(name))

    def _end(self, name: str) -> None:
        self._busy.pop(name, None)
        if not self._busy:
            self._idle.set()

    async def _replace(self, name: str, operation: str) -> ModelStatus:
        status = self._begin(name, operation)
        return await self._shielded(name, self._swap(status, self.pipelines.get(name), operation))

    async def _shielded(self, name: str, operation: Awaitable[ModelStatus]) -> ModelStatus:
        """Run ``operation`` to its end even when the caller goes away (a cancelled RPC must not leave two versions
        half swapped, or a pipeline opened and never closed), then mark the model free."""

        async def run() -> ModelStatus:
            try:
                return await operation
            finally:
                self._end(name)

        task = asyncio.ensure_future(run())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: logged by the operation
        return await asyncio.shield(task)

    async def _swap(self, status: ModelStatus, old: Pipeline | None, operation: str) -> ModelStatus:
        name = status.name
        version = status.version + 1
        status.state = LOADING
        t0 = time.monotonic()
        fingerprint = folder_fingerprint(self.repository.root / name)
        try:
            new = await self._open(name, version)
        except Exception as exc:
            self._pending_reservoirs.pop(name, None)
            self._failed(status, old, operation, exc, fingerprint)
            raise self._error(status, old, operation, exc) from exc
        try:
            await asyncio.to_thread(warm_up, new.detector)
        except Exception as exc:
            self._pending_reservoirs.pop(name, None)
            await self._retire(new, serving=old)
            self._failed(status, old, operation, exc, fingerprint)
            raise self._error(status, old, operation, exc) from exc
        self.pipelines[name] = new  # the switch: every frame admitted from now on runs on the new version
        self._commit_reservoir(name)
        status.version, status.state, status.reason = version, READY, ""
        status.fingerprint, status.failed_fingerprint = fingerprint, None
        self.metrics.model_version.labels(name).set(version)
        self.metrics.model_loads.labels(name, "ok").inc()
        await self._set_health(name, True)
        load_s = time.monotonic() - t0
        if old is None:
            status.message = f"version {version} serving (loaded and warmed in {load_s:.2f} s)"
            logger.info("model %s: %s", name, status.message)
            return status
        logger.info("model %s: version %d serving (loaded and warmed in %.2f s beside version %d); drift series and "
                    "window restart for version %d; version %d finishes its %d admitted frames", name, version, load_s,
                    version - 1, version, version - 1, old.admitted)
        drained = await self._retire(old, serving=new)
        status.message = (f"version {version} serving (loaded and warmed in {load_s:.2f} s); version {version - 1} "
                          f"finished its {drained} admitted frames")
        return status

    def _failed(self, status: ModelStatus, old: Pipeline | None, operation: str, exc: BaseException,
                fingerprint: tuple[tuple[str, int, int, int], ...]) -> None:
        status.state = READY if old is not None else UNAVAILABLE
        status.reason = f"{operation} failed: {exc}"
        status.failed_fingerprint = fingerprint
        self.metrics.model_loads.labels(status.name, "failed").inc()
        if old is not None and old.drift is not None:
            old.drift.rebind_metrics()  # the new version's monitor had taken the series over
        logger.error("model %s: %s %s", status.name, status.reason,
                     f"(version {status.version} keeps serving)" if old is not None else "(not serving)")

    @staticmethod
    def _error(status: ModelStatus, old: Pipeline | None, operation: str, exc: BaseException) -> ModelControlError:
        code = exc.grpc_code if isinstance(exc, TrtserveError) else "FAILED_PRECONDITION"
        if isinstance(exc, ModelNotFoundError):
            code = "NOT_FOUND"
        keeps = (f"version {status.version} keeps serving" if old is not None else "the model is not serving")
        return ModelControlError(f"{operation} of model {clip(status.name)} failed; {keeps}: {exc}", code)

    async def _retire(self, old: Pipeline, serving: Pipeline | None = None) -> int:
        """Let frames handed to ``old`` just before the switch be admitted, then drain and close it; returns how
        many frames it finished after the switch. ``serving``: the version of the model that serves on, so
        ``trtserve_model_ready`` stays 1 when it shares old's series (same precision)."""
        for _ in range(3):
            await asyncio.sleep(0)
        await asyncio.sleep(SETTLE_S)
        before = old.batcher.stats.items
        shared = serving is not None and serving.metrics.precision == old.metrics.precision
        await old.stop(drain=True, timeout_s=self.grace_period_s, mark_not_ready=not shared)
        await asyncio.to_thread(old.detector.close)
        return old.batcher.stats.items - before

    # --- the repository poll --------------------------------------------------------------------------------------

    def start_polling(self, interval_s: float) -> None:
        """Reload loaded models whose files changed, checked every ``interval_s`` seconds."""
        self._poll_task = asyncio.get_running_loop().create_task(self._poll(interval_s), name="trtserve-poll")

    async def _poll(self, interval_s: float) -> None:
        seen: dict[str, tuple[tuple[str, int, int, int], ...]] = {}
        while not self._closing:
            await asyncio.sleep(interval_s)
            for name in list(self.pipelines):
                status = self.status(name)
                now = await asyncio.to_thread(folder_fingerprint, self.repository.root / name)
                previous, seen[name] = seen.get(name), now
                if name in self._busy or self._closing or now in (status.fingerprint, status.failed_fingerprint):
                    continue
                if now != previous:  # still changing (a calibration writes several files): wait one more poll
                    continue
                logger.info("model %s: its files changed; reloading", name)
                try:
                    await self._replace(name, "reload")
                except TrtserveError:
                    pass  # logged once by _failed; the poll tries again when the files change again

    # --- reservoirs -----------------------------------------------------------------------------------------------

    def reservoir_for(self, config: ModelConfig, spec: ReservoirSpec) -> Reservoir | None:
        """The calibration reservoir of ``config``'s model for the version being opened; None when it is off.
        ConfigError for a folder that cannot be written.

        One Reservoir object per folder: while its folder stays the same it is kept across versions — the old
        version's drift monitor and the new one's offer to the same object, so one writer — and changed settings
        (bounds, weight) are applied to it in place once the new version serves. A new folder gets a new
        Reservoir. Nothing changes for the serving version until the new one serves: a failed load leaves it."""
        if not spec.enabled:
            self._pending_reservoirs[config.name] = None
            return None
        directory = reservoir_dir(spec, config.name, config.directory)
        held = self._reservoirs.get(config.name)
        if held is not None and held[1].directory == directory:
            reservoir = held[1]
        else:
            reservoir = Reservoir.open(config.name, directory, spec, self.metrics)
        self._pending_reservoirs[config.name] = (spec, reservoir)
        return reservoir

    def _commit_reservoir(self, name: str) -> None:
        """The version just switched to serves: its reservoir (and settings) become the model's."""
        if name not in self._pending_reservoirs:
            return
        pending = self._pending_reservoirs.pop(name)
        if pending is None:
            self._reservoirs.pop(name, None)
            return
        spec, reservoir = pending
        if reservoir.spec != spec:
            reservoir.reconfigure(spec)
        self._reservoirs[name] = (spec, reservoir)

    def reservoir(self, name: str) -> Reservoir:
        """The reservoir of loaded model ``name``; ModelNotFoundError when it has none."""
        held = self._reservoirs.get(name)
        if name not in self.pipelines or held is None:
            raise ModelNotFoundError(f"model {clip(name)} has no calibration reservoir on this server (loaded: "
                                     f"{sorted(self.pipelines)}); enable calibration_reservoir and drift for it")
        return held[1]

    async def close(self) -> None:
        """Refuse new operations, stop the poll, and wait for the running ones to finish."""
        self._closing = True
        await self._idle.wait()  # a reload under way finishes (and registers or drops its pipeline) first
        if self._poll_task is not None:
            self._poll_task.cancel()
            try:
                await self._poll_task
            except (asyncio.CancelledError, Exception):
                pass
