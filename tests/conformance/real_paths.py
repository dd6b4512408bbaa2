"""trtserve paths run inside a subprocess that imports NVIDIA's real bindings (and maybe a real cuda-python).

``python -m tests.conformance.real_paths tensorrt WORKDIR`` (one subprocess per release, to keep the tier fast)
prints one JSON object whose parts are:

* ``factories``: ``build_engine`` and the backend's load with the real ``tensorrt`` (whose factories return NULL
  here) and the CUDA double: both must end as TensorRTUnavailableError;
* ``cli``: ``trtserve build`` as a user runs it there: exit status and stderr;
* ``calibrator``: per mode, the calibrator adapter instantiated from the real base classes and its C++ entry points
  called through the object's vtable, as TensorRT's builder calls them (see :func:`drive_vtable`);
* ``swallowed``: what the real bindings do with an exception raised in a plain subclass's ``get_batch``.

``python -m tests.conformance.real_paths cuda WORKDIR`` runs ``CudaRuntime().device()`` and ``trtserve build``
with whatever cuda-python is on the path (a real wheel; this host has no driver).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _install_cuda_double() -> Any:
    import pytest

    from tests.doubles.gpu_host import install_cuda

    return install_cuda(pytest.MonkeyPatch())


def factories(repo: Path) -> dict[str, Any]:
    import tensorrt as trt

    from trtserve.backends.tensorrt import TensorRTBackend
    from trtserve.errors import TensorRTUnavailableError
    from trtserve.repository import ModelRepository
    from trtserve.tensorrt.builder import build_engine
    from trtserve.tensorrt.cuda import CudaRuntime
    from trtserve.tensorrt.keys import EngineRecord, default_settings, write_record
    from trtserve.tensorrt.plan import TrtVersion

    _install_cuda_double()
    config = ModelRepository(repo).get("shapes")
    out: dict[str, Any] = {"version": trt.__version__}
    try:
        build_engine(config, default_settings(config, "fp32"))
        out["build"] = "no error"
    except TensorRTUnavailableError as exc:
        out["build"] = f"TensorRTUnavailableError: {exc}"
    # a plan whose sidecar fits this host, so that the load reaches trt.Runtime
    device = CudaRuntime().device()
    plan = repo / "shapes" / "cache" / "fake.plan"
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(b"not a plan")
    write_record(plan, EngineRecord(model="shapes", key="fake", tensorrt_version=str(TrtVersion.parse(trt.__version__)),
                                    gpu_name=device.gpu_name, compute_capability=device.compute_capability,
                                    settings={}, onnx_file="model.onnx", onnx_sha256="", build_path="fp32"))
    try:
        TensorRTBackend(plan).load()
        out["load"] = "no error"
    except TensorRTUnavailableError as exc:
        out["load"] = f"TensorRTUnavailableError: {exc}"
    return out


def cli(args: list[str]) -> dict[str, Any]:
    import contextlib
    import io

    if args and args[0] == "--cuda-double":
        _install_cuda_double()
        args = args[1:]
    from trtserve.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except BaseException:  # a traceback is what must not happen: report it
            import traceback

            return {"code": None, "stderr": err.getvalue() + "Traceback\n" + traceback.format_exc()}
    return {"code": code, "stderr": err.getvalue()}


def double_api(real: Any) -> dict[str, Any]:
    """What the CUDA double offers that this real cuda-python runtime module lacks or spells otherwise: functions
    missing or not callable, enum members missing or with another value."""
    import enum

    from tests.doubles.cuda_double import CudaDouble

    double = CudaDouble().module("double")
    missing, wrong = [], []
    for name in sorted(n for n in vars(double) if n.startswith("cuda")):
        ours = getattr(double, name)
        theirs = getattr(real, name, None)
        if theirs is None:
            missing.append(name)
        elif isinstance(ours, type) and issubclass(ours, enum.Enum):
            for member in ours:
                got = getattr(theirs, member.name, None)
                if got is None or int(got) != int(member.value):
                    wrong.append(f"{name}.{member.name}={member.value} (real: {None if got is None else int(got)})")
        elif not callable(theirs):
            wrong.append(f"{name} is not callable in the real module")
    return {"checked": sorted(n for n in vars(double) if n.startswith("cuda")), "missing": missing, "wrong": wrong}


def cuda() -> dict[str, Any]:
    from trtserve.errors import BackendError
    from trtserve.tensorrt.cuda import CudaRuntime

    runtime = CudaRuntime()
    out: dict[str, Any] = {"module": runtime.rt.__name__, "double_api": double_api(runtime.rt)}
    try:
        runtime.device()
        out["device"] = "no error"
    except BackendError as exc:
        out["device"] = f"BackendError: {exc}"
    return out


# --- the calibrator through its C++ vtable ----------------------------------------------------------------------

def _symbols(path: Path) -> tuple[dict[str, int], dict[int, str]]:
    """(vtable name -> offset, function offset -> demangled name) from the extension's own symbol table."""
    out = subprocess.run(["nm", "-C", "--defined-only", str(path)], capture_output=True, text=True, check=True).stdout
    vtables: dict[str, int] = {}
    functions: dict[int, str] = {}
    for line in out.splitlines():
        match = re.match(r"^([0-9a-f]+) (\w) (.+)$", line)
        if match is None:
            continue
        offset, kind, name = int(match.group(1), 16), match.group(2), match.group(3)
        if name.startswith("vtable for "):
            vtables[name[len("vtable for "):]] = offset
        elif kind in "tTwW":
            functions.setdefault(offset, name)
    return vtables, functions


def _load_base(path: Path) -> int:
    """Where the extension is mapped in this process (its first mapping, file offset 0)."""
    real = os.path.realpath(path)
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == real and int(fields[2], 16) == 0:
            return int(fields[0].split("-")[0], 16)
    raise RuntimeError(f"{real} is not mapped in this process")


def _cpp_pointer(obj: Any) -> int:
    """The C++ object a pybind11 instance holds: pybind11's ``instance`` struct puts its value pointer right
    after PyObject_HEAD (``simple_value_holder[0]``) for a type with a single pybind11 base. Checked by the caller
    against the vtable symbol, so a different layout is detected, never trusted."""
    return int(ctypes.c_void_p.from_address(id(obj) + 2 * ctypes.sizeof(ctypes.c_void_p)).value or 0)


def drive_vtable(trt: Any, calibrator: Any, names: list[bytes], batch_bytes: int = 0) -> dict[str, Any]:
    """Call the calibrator's C++ virtual functions as TensorRT's builder does and report what C++ receives."""
    extension = Path(sys.modules[type(calibrator).__mro__[1].__module__].__file__ or "")
    vtables, functions = _symbols(extension)
    base = _load_base(extension)
    this = _cpp_pointer(calibrator)
    vptr = int(ctypes.c_void_p.from_address(this).value or 0) if this else 0
    base_name = type(calibrator).__mro__[1].__name__
    wanted = [n for n in vtables if n.startswith("tensorrt::pyCalibratorTrampoline<")
              and n.endswith(f"::{base_name}>")]
    if not wanted:
        return {"skip": f"the extension has no vtable symbol for the {base_name} trampoline"}
    # Itanium C++ ABI: the object's vptr points 2 words into the vtable (after offset-to-top and typeinfo)
    if vptr != base + vtables[wanted[0]] + 2 * ctypes.sizeof(ctypes.c_void_p):
        return {"skip": f"the pybind11 instance layout is not the one expected: the pointer after PyObject_HEAD "
                        f"({this:#x}) does not hold the {wanted[0]} vtable, so its C++ entry points cannot be found "
                        "reliably"}
    slots: dict[str, int] = {}
    for i in range(16):
        address = int(ctypes.c_void_p.from_address(vptr + i * ctypes.sizeof(ctypes.c_void_p)).value or 0)
        name = functions.get(address - base)
        if name is None:
            break
        method = re.sub(r"\(.*$", "", name).rsplit("::", 1)[-1]
        slots.setdefault(method, address)
    out: dict[str, Any] = {"vtable": wanted[0], "slots": sorted(slots)}
    get_batch_size = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)(slots["getBatchSize"])
    out["getBatchSize"] = get_batch_size(this)
    out["getAlgorithm"] = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)(slots["getAlgorithm"])(this)
    read = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t))(
        slots["readCalibrationCache"])
    length = ctypes.c_size_t(0)
    pointer = read(this, ctypes.byref(length))
    out["readCalibrationCache"] = ctypes.string_at(pointer, length.value).hex() if pointer else None
    get_batch = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                 ctypes.POINTER(ctypes.c_char_p), ctypes.c_int32)(slots["getBatch"])
    batches = []
    for _ in range(4):
        bindings = (ctypes.c_void_p * len(names))()
        c_names = (ctypes.c_char_p * len(names))(*names)
        ok = get_batch(this, bindings, c_names, len(names))
        pointers = [int(b or 0) for b in bindings]
        batches.append({"ok": bool(ok), "bindings": pointers,  # and the bytes C++ finds there, read at once
                        "at_pointer": ctypes.string_at(pointers[0], batch_bytes).hex() if ok and batch_bytes else None})
        if not ok:
            break
    out["getBatch"] = batches
    write = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(slots["writeCalibrationCache"])
    payload = b"TRT-written-by-cpp\nimages: 3c010a14\n\x00\xff"
    buffer = ctypes.create_string_buffer(payload, len(payload))
    write(this, ctypes.cast(buffer, ctypes.c_void_p), len(payload))
    out["written"] = payload.hex()
    return out


def calibrator(algorithm: str, workdir: Path, feed: str) -> dict[str, Any]:
    """``feed``: ``cache`` (serve the cache file), ``batches`` (3 device batches), ``failing`` (raises on the 2nd)."""
    import tensorrt as trt

    from calibrators.tensorrt_calibrator import make_entropy_calibrator
    from calibrators.trt_cache import make_cache, write_cache

    cuda = _install_cuda_double()
    cache_path = workdir / f"{algorithm}-{feed}.cache"
    cache_path.unlink(missing_ok=True)
    frames = [np.full((2, 3, 4, 4), i + 0.5, np.float32) for i in range(3)]

    def feeds() -> Any:
        for i, frame in enumerate(frames):
            if feed == "failing" and i == 1:
                raise OSError("frame source went away")
            yield {"images": frame}

    if feed == "cache":
        write_cache(make_cache({"images": 1.0, "r1": 4.0}, "8.6.2" if trt.__version__.startswith("8.") else "10.3.0",
                               algorithm), cache_path)
        calib = make_entropy_calibrator(cache_path, 2, trt=trt)
    else:
        calib = make_entropy_calibrator(cache_path, 2, feeds(), trt=trt)
    out: dict[str, Any] = {"bases": [c.__name__ for c in type(calib).__mro__[1:3]],
                           "module": type(calib).__mro__[1].__module__,
                           "python_algorithm": str(calib.get_algorithm()),
                           "cache_file": cache_path.read_bytes().hex() if cache_path.is_file() else None,
                           "frames": [f.tobytes().hex() for f in frames]}
    # the CUDA double's "device" memory is host memory: C++ can be shown the bytes each pointer holds
    out.update(drive_vtable(trt, calib, [b"images"], frames[0].nbytes))
    if "skip" in out:
        return out
    out["python_pointers"] = [int(p) for p, _ in calib._device.values()]
    out["written_file"] = cache_path.read_bytes().hex() if cache_path.is_file() else None
    out["error"] = repr(calib.error) if calib.error is not None else None
    try:
        calib.raise_if_failed()
        out["raised"] = None
    except Exception as exc:
        out["raised"] = f"{type(exc).__name__}: {exc}"
    calib.free()
    out["cuda_live"] = cuda.live()
    return out


def swallowed() -> dict[str, Any]:
    """A plain subclass (not trtserve's) whose get_batch raises, called from C++: what does TensorRT see?"""
    import tensorrt as trt

    class Raising(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int]:
            raise ValueError("feed broke")

        def read_calibration_cache(self) -> None:
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    sys.stderr.flush()
    result = drive_vtable(trt, Raising(), [b"images"])
    sys.stderr.flush()
    return {"getBatch": result.get("getBatch"), "skip": result.get("skip")}


def tensorrt_suite(workdir: Path) -> dict[str, Any]:
    import shutil

    import tensorrt as trt

    from tests.conftest import ENGINES

    def fresh_repo(name: str) -> Path:
        root = workdir / name
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(ENGINES / "shapes", root / "shapes", ignore=shutil.ignore_patterns("cache"))
        return root

    result: dict[str, Any] = {"version": trt.__version__, "factories": factories(fresh_repo("repo-factories")),
                              "cli": cli(["--cuda-double", "build", "shapes", "--precision", "fp32", "--repository",
                                          str(fresh_repo("repo-cli"))])}
    if hasattr(trt, "IInt8EntropyCalibrator2"):
        result["calibrator"] = {f"{algorithm}-{feed}": calibrator(algorithm, workdir, feed)
                                for algorithm, feed in (("entropy", "cache"), ("minmax", "cache"),
                                                        ("entropy", "batches"), ("entropy", "failing"))}
        result["swallowed"] = swallowed()
    return result


def cuda_suite(workdir: Path) -> dict[str, Any]:
    import shutil

    from tests.conftest import ENGINES

    root = workdir / "repo-cuda"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(ENGINES / "shapes", root / "shapes", ignore=shutil.ignore_patterns("cache"))
    return {"cuda": cuda(), "cli": cli(["build", "shapes", "--precision", "fp32", "--repository", str(root)])}


def main(argv: list[str]) -> None:
    command, workdir = argv[0], Path(argv[1])
    workdir.mkdir(parents=True, exist_ok=True)
    result = tensorrt_suite(workdir) if command == "tensorrt" else cuda_suite(workdir)
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
