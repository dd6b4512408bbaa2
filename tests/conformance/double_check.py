"""Check a ``tensorrt`` contract double against the real API dump of its release.

Whatever the double offers must be real: every public module attribute, every public class member (methods,
properties, static functions, nested classes, constants), with the same kind; every enum member with the same
value; every method accepting each arity a real overload accepts. The double may offer less than the real
module (it models trtserve's subset) but never something else. Test-harness helpers a double module holds are
declared in its ``__double_only__`` and skipped.
"""

from __future__ import annotations
import __future__

import enum
import inspect
from types import ModuleType
from typing import Any

_DOUBLE_MODULES = ("tests.doubles",)


def _kind(raw: Any) -> str:
    if isinstance(raw, property) or type(raw).__name__ in ("member_descriptor", "getset_descriptor"):
        return "property"
    if isinstance(raw, (staticmethod, classmethod)):
        return "static"
    if isinstance(raw, type):
        return "class"
    if callable(raw):
        return "method"
    return "attribute"


def _real_kind(member: dict[str, Any]) -> str:
    kind = str(member["kind"])
    return "attribute" if kind == "member" else kind


def _arity(function: Any) -> tuple[int, float]:
    """(required, accepted) positional parameters, self included."""
    signature = inspect.signature(function)
    required, accepted = 0, 0.0
    for p in signature.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            accepted += 1
            required += p.default is p.empty
        elif p.kind == p.VAR_POSITIONAL:
            accepted = float("inf")
    return required, accepted


def _real_arities(member: dict[str, Any]) -> list[tuple[int, int]]:
    found = []
    for overload in member.get("overloads", []):
        positional = [p for p in overload["params"] if p["kind"] == "positional"]
        found.append((sum(not p["default"] for p in positional), len(positional)))
    return found


def _own_members(cls: type) -> dict[str, Any]:
    """Public members the double defines on ``cls`` and its double bases (not object's, enum's, ...)."""
    members: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith(_DOUBLE_MODULES):
            continue
        for name, raw in vars(klass).items():
            if not name.startswith("_"):  # construction is checked where trtserve constructs (recorded uses)
                members[name] = raw
    return members


def check_class(name: str, cls: type, real: dict[str, Any] | None, version: str) -> list[str]:
    if real is None:
        return [f"the double offers class {name}; the real tensorrt {version} has none"]
    problems = []
    if issubclass(cls, enum.Enum):
        if real["kind"] != "enum":
            return [f"the double's {name} is an enum; the real {name} is a {real['kind']}"]
        for member in cls:
            value = real["values"].get(member.name)
            if value is None:
                problems.append(f"the double offers {name}.{member.name} = {int(member.value)}; the real {name} of "
                                f"tensorrt {version} has no such member (it has {sorted(real['values'])})")
            elif value != int(member.value):
                problems.append(f"the double's {name}.{member.name} is {int(member.value)}; the real value is {value}")
        return problems
    for attr, raw in _own_members(cls).items():
        member = real["members"].get(attr)
        if member is None:
            problems.append(f"the double offers {name}.{attr} ({_kind(raw)}); the real {name} of tensorrt {version} "
                            "has no such member")
            continue
        kind, real_kind = _kind(raw), _real_kind(member)
        if kind != real_kind:
            problems.append(f"the double's {name}.{attr} is a {kind}; the real one is a {real_kind}")
            continue
        if kind == "method":
            arities = _real_arities(member)
            required, accepted = _arity(raw)
            if arities and not any(required <= lo and hi <= accepted for lo, hi in arities):
                problems.append(f"the double's {name}.{attr} takes {required}..{accepted} positional arguments (self "
                                f"included); no real overload fits: {arities}")
    return problems


def check_double(double: ModuleType, api: dict[str, Any]) -> list[str]:
    """Every way the double departs from the real API, one line each (empty: conformant)."""
    version = api["version"]
    skip = set(getattr(double, "__double_only__", ()))
    problems = []
    for name in sorted(dir(double)):
        if name.startswith("_") or name in skip:
            continue
        value = getattr(double, name)
        if isinstance(value, ModuleType) or isinstance(value, __future__._Feature):
            continue
        if not str(getattr(value, "__module__", "") or "").startswith(_DOUBLE_MODULES) and (
                isinstance(value, type) or callable(value)):
            continue  # a name the double's source imports (typing.Any: a class on 3.11+, a callable form on 3.10)
        if isinstance(value, type):
            problems += check_class(name, value, api["classes"].get(name), version)
        elif callable(value):
            if name not in api["functions"]:
                problems.append(f"the double offers function {name}(); the real tensorrt {version} has none")
        elif name not in api["values"]:
            problems.append(f"the double offers {name} = {value!r}; the real tensorrt {version} has no such attribute")
    return problems
