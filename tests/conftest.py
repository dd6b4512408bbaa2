import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from trtserve.detector import Detector
from trtserve.repository import ModelRepository

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ROOT / "engines"


def require_tool(name: str, package: str) -> str:
    """The path of a Debian-packaged tool the tests use. `make test` installs it (make tools) and sets
    TRTSERVE_REQUIRE_TOOLS, so there a missing tool fails; elsewhere the test is skipped, saying why."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Debian package {package!r}; `make tools` installs it)"
        if os.environ.get("TRTSERVE_REQUIRE_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def repository() -> ModelRepository:
    return ModelRepository(ENGINES)


@pytest.fixture(scope="session")
def shapes(repository: ModelRepository) -> Iterator[Detector]:
    with Detector.open(repository.get("shapes")) as detector:
        yield detector
