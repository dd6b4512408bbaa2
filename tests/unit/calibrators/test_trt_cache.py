from pathlib import Path

import pytest

from calibrators.trt_cache import (
    CacheFormatError,
    hex_to_scale,
    make_cache,
    read_cache,
    scale_to_hex,
    tensorrt_version_int,
    write_cache,
)


@pytest.mark.parametrize("version, expected", [
    ("8.5.2", 8502), ("8.6.2", 8602), ("10.3.0", 100300), ("10.13.0", 101300), ("11.4.1", 110401), ("10.3", 100300),
])
def test_version_integer(version: str, expected: int) -> None:
    assert tensorrt_version_int(version) == expected


@pytest.mark.parametrize("bad", ["8", "ten.3", "7.1.3", "8.100.0"])
def test_bad_versions(bad: str) -> None:
    with pytest.raises(ValueError):
        tensorrt_version_int(bad)


def test_scale_hex_is_big_endian_float32_without_padding() -> None:
    assert hex_to_scale("3c010a14") == pytest.approx(0.0078759, rel=1e-5)
    assert scale_to_hex(hex_to_scale("3c010a14")) == "3c010a14"
    assert scale_to_hex(1.0 / 127.0) == "3c010204"
    assert scale_to_hex(1e-45) == "1"  # a denormal: no zero padding


def test_round_trip_and_scale_is_amax_over_127(tmp_path: Path) -> None:
    cache = make_cache({"images": 1.0, "/model/conv1/Relu_output_0": 6.35}, "8.6.2", "entropy")
    path = write_cache(cache, tmp_path / "calib.cache")
    text = path.read_text()
    assert text.splitlines()[0] == "TRT-8602-EntropyCalibration2"
    assert "images: 3c010204" in text
    back = read_cache(path)
    assert back.version_int == 8602 and back.algorithm == "EntropyCalibration2"
    assert back.amax("/model/conv1/Relu_output_0") == pytest.approx(6.35, rel=1e-6)
    assert make_cache({"x": 2.0}, "10.3.0", "minmax").to_text().startswith("TRT-100300-MinMaxCalibration\n")


def test_invalid_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tensor 'x' has amax 0"):
        make_cache({"x": 0.0}, "8.6.2")
    with pytest.raises(ValueError, match="not 'percentile'"):
        make_cache({"x": 1.0}, "8.6.2", "percentile")
    bad = tmp_path / "bad.cache"
    bad.write_text("TRT-8602-EntropyCalibration2\nimages 3c010204\n")
    with pytest.raises(CacheFormatError, match="line 2"):
        read_cache(bad)
    bad.write_text("hello\n")
    with pytest.raises(CacheFormatError, match="line 1"):
        read_cache(bad)
