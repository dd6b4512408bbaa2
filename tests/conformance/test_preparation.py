"""How the tier gets NVIDIA's bindings: the stand-in covers what they import, a failed download says what to do,
and under `make test` (TRTSERVE_REQUIRE_TOOLS=1) a missing release fails instead of skipping."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import bindings, conftest
from .bindings import WHEELS, BindingsUnavailableError, Wheel


@pytest.mark.parametrize("version", list(WHEELS))
def test_the_stand_in_defines_every_symbol_the_bindings_import(version: str) -> None:
    prepared = conftest.bindings_for(version)
    assert prepared.symbols <= bindings._STUB_SYMBOLS
    assert {"createInferBuilder_INTERNAL", "createInferRuntime_INTERNAL", "createNvOnnxParser_INTERNAL"} \
        <= prepared.symbols
    major = prepared.wheel.major
    assert f"libnvinfer.so.{major}" in prepared.sonames and f"libnvonnxparser.so.{major}" in prepared.sonames
    assert all((prepared.stub_dir / soname).is_file() for soname in prepared.sonames)
    if major == 8:  # the UFF and Caffe parsers went in 10.0
        assert "_ZN11nvuffparser15createUffParserEv" in prepared.symbols


def test_an_unreachable_index_gives_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bindings, "CACHE", tmp_path)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    with pytest.raises(BindingsUnavailableError, match=r"could not download tensorrt-cu12-bindings==10.3.0 from PyPI "
                                                       r"after 1 attempts .*connect to PyPI \(or put the wheel"):
        bindings.download(Wheel("tensorrt-cu12-bindings", "10.3.0"), attempts=1, pip_retries=0)


@pytest.mark.parametrize("required", [True, False])
def test_a_missing_release_fails_under_make_test_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch,
                                                                    required: bool) -> None:
    def unreachable(version: str) -> bindings.Bindings:
        raise BindingsUnavailableError("PyPI is unreachable")

    monkeypatch.setattr(conftest, "prepare", unreachable)
    monkeypatch.setattr(conftest, "_prepared", {})
    if required:
        monkeypatch.setenv("TRTSERVE_REQUIRE_TOOLS", "1")
    else:
        monkeypatch.delenv("TRTSERVE_REQUIRE_TOOLS", raising=False)
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(outcome, match="PyPI is unreachable"):
        conftest.bindings_for("10.3.0")
