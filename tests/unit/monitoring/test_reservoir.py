"""The calibration reservoir: bounded (frames and bytes), weighted toward disagreement, persistent, and what it does
with a folder it cannot write or a disk that fills up."""

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest

from trtserve.config import InputSpec, ReservoirSpec
from trtserve.errors import ConfigError
from trtserve.monitoring.metrics import Metrics
from trtserve.monitoring.reservoir import Reservoir, letterboxed_from_tensor
from trtserve.vision.preprocess import Preprocessor

SPEC = InputSpec(name=None, layout="nchw", height_px=32, width_px=48, color_order="rgb", scale=1 / 255,
                 mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7), pad_value=114)


def image(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (32, 48, 3), dtype=np.uint8)


def test_a_tensor_goes_back_to_the_exact_letterboxed_frame() -> None:
    frames = [image(i) for i in range(3)]
    for spec in (SPEC, InputSpec(None, "nhwc", 32, 48, "bgr", 1 / 255, (0, 0, 0), (1, 1, 1), 114)):
        tensor = Preprocessor(spec).to_tensor(frames)
        for frame, t in zip(frames, tensor):
            assert np.array_equal(letterboxed_from_tensor(spec, t), frame)


def test_bounded_by_frames_and_bytes_and_kept_across_a_restart(tmp_path: Path) -> None:
    spec = ReservoirSpec(enabled=True, max_frames=20, max_bytes=10**9)
    metrics = Metrics(process=False)
    r = Reservoir.open("m", tmp_path / "r", spec, metrics, random.Random(1))
    stream_index = {}  # stored id -> position in the stream
    for i in range(200):
        if r.offer(image(i), 1.0):
            stream_index[r.last_id] = i
    assert len(r) == 20 and r.kept >= 20 and r.offered == 200
    files = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert len(files) == 20 and sum((tmp_path / "r" / f).stat().st_size for f in files) == r.size_bytes
    assert metrics.registry.get_sample_value("trtserve_calibration_reservoir_frames", {"model": "m"}) == 20
    ids = [f.id for f in r.snapshot()]
    # reservoir sampling over the whole stream: the early frames are not all crowded out by the late ones
    positions = [stream_index[i] for i in ids]
    assert min(positions) < 100 < max(positions) and sum(p < 100 for p in positions) >= 4

    again = Reservoir.open("m", tmp_path / "r", spec, None, random.Random(2))
    assert [f.id for f in again.snapshot()] == ids and again.last_id == r.last_id
    again.offer(image(999), 0.0)
    assert len(again) == 20 and again.last_id >= r.last_id
    smaller = Reservoir.open("m", tmp_path / "r", ReservoirSpec(enabled=True, max_frames=5, max_bytes=10**9))
    assert len(smaller) == 5 and len(list((tmp_path / "r").iterdir())) == 5  # trimmed to new bounds

    size = again.snapshot()[0].size_bytes
    by_bytes = Reservoir.open("b", tmp_path / "b", ReservoirSpec(enabled=True, max_frames=1000,
                                                                 max_bytes=int(size * 3.5)), None, random.Random(3))
    for i in range(50):
        by_bytes.offer(image(i), 1.0)
    assert by_bytes.size_bytes <= size * 3.5 and 2 <= len(by_bytes) <= 4


def test_disagreement_is_kept_preferentially(tmp_path: Path) -> None:
    r = Reservoir.open("m", tmp_path, ReservoirSpec(enabled=True, max_frames=50, disagreement_weight=3.0),
                       None, random.Random(7))
    small = np.zeros((4, 4, 3), np.uint8)
    for i in range(1000):
        r.offer(small, 0.0 if i % 2 else 1.0)  # half the frames disagree entirely
    kept = [f.agreement for f in r.snapshot()]
    # weight 4 against 1: ~80 % of the kept frames are disagreeing ones (uniform sampling would keep ~50 %)
    assert sum(a == 0.0 for a in kept) / len(kept) > 0.65
    assert r.weight(0.0) == 4.0 and r.weight(1.0) == 1.0 and r.weight(float("nan")) == 4.0


def test_an_unwritable_folder_is_refused_naming_it(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(ConfigError, match=f"folder {blocked / 'm'} is not writable"):
        Reservoir.open("m", blocked / "m", ReservoirSpec(enabled=True))
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="not writable"):
            Reservoir.open("m", ro, ReservoirSpec(enabled=True))


def test_a_full_disk_stops_adding_counts_and_logs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    import trtserve.monitoring.reservoir as module

    metrics = Metrics(process=False)
    r = Reservoir.open("m", tmp_path, ReservoirSpec(enabled=True, max_frames=100), metrics, random.Random(0))
    assert r.offer(image(0), 1.0)

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "_atomic_write", full)  # the one thing not reproducible here: a full disk
    for i in range(10):
        assert not r.offer(image(i), 1.0)
    assert r.write_errors == 10 and len(r) == 1
    assert metrics.registry.get_sample_value("trtserve_calibration_reservoir_write_errors_total", {"model": "m"}) == 10
    assert sum("disk is full" in m for m in caplog.messages) == 1
    monkeypatch.undo()
    monkeypatch.setattr(module.time, "monotonic", lambda: 1e12)  # a minute later: tried again, and it works
    assert r.offer(image(11), 1.0) and len(r) == 2


def test_a_write_that_fails_when_full_evicts_nothing(tmp_path: Path) -> None:
    """A real failing write: the process's file-size limit (RLIMIT_FSIZE) below one PNG, as a full disk refuses
    it. Each retry used to unlink the frames it would evict first, then fail to add its own: the reservoir
    emptied itself on a full disk."""
    import resource
    import signal

    r = Reservoir.open("m", tmp_path, ReservoirSpec(enabled=True, max_frames=3), None, random.Random(0))
    for i in range(3):
        assert r.offer(image(i), 1.0)
    before = sorted(p.name for p in tmp_path.glob("*.png"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))
    try:
        for i in range(3, 200):
            r._blocked_until = 0.0  # each offer is a retry "a minute later"
            r.offer(image(i), 0.0)  # weight 4: most would evict one of the three
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert r.write_errors > 10
    assert len(r) == 3 and sorted(p.name for p in tmp_path.glob("*.png")) == before
    assert not list(tmp_path.glob(".*.tmp"))
    r._blocked_until = 0.0
    for i in range(200, 300):  # writable again: frames are replaced, one for one
        r.offer(image(i), 0.0)
    assert len(r) == 3 and len(list(tmp_path.glob("*.png"))) == 3 and r.kept > 3
