"""A recording proxy over the ``tensorrt`` contract double, typed by the real API of one TensorRT release.

trtserve's code runs unchanged against :class:`ModuleProxy` (installed as ``sys.modules['tensorrt']``). Every
attribute trtserve reads, calls or assigns on a TensorRT object is recorded as a :class:`Use`: which real class
it belongs to, whether it was called and with how many positional arguments, which keywords, and the TensorRT
types of the arguments. The class of each object is taken from the *real* API's return annotations (what
``Builder.create_network`` returns is an ``INetworkDefinition`` because the real signature says so), never from
the double's own class names. Classes trtserve subclasses (``ILogger``, the calibrators) are recorded too, with
the methods it overrides.

:func:`check_uses` then compares the recording with the real API dump (``dump_api.py``): every attribute must
exist, be a method where trtserve calls it and a property where it reads or assigns it (assigned ones writable),
fit one pybind11 overload by arity, keywords and TensorRT argument types, and every enum member must exist with
the value the double gave trtserve.
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_PROJECT = (str(ROOT / "trtserve") + "/", str(ROOT / "calibrators") + "/")
_NO_WRAP = {"IHostMemory", "Dims", "Dims32", "Dims64", "Dims2", "Dims3", "Dims4", "DimsHW"}  # buffers / sequences


@dataclass(frozen=True)
class Use:
    owner: str  # real class name, or "tensorrt" for the module
    name: str
    action: str  # get | call | set | member | missing | subclass | override
    positional: int = 0  # positional arguments of a call, self included for methods
    keywords: tuple[str, ...] = ()
    arg_types: tuple[str, ...] = ()  # TensorRT type of each positional argument ("" when not a TensorRT object)
    value: int | None = None  # enum member value the double gave
    double_kind: str = ""  # method | value, as the double offered it
    where: str = ""  # the trtserve / calibrators line that made the access

    def describe(self) -> str:
        target = self.name if self.owner == "tensorrt" else f"{self.owner}.{self.name}"
        extra = f" with {self.positional} positional args" if self.action in ("call", "override") else ""
        if self.keywords:
            extra += f" and keywords {list(self.keywords)}"
        return f"{self.action} {target}{extra} (at {self.where})"


@dataclass
class Recording:
    uses: set[Use] = field(default_factory=set)
    instance_attrs: dict[str, set[str]] = field(default_factory=dict)  # real class -> public instance attributes
    subclassed: dict[type, str] = field(default_factory=dict)  # double base -> real name

    def add(self, use: Use) -> None:
        self.uses.add(use)


def _where() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_PROJECT):
            return f"{Path(name).relative_to(ROOT)}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def _class_name(annotation: str) -> str:
    """``tensorrt_bindings.tensorrt.ICudaEngine`` -> ``ICudaEngine``, ``nvonnxparser::IParserError`` ->
    ``IParserError`` (pybind11 writes the C++ name of a type registered under another Python name); anything
    else (int, List[...]) -> ''."""
    match = re.fullmatch(r"(?:tensorrt(?:_bindings)?\.)?tensorrt\.(\w+)|(?:nvinfer1|nvonnxparser)::(\w+)",
                         annotation.strip())
    return (match.group(1) or match.group(2)) if match else ""


class _Typing:
    """What the real API says about types: return annotations, bases, enums."""

    def __init__(self, api: dict[str, Any], double: ModuleType) -> None:
        self.api = api
        self.classes: dict[str, Any] = api["classes"]
        self.double_classes: dict[type, str] = {}
        for name in dir(double):
            value = getattr(double, name)
            if isinstance(value, type) and not name.startswith("_"):
                self.double_classes.setdefault(value, name)

    def resolve(self, annotation: str) -> str:
        """The real class an annotation names ('' for none): C++ ``IParserError`` is Python ``ParserError``."""
        name = _class_name(annotation)
        if name in self.classes:
            return name
        if name.startswith("I") and name[1:] in self.classes:
            return name[1:]
        return ""

    def member(self, owner: str, name: str) -> dict[str, Any] | None:
        info = self.classes.get(owner)
        return None if info is None else info["members"].get(name)

    def returns(self, owner: str, name: str) -> str:
        member = self.member(owner, name)
        if member is None:
            return ""
        if member["kind"] == "property":
            return self.resolve(member.get("returns", ""))
        for overload in member.get("overloads", []):
            found = self.resolve(overload.get("returns", ""))
            if found:
                return found
        return ""

    def is_enum(self, name: str) -> bool:
        return self.classes.get(name, {}).get("kind") == "enum"

    def real_type(self, value: Any) -> str:
        """The real TensorRT class a value stands for ('' for plain Python values)."""
        if isinstance(value, ObjectProxy):
            return object.__getattribute__(value, "_real")
        if isinstance(value, ClassProxy):
            return ""
        if isinstance(value, enum.Enum):
            return type(value).__name__
        for klass in type(value).__mro__:
            if klass in self.double_classes:
                return self.double_classes[klass]
        return ""

    def is_a(self, real: str, wanted: str) -> bool:
        return real == wanted or wanted in self.classes.get(real, {}).get("bases", [])


def _unwrap(value: Any) -> Any:
    if isinstance(value, (ObjectProxy, ClassProxy)):
        return object.__getattribute__(value, "_target")
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    return value


class _Recorder:
    def __init__(self, recording: Recording, typing: _Typing) -> None:
        self.recording, self.typing = recording, typing

    def use(self, **kw: Any) -> None:
        where = _where()
        if where:  # accesses made by the double or the test itself are not trtserve's
            self.recording.add(Use(where=where, **kw))

    def wrap(self, value: Any, real: str) -> Any:
        if value is None or not real or real in _NO_WRAP or self.typing.is_enum(real):
            return value
        if isinstance(value, (int, float, str, bytes, bytearray, memoryview, tuple, list, dict)):
            return value
        attrs = getattr(value, "__dict__", None)
        if attrs:
            self.recording.instance_attrs.setdefault(real, set()).update(k for k in attrs if not k.startswith("_"))
        return ObjectProxy(value, real, self)

    def call(self, owner: str, name: str, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             self_counted: bool) -> Any:
        types = tuple(self.typing.real_type(a) for a in args)
        self.use(owner=owner, name=name, action="call", positional=len(args) + (1 if self_counted else 0),
                 keywords=tuple(sorted(kwargs)), arg_types=(("self",) if self_counted else ()) + types)
        return function(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})


class ObjectProxy:
    """An instance of real class ``real`` (the double's object inside)."""

    __slots__ = ("_real", "_recorder", "_target")

    def __init__(self, target: Any, real: str, recorder: _Recorder) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_recorder", recorder)

    def __getattr__(self, name: str) -> Any:
        target, real, recorder = (object.__getattribute__(self, n) for n in ("_target", "_real", "_recorder"))
        try:
            value = getattr(target, name)
        except AttributeError:
            recorder.use(owner=real, name=name, action="missing")
            raise
        returns = recorder.typing.returns(real, name)
        if callable(value) and not isinstance(value, type):
            recorder.use(owner=real, name=name, action="get", double_kind="method")

            def method(*args: Any, **kwargs: Any) -> Any:
                return recorder.wrap(recorder.call(real, name, value, args, kwargs, self_counted=True), returns)

            return method
        recorder.use(owner=real, name=name, action="get", double_kind="value")
        return recorder.wrap(value, returns)

    def __setattr__(self, name: str, value: Any) -> None:
        target, real, recorder = (object.__getattribute__(self, n) for n in ("_target", "_real", "_recorder"))
        recorder.use(owner=real, name=name, action="set", arg_types=(recorder.typing.real_type(value),))
        setattr(target, name, _unwrap(value))

    def __repr__(self) -> str:
        return f"<recording proxy of {object.__getattribute__(self, '_real')}>"


class ClassProxy:
    """A real TensorRT class (or enum): constructing it, reading members, subclassing it are recorded."""

    __slots__ = ("_real", "_recorder", "_target")

    def __init__(self, target: type, real: str, recorder: _Recorder) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_recorder", recorder)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        target, real, recorder = (object.__getattribute__(self, n) for n in ("_target", "_real", "_recorder"))
        return recorder.wrap(recorder.call(real, "__init__", target, args, kwargs, self_counted=True), real)

    def __getattr__(self, name: str) -> Any:
        target, real, recorder = (object.__getattribute__(self, n) for n in ("_target", "_real", "_recorder"))
        try:
            value = getattr(target, name)
        except AttributeError:
            recorder.use(owner=real, name=name, action="missing")
            raise
        if isinstance(value, enum.Enum):
            recorder.use(owner=real, name=name, action="member", value=int(value))
            return value
        if callable(value) and not isinstance(value, type):
            recorder.use(owner=real, name=name, action="get", double_kind="method")

            def function(*args: Any, **kwargs: Any) -> Any:  # e.g. trt.ILogger.__init__(self): self is explicit
                return recorder.call(real, name, value, args, kwargs, self_counted=False)

            return function
        recorder.use(owner=real, name=name, action="get", double_kind="value")
        return value

    def __getattribute__(self, name: str) -> Any:
        if name == "__init__":  # trt.ILogger.__init__(self) means the real class's constructor, not the proxy's
            return ClassProxy.__getattr__(self, name)
        return object.__getattribute__(self, name)

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        target, real, recorder = (object.__getattribute__(self, n) for n in ("_target", "_real", "_recorder"))
        recorder.use(owner=real, name="", action="subclass")
        recorder.recording.subclassed[target] = real
        return (target,)

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(_unwrap(obj), object.__getattribute__(self, "_target"))


class ModuleProxy(ModuleType):
    """``import tensorrt`` for trtserve: the double, recorded and typed by the real API."""

    def __init__(self, double: ModuleType, api: dict[str, Any], recording: Recording) -> None:
        super().__init__("tensorrt")
        object.__setattr__(self, "_double", double)
        object.__setattr__(self, "_recorder", _Recorder(recording, _Typing(api, double)))

    def __getattr__(self, name: str) -> Any:
        double, recorder = object.__getattribute__(self, "_double"), object.__getattribute__(self, "_recorder")
        try:
            value = getattr(double, name)
        except AttributeError:
            recorder.use(owner="tensorrt", name=name, action="missing")
            raise
        if isinstance(value, type):
            recorder.use(owner="tensorrt", name=name, action="get", double_kind="class")
            return ClassProxy(value, name, recorder)
        recorder.use(owner="tensorrt", name=name, action="get", double_kind="method" if callable(value) else "value")
        return value


def collect_overrides(recording: Recording) -> None:
    """Record the methods trtserve's subclasses of TensorRT classes define (TensorRT calls them back)."""
    for base, real in recording.subclassed.items():
        for sub in _all_subclasses(base):
            module = sys.modules.get(sub.__module__)
            source = getattr(module, "__file__", "") or ""
            if not source.startswith(_PROJECT):
                continue
            for name, value in vars(sub).items():
                if callable(value) and not name.startswith("__"):
                    code = getattr(value, "__code__", None)
                    positional = code.co_argcount if code is not None else 0
                    where = f"{Path(source).relative_to(ROOT)}:{code.co_firstlineno if code else 0}"
                    recording.add(Use(owner=real, name=name, action="override", positional=positional, where=where))


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


# --- checking a recording against the real API -------------------------------------------------------------------

def _fits(overload: dict[str, Any], use: Use, typing: _Typing) -> str | None:
    """None when the call fits this pybind11 overload, else why not."""
    params = overload["params"]
    positional = [p for p in params if p["kind"] == "positional"]
    var_positional = any(p["kind"] == "var_positional" for p in params)
    var_keyword = any(p["kind"] == "var_keyword" for p in params)
    names = {p["name"] for p in params if p["kind"] in ("positional", "keyword_only")}
    required = [p for p in positional if not p["default"]]
    given = use.positional + len([k for k in use.keywords if k in {p["name"] for p in positional}])
    if use.positional > len(positional) and not var_positional:
        return f"{use.positional} positional arguments, at most {len(positional)} accepted"
    if given < len(required):
        return f"{given} arguments, {len(required)} required"
    unknown = [k for k in use.keywords if k not in names]
    if unknown and not var_keyword:
        return f"unknown keywords {unknown}"
    for param, real in zip(positional, use.arg_types):
        wanted = typing.resolve(param.get("annotation", ""))
        if not wanted or not real or real == "self":
            continue
        if not typing.is_a(real, wanted):
            return f"argument '{param['name']}' is a {real}, the real API takes a {wanted}"
    return None


def _signatures(overloads: list[dict[str, Any]]) -> str:
    return "; ".join(f"({', '.join(p['name'] for p in o['params'])})" for o in overloads) or "no Python constructor"


def check_uses(recording: Recording, api: dict[str, Any], double: ModuleType) -> list[str]:
    """Every way the recording departs from the real API, one line each (empty: conformant)."""
    typing = _Typing(api, double)
    classes = api["classes"]
    problems = []
    for use in sorted(recording.uses, key=lambda u: (u.owner, u.name, u.action, u.where)):
        if use.owner == "tensorrt":
            exists = use.name in classes or use.name in api["functions"] or use.name in api["values"]
            if use.action == "missing":
                if exists:
                    problems.append(f"{use.describe()}: the double lacks it but the real module has it")
            elif not exists:
                problems.append(f"{use.describe()}: the real tensorrt {api['version']} has no '{use.name}'")
            continue
        if use.action == "subclass":
            if use.owner not in classes:
                problems.append(f"{use.describe()}: no class {use.owner} in the real tensorrt {api['version']}")
            continue
        member = typing.member(use.owner, use.name)
        if use.action == "override" and member is None:
            continue  # a method of trtserve's own (e.g. the logger's errors()), not one TensorRT calls back
        if use.action == "missing":
            if member is not None:
                problems.append(f"{use.describe()}: the double lacks it but the real {use.owner} has it "
                                f"({member['kind']}), so trtserve takes another branch on real TensorRT")
            continue
        if member is None:
            problems.append(f"{use.describe()}: the real {use.owner} of tensorrt {api['version']} has no '{use.name}'")
            continue
        kind = member["kind"]
        if use.action == "member":
            if kind != "member":
                problems.append(f"{use.describe()}: the real {use.owner}.{use.name} is a {kind}, not an enum member")
            elif member["value"] != use.value:
                problems.append(f"{use.describe()}: the double's value is {use.value}, the real one {member['value']}")
        elif use.action == "get":
            real_is_method = kind in ("method", "static")
            if (use.double_kind == "method") != real_is_method:
                problems.append(f"{use.describe()}: the double offers a {use.double_kind}, the real one is a {kind}")
        elif use.action == "set":
            if kind != "property" or not member.get("writable"):
                problems.append(f"{use.describe()}: the real {use.owner}.{use.name} is a "
                                f"{'read-only property' if kind == 'property' else kind}, it cannot be assigned")
            else:
                wanted = typing.resolve(member.get("returns", ""))
                if wanted and use.arg_types[0] and not typing.is_a(use.arg_types[0], wanted):
                    problems.append(f"{use.describe()}: assigns a {use.arg_types[0]}, the real one holds a {wanted}")
        elif use.action in ("call", "override"):
            if kind not in ("method", "static"):
                problems.append(f"{use.describe()}: the real {use.owner}.{use.name} is a {kind}, not a method")
                continue
            overloads = member.get("overloads", [])
            if use.action == "override":
                use = Use(use.owner, use.name, use.action, use.positional, where=use.where)
            reasons = [_fits(o, use, typing) for o in overloads]
            if not overloads or all(r is not None for r in reasons):
                problems.append(f"{use.describe()}: fits no real overload {_signatures(overloads)} "
                                f"({'; '.join(r for r in reasons if r) or 'none'})")
    for real, attrs in sorted(recording.instance_attrs.items()):
        for name in sorted(attrs):
            if typing.member(real, name) is None:
                problems.append(f"the double's {real} objects carry a public attribute '{name}' the real {real} lacks")
    return problems
