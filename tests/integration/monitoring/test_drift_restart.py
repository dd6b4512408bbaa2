"""A killed FP32 shadow process is restarted with backoff; while it is down the monitor says so and presents
no stale window as current (real shadow processes, real prometheus_client)."""

import logging
import math
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from trtserve.config import DriftSpec
from trtserve.datasets.synthetic import video_frames
from trtserve.detector import Detector
from trtserve.monitoring.drift import DriftMonitor, RestartBackoff
from trtserve.monitoring.metrics import Metrics
from trtserve.repository import ModelRepository

from ...conftest import ENGINES
from .test_drift import copy_model, shrink_calibration

LABELS = {"model": "shapes", "precision": "int8"}


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, LABELS)


def test_a_killed_shadow_comes_back_with_backoff_and_is_stale_while_down(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    folder = copy_model(tmp_path)
    shrink_calibration(folder / "model.int8.onnx", 0.25)  # a drifting model: its verdict is NOT_SERVING
    spec = DriftSpec(enabled=True, sample_rate=1.0, max_pending=64, min_window_frames=8, agreement_threshold=0.9,
                     unhealthy_below_threshold=True)
    # the first restart waits 0.3 s (so the outage is long enough to look at), the next 0.6 s: a shadow that
    # dies again before reset_after_s backs off
    backoff = RestartBackoff(initial_s=0.3, max_s=1.0, reset_after_s=30.0, poll_s=0.02)
    metrics = Metrics(process=False)
    verdicts: list[bool] = []
    caplog.set_level(logging.INFO, logger="trtserve.monitoring.drift")
    with Detector.open(ModelRepository(tmp_path / "engines").get("shapes"), "int8") as detector:
        prepared = [detector.prepare_letterboxed(s.image_bgr) for s in video_frames(8)]
        images, geometries = [p[0] for p in prepared], [p[1] for p in prepared]
        thresholds = [detector.thresholds] * len(images)
        run = detector.run_batch(images, geometries, thresholds)
        monitor = DriftMonitor.open(detector, spec, metrics, verdicts.append, backoff)
        try:
            def feed(batches: int) -> None:
                assert all(monitor.offer(run, geometries, thresholds) for _ in range(batches))
                assert monitor.wait_idle(60)

            assert math.isnan(sample(metrics, "trtserve_drift_window_agreement_f1") or 0.0)  # no window yet
            feed(2)
            before = monitor.summary()
            assert not before.stale and before.window_frames == 16 and before.below_threshold
            assert verdicts == [False]
            assert sample(metrics, "trtserve_drift_shadow_up") == 1
            assert (sample(metrics, "trtserve_drift_window_agreement_f1") or 1.0) < 0.9

            first = monitor.shadow_pid
            assert first is not None and first != os.getpid()
            os.kill(first, signal.SIGKILL)
            assert monitor.wait_shadow(up=False, timeout_s=10)  # noticed while idle, not only on the next batch
            assert sample(metrics, "trtserve_drift_shadow_up") == 0
            assert math.isnan(sample(metrics, "trtserve_drift_window_agreement_f1") or 0.0)
            down = monitor.summary()
            assert down.stale and not down.below_threshold and down.window_frames == 16  # kept, marked stale
            assert verdicts == [False, True]  # no live shadow, no drift verdict: health is not held down
            assert not any(monitor.offer(run, geometries, thresholds) for _ in range(5))  # dropped, not queued
            assert monitor.summary().skipped_shadow_down == 5
            assert sample(metrics, "trtserve_drift_skipped_shadow_down_total") == 5
            assert monitor.summary().errors == 0  # an idle death fails no run; samples offered meanwhile neither

            assert monitor.wait_shadow(up=True, timeout_s=60)
            assert monitor.shadow_pid not in (None, first)
            assert sample(metrics, "trtserve_drift_shadow_up") == 1
            assert sample(metrics, "trtserve_drift_shadow_restarts_total") == 1
            back = monitor.summary()
            assert not back.stale and back.window_frames == 0 and back.shadow_restarts == 1  # a new window
            assert math.isnan(sample(metrics, "trtserve_drift_window_agreement_f1") or 0.0)
            feed(2)
            fresh = monitor.summary()
            assert fresh.window_frames == 16 and fresh.samples == 32 and fresh.below_threshold
            assert (sample(metrics, "trtserve_drift_window_agreement_f1") or 1.0) < 0.9
            assert verdicts == [False, True, False]  # judged afresh on the new window

            os.kill(monitor.shadow_pid or 0, signal.SIGKILL)  # dies again soon after: the backoff doubles
            assert monitor.wait_shadow(up=False, timeout_s=10)
            assert monitor.wait_shadow(up=True, timeout_s=60)
            assert monitor.summary().shadow_restarts == 2 and not monitor.summary().stale
            assert sample(metrics, "trtserve_drift_shadow_restarts_total") == 2
        finally:
            monitor.close()
    assert sample(metrics, "trtserve_drift_shadow_up") == 0  # closed: no shadow runs

    lines = [r.getMessage() for r in caplog.records if r.name == "trtserve.monitoring.drift"]
    died = [line for line in lines if "the drift shadow process" in line]
    assert len(died) == 2, lines  # once per outage, not once per dropped batch
    assert "was killed by SIGKILL" in died[0] and "restarting it in 0.3 s" in died[0]
    assert "restarting it in 0.6 s" in died[1]
    assert len([line for line in lines if "the drift shadow is back" in line]) == 2, lines
    assert len([line for line in lines if "no drift verdict until it is back" in line]) == 2, lines


def test_closing_while_the_shadow_restarts_leaves_no_shadow_behind(caplog: pytest.LogCaptureFixture) -> None:
    spec = DriftSpec(enabled=True, sample_rate=1.0)
    metrics = Metrics(process=False)
    caplog.set_level(logging.INFO, logger="trtserve.monitoring.drift")
    with Detector.open(ModelRepository(ENGINES).get("shapes"), "int8") as detector:
        monitor = DriftMonitor.open(detector, spec, metrics, restart=RestartBackoff(initial_s=0.05, poll_s=0.02))
        pid = monitor.shadow_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert monitor.wait_shadow(up=False, timeout_s=10)
        monitor.close()  # the restart is spawning or loading now, or about to start: it is abandoned
        assert not monitor._thread.is_alive()
    assert not monitor.shadow_up and monitor.summary().stale
    assert sample(metrics, "trtserve_drift_shadow_up") == 0
    assert not [r for r in caplog.records if "is back" in r.getMessage()]
    assert not [c for c in multiprocessing.active_children() if c.name.startswith("trtserve-shadow-")]


def test_a_shadow_that_cannot_even_be_spawned_is_tried_again(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The spawn itself failing (out of file descriptors, processes, memory) is a failed start like any other:
    the monitor keeps trying with backoff instead of stopping for good."""
    import errno

    import trtserve.monitoring.drift as drift

    real = drift._ShadowProcess
    spawns = {"n": 0}

    def spawn(*args, **kwargs):  # type: ignore[no-untyped-def]
        spawns["n"] += 1
        if spawns["n"] == 2:  # the first restart: no process can be made
            raise OSError(errno.EMFILE, "Too many open files")
        return real(*args, **kwargs)

    monkeypatch.setattr(drift, "_ShadowProcess", spawn)
    spec = DriftSpec(enabled=True, sample_rate=1.0)
    caplog.set_level(logging.INFO, logger="trtserve.monitoring.drift")
    with Detector.open(ModelRepository(ENGINES).get("shapes"), "int8") as detector:
        monitor = DriftMonitor.open(detector, spec, Metrics(process=False), lambda _: None,
                                    RestartBackoff(initial_s=0.05, max_s=0.2, reset_after_s=30.0, poll_s=0.02))
        try:
            first = monitor.shadow_pid
            os.kill(first or 0, signal.SIGKILL)
            assert monitor.wait_shadow(up=False, timeout_s=10)
            assert monitor.wait_shadow(up=True, timeout_s=60)  # after the failed spawn, the next one
            assert spawns["n"] >= 3 and monitor.shadow_pid not in (None, first)
        finally:
            monitor.close()
    assert any("could not be spawned" in r.getMessage() and "Too many open files" in r.getMessage()
               for r in caplog.records)


def test_a_batch_offered_while_the_monitor_closes_is_neither_queued_nor_left_pending() -> None:
    """The sampled batch is copied outside the monitor's lock (the engine thread reuses its input array); a close that
    lands during that copy must not leave the sample queued after the shadow is gone, nor counted as pending."""
    import dataclasses

    import numpy as np

    spec = DriftSpec(enabled=True, sample_rate=1.0, max_pending=8, min_window_frames=8, agreement_threshold=0.5)
    with Detector.open(ModelRepository(ENGINES).get("shapes"), "int8") as detector:
        prepared = [detector.prepare_letterboxed(s.image_bgr) for s in video_frames(2)]
        images, geometries = [p[0] for p in prepared], [p[1] for p in prepared]
        thresholds = [detector.thresholds] * len(images)
        run = detector.run_batch(images, geometries, thresholds, reuse_input=True)
        monitor = DriftMonitor.open(detector, spec, Metrics(process=False))

        class ClosesOnCopy(np.ndarray):
            def copy(self, *args: object, **kwargs: object) -> np.ndarray:  # type: ignore[override]
                monitor.close()  # the server stops the model while this batch's sample is being copied
                return np.asarray(self).copy()

        closing = dataclasses.replace(run, tensor=run.tensor.view(ClosesOnCopy))
        try:
            assert not monitor.offer(closing, geometries, thresholds)  # refused: the monitor closed meanwhile
            assert monitor.wait_idle(0.5)  # nothing left pending
            assert monitor.summary().skipped_shadow_down == 1
        finally:
            monitor.close()
