"""Fixtures of the conformance tier: NVIDIA's real bindings per release, prepared once and cached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .bindings import WHEELS, Bindings, BindingsUnavailableError, prepare, require_tools


@dataclass(frozen=True)
class Target:
    """A version of the contract double and the real release its API is checked against."""

    double: str  # the version the double emulates (trtserve's build paths key on it)
    real: str  # key of WHEELS
    note: str = ""

    @property
    def id(self) -> str:
        return f"double-{self.double}-vs-real-{self.real}"


TARGETS = [
    Target("8.5.2", "8.6.1", "TensorRT 8.5 is not on PyPI: its double is checked against 8.6.1, the nearest release"),
    Target("8.6.2", "8.6.1"),
    Target("10.3.0", "10.3.0"),
    Target("10.13.0", "10.13.3.9.post1"),
    Target("11.4.1", "11.4.0.106"),
]
REAL_VERSIONS = list(WHEELS)

_prepared: dict[str, Bindings | str] = {}


def bindings_for(version: str) -> Bindings:
    """The prepared release, or skip (fail under `make test`) with the reason it cannot be prepared here."""
    if version not in _prepared:
        try:
            _prepared[version] = prepare(version)
        except BindingsUnavailableError as exc:
            _prepared[version] = str(exc)
    found = _prepared[version]
    if isinstance(found, str):
        # No wheel for this Python is a fact about the host, not a broken setup: skipped even under `make test`.
        if require_tools() and WHEELS[version].unavailable_reason() is None:
            pytest.fail(found)
        pytest.skip(found)
    return found


_apis: dict[str, dict[str, Any]] = {}


def api_for(version: str) -> dict[str, Any]:
    if version not in _apis:
        _apis[version] = bindings_for(version).api()
    return _apis[version]


@pytest.fixture(scope="session")
def conformance_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance")
