"""The one JSON form of every report trtserve prints or writes (calibration, benchmarks, demo, doctor, stream).

Each report is a frozen dataclass deriving from :class:`JsonReport`; its fields, in declaration order, are the
keys of its JSON form. :meth:`JsonReport.as_dict` builds that form: nested reports become nested objects, tuples
become lists, and a field declared ``field(default=None, metadata=OMIT_WHEN_NONE)`` is left out while it is None
(a None field declared without it is written as ``null``); one declared with ``metadata=NOT_IN_JSON`` is never
written (data the object carries for other readers, such as the HTML calibration report). Imports nothing: the
CLI and the backends read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from types import MappingProxyType
from typing import Any

_OMIT_KEY = "trtserve.omit_when_none"
OMIT_WHEN_NONE: Mapping[str, bool] = MappingProxyType({_OMIT_KEY: True})  # dataclass field metadata
_NOT_IN_JSON_KEY = "trtserve.not_in_json"
NOT_IN_JSON: Mapping[str, bool] = MappingProxyType({_NOT_IN_JSON_KEY: True})  # carried by the object, never written


def _plain(value: object) -> Any:
    """``value`` as JSON-ready data: reports to dicts, mappings key by key, tuples and lists to lists."""
    if isinstance(value, JsonReport):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


class JsonReport:
    """Base of the report dataclasses: their JSON form, one key per field in declaration order."""

    def as_dict(self) -> dict[str, Any]:
        """The report as ``json.dumps`` takes it, optional fields that are None left out (see the module)."""
        assert is_dataclass(self), f"{type(self).__name__} is not a dataclass"
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if (value is None and f.metadata.get(_OMIT_KEY)) or f.metadata.get(_NOT_IN_JSON_KEY):
                continue
            out[f.name] = _plain(value)
        return out
