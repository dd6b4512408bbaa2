"""The model repository: ``engines/<model>/model.yaml`` plus the model's files."""

from __future__ import annotations

import os
from pathlib import Path

from trtserve.config import ModelConfig, load_model_config
from trtserve.errors import ConfigError, ModelNotFoundError, clip

CONFIG_FILE = "model.yaml"


def default_root() -> Path:
    """``$TRTSERVE_MODEL_REPOSITORY`` if set, else ``engines/`` of a source checkout, else ``./engines``."""
    env = os.environ.get("TRTSERVE_MODEL_REPOSITORY")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent / "engines"
    return checkout if checkout.is_dir() else Path("engines")


class ModelRepository:
    """A folder with one sub-folder per model. Configurations are validated when read."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} does not exist; pass --repository DIR "
                              "or set TRTSERVE_MODEL_REPOSITORY")
        return sorted(p.name for p in self.root.iterdir() if (p / CONFIG_FILE).is_file())

    def check(self, name: str) -> None:
        """ModelNotFoundError unless ``name`` is one of :meth:`names` (a folder name: never a path such as
        ``../x``). The message clips ``name`` and lists the models, never the repository's path on this host: a
        server answers a client's model name with it (a repository that cannot be read counts as empty)."""
        try:
            names = self.names()
        except ConfigError:
            names = []
        self._known(name, names)

    @staticmethod
    def _known(name: str, names: list[str]) -> None:
        if name not in names:
            raise ModelNotFoundError(f"no model {clip(name)} in the model repository; available: {names or 'none'}")

    def get(self, name: str) -> ModelConfig:
        self._known(name, self.names())  # a missing repository: ConfigError naming it (the CLI's case)
        path = self.root / name / CONFIG_FILE
        config = load_model_config(path)
        if config.name != name:
            raise ConfigError(f"{path}: key 'name' has value {config.name!r}; expected {name!r} "
                              "(the folder name)")
        return config

    def all(self) -> list[ModelConfig]:
        return [self.get(n) for n in self.names()]
