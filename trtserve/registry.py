"""Named plugins: the one table per seam (backends, detector heads) that configuration, loading and
``trtserve doctor`` all read, so a new backend or head is one new file plus one line in its table.

An entry is ``"module:attribute"``, imported on first use, so reading the table (config validation, the CLI's
choices) never imports a plugin or an inference runtime. What validation must know about a plugin without
loading it is a *tag* on its entry (e.g. a head layout that needs the class list). Tests and extensions may
:meth:`Registry.register` a class directly.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Generic, TypeVar

from trtserve.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry(Generic[T]):
    target: str | type[T]  # "module:attribute", or the class itself
    tags: frozenset[str]


class Registry(Generic[T]):
    """Plugins of one ``kind`` (``"backend"``, ``"head type"``) by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, _Entry[T]] = {}

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def register(self, name: str, target: str | type[T], tags: Collection[str] = ()) -> None:
        """Add ``name``: a class, or ``"module:Class"`` imported on first :meth:`load`; ConfigError when taken."""
        if name in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is already registered ({self._entries[name].target!r})")
        if isinstance(target, str) and target.count(":") != 1:
            raise ConfigError(f"{self.kind} {name!r}: target {target!r}; expected 'package.module:Class'")
        self._entries[name] = _Entry(target, frozenset(tags))

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's or an extension's own entry); unknown names are ignored."""
        self._entries.pop(name, None)

    def tagged(self, name: str, tag: str) -> bool:
        """Whether ``name`` carries ``tag``, without loading it; ConfigError for an unknown name."""
        return tag in self._entry(name).tags

    def load(self, name: str) -> type[T]:
        """The class registered as ``name``; ConfigError lists the known names, or says why it cannot load."""
        target = self._entry(name).target
        if not isinstance(target, str):
            return target
        module, attribute = target.split(":")
        try:
            found: type[T] = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{self.kind} {name!r} is registered as {target!r}, which cannot be imported: "
                              f"{exc}") from exc
        return found

    def _entry(self, name: str) -> _Entry[T]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; expected one of {list(self._entries)}")
        return self._entries[name]
