"""Named plugins: the one table per seam (backends, detector heads) that configuration, loading and
``trtserve doctor`` all read, so a new backend or head is one new file plus one line in its table.

An entry is ``"module:attribute"``, imported on first use, so reading the names (config validation, the CLI's
choices) never imports an inference runtime. Tests and extensions may :meth:`Registry.register` a class
directly.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Generic, TypeVar

from trtserve.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Plugins of one ``kind`` (``"backend"``, ``"head type"``) by name."""

    def __init__(self, kind: str, entries: Mapping[str, str]) -> None:
        self.kind = kind
        self._entries: dict[str, str | type[T]] = dict(entries)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def register(self, name: str, target: str | type[T]) -> None:
        """Add ``name`` (a class, or ``"module:Class"``); ConfigError when the name is taken."""
        if name in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r})")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's or an extension's own entry); unknown names are ignored."""
        self._entries.pop(name, None)

    def load(self, name: str) -> type[T]:
        """The class registered as ``name``; ConfigError lists the known names."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; expected one of {list(self._entries)}")
        target = self._entries[name]
        if not isinstance(target, str):
            return target
        module, attribute = target.split(":")
        found: type[T] = getattr(importlib.import_module(module), attribute)
        return found
