"""The IInt8EntropyCalibrator2 adapter against the TensorRT contract double (no GPU here)."""

from pathlib import Path

import pytest

from calibrators.tensorrt_calibrator import make_entropy_calibrator
from calibrators.trt_cache import CacheFormatError, make_cache, write_cache

from ...doubles import tensorrt_double as trt


def test_serves_a_cache_without_asking_for_batches(tmp_path: Path) -> None:
    path = write_cache(make_cache({"images": 1.0, "r1": 4.0}, "8.6.2"), tmp_path / "calib.cache")
    calibrator = make_entropy_calibrator(path, batch_size=8, trt=trt)
    assert isinstance(calibrator, trt.IInt8EntropyCalibrator2)
    assert calibrator.get_algorithm() == trt.CalibrationAlgoType.ENTROPY_CALIBRATION_2
    assert calibrator.get_batch(["images"]) is None
    assert trt.run_implicit_calibration(calibrator, ["images"]) == path.read_bytes()


def test_a_minmax_cache_is_served_by_a_minmax_calibrator(tmp_path: Path) -> None:
    """TensorRT ignores a cache whose header names another algorithm than the calibrator's."""
    path = write_cache(make_cache({"images": 1.0}, "8.6.2", "minmax"), tmp_path / "calib.cache")
    calibrator = make_entropy_calibrator(path, batch_size=8, trt=trt)
    assert calibrator.get_algorithm() == trt.CalibrationAlgoType.MINMAX_CALIBRATION
    assert trt.run_implicit_calibration(calibrator, ["images"]) == path.read_bytes()
    other = tmp_path / "legacy.cache"
    other.write_text("TRT-8602-LegacyCalibration\nimages: 3c010204\n")
    with pytest.raises(CacheFormatError, match=r"a LegacyCalibration cache; .* --method entropy"):
        make_entropy_calibrator(other, batch_size=8, trt=trt)


def test_a_bad_cache_is_refused_before_the_build(tmp_path: Path) -> None:
    bad = tmp_path / "calib.cache"
    bad.write_text("TRT-8602-EntropyCalibration2\nimages = 3c010204\n")
    with pytest.raises(CacheFormatError, match="line 2"):
        make_entropy_calibrator(bad, batch_size=8, trt=trt)


def test_cache_written_by_the_builder_is_saved(tmp_path: Path) -> None:
    path = tmp_path / "new.cache"
    calibrator = make_entropy_calibrator(path, batch_size=1, feeds=[], trt=trt)
    assert calibrator.read_calibration_cache() is None
    calibrator.write_calibration_cache(b"TRT-8602-EntropyCalibration2\n")
    assert path.read_bytes() == b"TRT-8602-EntropyCalibration2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["new.cache"]
