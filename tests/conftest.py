from collections.abc import Iterator
from pathlib import Path

import pytest

from trtserve.detector import Detector
from trtserve.repository import ModelRepository

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ROOT / "engines"


@pytest.fixture(scope="session")
def repository() -> ModelRepository:
    return ModelRepository(ENGINES)


@pytest.fixture(scope="session")
def shapes(repository: ModelRepository) -> Iterator[Detector]:
    with Detector.open(repository.get("shapes")) as detector:
        yield detector
