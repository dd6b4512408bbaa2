"""trtserve's TensorRT calls and the contract doubles, checked against NVIDIA's real bindings of each release.

For each supported version, trtserve's build, load, run and failure paths run against the version's contract
double through a recording proxy typed by the real API (tests/conformance/paths.py, recording.py). Then:

* every attribute trtserve touched must exist in the real module with the kind it was used as, fit a real
  pybind11 overload, and every enum member it named must have the value the double gave it;
* the double itself must offer nothing the real module lacks, nor anything of another kind or value.

The checker is shown to fail on departures the issue found (tests at the end), so a pass means something.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..doubles import tensorrt_double
from ..doubles.trt_module_double import make_tensorrt
from .conftest import TARGETS, Target, api_for
from .double_check import check_double
from .paths import exercise
from .recording import Recording, Use, check_uses

_recordings: dict[str, tuple[Recording, Any]] = {}


def _recorded(target: Target, workdir: Path) -> tuple[Recording, Any]:
    if target.double not in _recordings:
        _recordings[target.double] = exercise(target.double, api_for(target.real), workdir / target.double)
    return _recordings[target.double]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
def test_what_trtserve_touches_exists_in_the_real_tensorrt(target: Target, conformance_workdir: Path) -> None:
    api = api_for(target.real)
    recording, double = _recorded(target, conformance_workdir)
    names = {(u.owner, u.name) for u in recording.uses}
    # the paths really ran: builder, parser, config, engine, context and logger were all reached
    for owner in ("Builder", "OnnxParser", "IBuilderConfig", "ICudaEngine", "IExecutionContext", "Runtime"):
        assert any(o == owner for o, _ in names), f"no use of {owner} recorded: the code paths did not run"
    assert len(names) > 40, sorted(names)
    problems = check_uses(recording, api, double)
    assert not problems, f"{len(problems)} departures from the real TensorRT {api['version']}:\n" + "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
def test_the_double_offers_only_the_real_api(target: Target, conformance_workdir: Path) -> None:
    api = api_for(target.real)
    _, double = _recorded(target, conformance_workdir)
    problems = check_double(double, api)
    if int(target.double.split(".")[0]) < 11:  # the calibrator classes the 8.x / 10.x doubles share
        problems += check_double(tensorrt_double, api)
    assert not problems, f"{len(problems)} departures of the {target.double} double from the real " \
                         f"{api['version']}:\n" + "\n".join(problems)


# --- the checks can fail ---------------------------------------------------------------------------------------

def test_the_use_check_catches_wrong_kinds_arity_members_and_values() -> None:
    api = api_for("8.6.1")
    double = make_tensorrt("8.6.2")
    recording = Recording()
    for use in (
        Use("Builder", "create_network", "call", positional=3, arg_types=("self", "", ""), where="x.py:1"),
        Use("BuilderFlag", "REFIT", "member", value=4, where="x.py:2"),  # the old double's value; real 8.6 is 5
        Use("ParserError", "node_name", "get", double_kind="method", where="x.py:3"),  # first in 10.0
        Use("Builder", "num_DLA_cores", "set", arg_types=("",), where="x.py:4"),  # read-only
        Use("OnnxParser", "num_errors", "call", positional=1, where="x.py:5"),  # a property
        Use("IBuilderConfig", "set_flag", "call", positional=2, arg_types=("self", "DeviceType"), where="x.py:6"),
        Use("tensorrt", "TensorIOModeX", "get", where="x.py:7"),
    ):
        recording.add(use)
    problems = check_uses(recording, api, double)
    assert len(problems) == 7, "\n".join(problems)
    text = "\n".join(problems)
    assert "the double's value is 4, the real one 5" in text
    assert "has no 'node_name'" in text and "read-only property" in text and "not a method" in text
    assert "is a DeviceType, the real API takes a BuilderFlag" in text


def test_the_double_check_catches_the_departures_the_issue_found() -> None:
    """The old double's values, rebuilt here as a module: each one must be reported."""
    import enum
    from types import ModuleType

    here = "tests.doubles.old"  # the checker looks at classes defined by the doubles' modules
    old = ModuleType("old_double")
    old.BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "REFIT": 4, "TF32": 7}, module=here)  # type: ignore[attr-defined,misc]
    old.DataType = enum.IntEnum("DataType", {"FLOAT": 0, "INT64": 6}, module=here)  # type: ignore[attr-defined,misc]
    old.ErrorCode = enum.IntEnum("ErrorCode", {"SUCCESS": 0, "INVALID_GRAPH": 4}, module=here)  # type: ignore[attr-defined,misc]

    class ParserError:
        def node_name(self) -> str:
            return ""

    ParserError.__module__ = here
    old.ParserError = ParserError  # type: ignore[attr-defined,misc]
    problems = "\n".join(check_double(old, api_for("8.6.1")))
    assert "BuilderFlag.REFIT is 4; the real value is 5" in problems
    assert "DataType.INT64 = 6; the real DataType of tensorrt 8.6.1 has no such member" in problems
    assert "ErrorCode.INVALID_GRAPH is 4; the real value is 5" in problems
    assert "ParserError.node_name (method); the real ParserError of tensorrt 8.6.1 has no such member" in problems
    eleven = ModuleType("old_double_11")
    eleven.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",  # type: ignore[attr-defined,misc]
                                                        {"STRONGLY_TYPED": 1}, module=here)
    assert check_double(eleven, api_for("11.4.0.106")) == [
        "the double's NetworkDefinitionCreationFlag.STRONGLY_TYPED is 1; the real value is 0"]


def test_python_3_12_hosts_lose_the_8_6_check_and_say_so() -> None:
    from .bindings import WHEELS

    reason = WHEELS["8.6.1"].unavailable_reason((3, 12))
    assert reason is not None and "tensorrt-bindings==8.6.1 has wheels for CPython <= 3.11 only and this is " \
                                  "Python 3.12: the TensorRT 8.6 (JetPack 6.0) and 8.5 API check" in reason
    assert WHEELS["8.6.1"].unavailable_reason((3, 11)) is None
    assert WHEELS["11.4.0.106"].unavailable_reason((3, 13)) is None
