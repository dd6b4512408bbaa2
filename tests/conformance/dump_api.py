"""Run inside a subprocess that imports NVIDIA's real ``tensorrt`` bindings: print their API surface as JSON.

Usage: ``python -m tests.conformance.dump_api MODULE`` (MODULE is ``tensorrt_bindings`` for the PyPI wheels).
Everything here is read from the live pybind11 module: classes and their bases, each member's kind (method,
property with or without a setter, static function, enum member and its value, plain attribute), and every
pybind11 overload signature (parameter names, whether each has a default, type and return annotations), parsed
from the signatures pybind11 writes into each function's docstring.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import json
import re
import sys
from typing import Any

_SIGNATURE = re.compile(r"^\s*(?:\d+\.\s+)?(?P<name>[A-Za-z_]\w*)\((?P<params>.*)\)(?:\s*->\s*(?P<ret>.+))?$")
_DUNDERS_KEPT = {"__init__", "__iter__", "__getitem__", "__len__", "__int__", "__index__", "__bool__",
                 "__call__", "__buffer__"}


def split_params(text: str) -> list[str]:
    """Split a pybind11 parameter list on the commas that are not inside brackets or a default's repr."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch in "[(<{":
            depth += 1
        elif ch in "])>}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def parse_signature(line: str) -> dict[str, Any] | None:
    match = _SIGNATURE.match(line)
    if match is None:
        return None
    params: list[dict[str, Any]] = []
    keyword_only = False
    for raw in split_params(match.group("params")):
        if raw == "*":
            keyword_only = True
            continue
        if raw.startswith("**"):
            params.append({"name": raw[2:].split(":")[0].strip(), "kind": "var_keyword"})
            continue
        if raw.startswith("*"):
            params.append({"name": raw[1:].split(":")[0].strip(), "kind": "var_positional"})
            continue
        head, _, default = raw.partition(" = ")
        name, _, annotation = head.partition(":")
        params.append({"name": name.strip(), "annotation": annotation.strip(), "default": bool(default),
                       "kind": "keyword_only" if keyword_only else "positional"})
    return {"name": match.group("name"), "params": params, "returns": (match.group("ret") or "").strip()}


def signatures(obj: Any, name: str) -> list[dict[str, Any]]:
    """Every overload of a pybind11 function, from the signature lines of its docstring."""
    doc = getattr(obj, "__doc__", None) or ""
    found = []
    for line in doc.splitlines():
        parsed = parse_signature(line)
        if parsed is not None and parsed["name"] == name:
            found.append(parsed)
    # an overloaded function's first line is the generic name(*args, **kwargs); the numbered lines follow
    specific = [s for s in found if [p["kind"] for p in s["params"]] != ["var_positional", "var_keyword"]]
    return specific or found


def is_enum(cls: type) -> bool:
    return isinstance(getattr(cls, "__members__", None), dict) or (isinstance(cls, type) and issubclass(cls, enum.Enum))


def describe_member(cls: type, name: str, raw: Any) -> dict[str, Any]:
    kind = type(raw).__name__
    if isinstance(raw, property):  # the getter's pybind11 signature line carries the type: "(self: X) -> Dims"
        doc = getattr(raw.fget, "__doc__", "") or ""
        match = re.search(r"\)\s*->\s*(\S+)", doc.splitlines()[0] if doc else "")
        return {"kind": "property", "writable": raw.fset is not None, "returns": match.group(1) if match else ""}
    if kind == "instancemethod" or inspect.isfunction(raw) or kind in ("wrapper_descriptor", "method_descriptor"):
        return {"kind": "method", "overloads": signatures(raw, name)}
    if isinstance(raw, staticmethod) or kind == "builtin_function_or_method":
        return {"kind": "static", "overloads": signatures(getattr(cls, name), name)}
    if isinstance(raw, type):
        return {"kind": "class", "name": raw.__name__}
    return {"kind": "attribute", "type": type(raw).__name__}


def describe_class(cls: type) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": "enum" if is_enum(cls) else "class",
                            "bases": [b.__name__ for b in cls.__mro__[1:] if b is not object]}
    members: dict[str, Any] = {}
    if info["kind"] == "enum":
        info["values"] = {k: int(v) for k, v in cls.__members__.items()}  # type: ignore[attr-defined]
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        for name, raw in vars(klass).items():
            if name.startswith("__") and name not in _DUNDERS_KEPT:
                continue
            if info["kind"] == "enum" and name in info["values"]:
                members[name] = {"kind": "member", "value": info["values"][name]}
                continue
            members[name] = describe_member(cls, name, raw)
    info["members"] = members
    return info


def dump(module_name: str) -> dict[str, Any]:
    module = importlib.import_module(module_name)
    classes: dict[str, Any] = {}
    functions: dict[str, Any] = {}
    values: dict[str, str] = {}
    for name in dir(module):
        if name.startswith("__") and name != "__version__":
            continue
        obj = getattr(module, name)
        if isinstance(obj, type):
            classes[name] = describe_class(obj)
        elif callable(obj):
            functions[name] = {"kind": "function", "overloads": signatures(obj, name)}
        else:
            values[name] = type(obj).__name__
    return {"version": str(module.__version__), "classes": classes, "functions": functions, "values": values}


if __name__ == "__main__":
    json.dump(dump(sys.argv[1] if len(sys.argv) > 1 else "tensorrt_bindings"), sys.stdout, indent=1, sort_keys=True)
