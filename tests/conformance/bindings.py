"""NVIDIA's real TensorRT Python bindings, importable on a host without TensorRT's native libraries or a GPU.

The ``tensorrt*-bindings`` wheels on PyPI hold the real pybind11 extension module of each TensorRT release. It
links against ``libnvinfer.so.N`` and its siblings but takes only a few C factory functions from them
(``nm -D --undefined-only``); everything else is C++ virtual calls on objects those factories return. A stand-in
shared library, compiled here with gcc, defines each of those symbols returning NULL under every SONAME the module
needs (``readelf -d``). ``import tensorrt`` then succeeds and exposes the whole real API surface — classes,
enums and their values, pybind11 signatures — while ``trt.Builder(logger)`` raises
``TypeError: pybind11::init(): factory function returned nullptr``, as on a host whose CUDA cannot start.

Everything is cached under ``build/conformance/`` (git-ignored): the wheels (downloaded once with
``pip download --no-deps``, retried), the unpacked modules, the stand-in libraries and each version's API dump.
After the first run nothing here touches the network. Each version is imported in its own subprocess.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "conformance"
MODULE = "tensorrt_bindings"  # the import name inside every bindings wheel


@dataclass(frozen=True)
class Wheel:
    """One pinned bindings release on PyPI."""

    distribution: str
    version: str
    max_python: tuple[int, int] | None = None  # newest CPython the release has wheels for
    covers: str = "the check against it"  # what a host without a wheel loses, for the skip reason
    min_python: tuple[int, int] | None = None  # oldest CPython the release has wheels for

    @property
    def spec(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def unavailable_reason(self, python: tuple[int, int] | None = None) -> str | None:
        """Why a host on ``python`` (default: this one) cannot import the release at all (no wheel), or None."""
        python = python or (sys.version_info.major, sys.version_info.minor)
        if self.max_python is not None and python > self.max_python:
            have = f"{python[0]}.{python[1]}"
            top = f"{self.max_python[0]}.{self.max_python[1]}"
            return (f"{self.spec} has wheels for CPython <= {top} only and this is Python {have}: {self.covers} "
                    f"does not run on this host (run the conformance tier under Python <= {top} to cover it)")
        if self.min_python is not None and python < self.min_python:
            have = f"{python[0]}.{python[1]}"
            low = f"{self.min_python[0]}.{self.min_python[1]}"
            return (f"{self.spec} has wheels for CPython >= {low} only and this is Python {have}: {self.covers} "
                    f"does not run on this host (run the conformance tier under Python >= {low} to cover it)")
        return None


# The releases trtserve supports that PyPI has (TensorRT 8.5 was never published there).
WHEELS: dict[str, Wheel] = {
    "8.6.1": Wheel("tensorrt-bindings", "8.6.1", max_python=(3, 11),
                   covers="the TensorRT 8.6 (JetPack 6.0) and 8.5 API check against NVIDIA's bindings"),
    "10.3.0": Wheel("tensorrt-cu12-bindings", "10.3.0"),
    "10.13.3.9.post1": Wheel("tensorrt-cu12-bindings", "10.13.3.9.post1"),
    "11.4.0.106": Wheel("tensorrt-cu12-bindings", "11.4.0.106"),
}

# Real cuda-python releases, for the driverless-host behaviour of each generation (no GPU is needed to see it):
# <= 12.6.x raises RuntimeError("Failed to dlopen libcuda.so.1"), 12.9 / 13.x return cudaErrorInsufficientDriver.
_PATHFINDER = Wheel("cuda-pathfinder", "1.9.1")
CUDA_WHEELS: dict[str, tuple[Wheel, ...]] = {
    "12.6.0": (Wheel("cuda-python", "12.6.0", max_python=(3, 12), covers="the cuda-python <= 12.6 driverless check"),),
    "12.9.10": (Wheel("cuda-bindings", "12.9.10"), _PATHFINDER),
    "13.5.0": (Wheel("cuda-bindings", "13.5.0", min_python=(3, 11), covers="the cuda-bindings 13.5 driverless check"),
               _PATHFINDER),
}

# C symbols the bindings import from TensorRT's libraries, and the SONAMEs they are imported under, per major
# version. The stand-in defines every one; _check_stub_covers verifies against the module actually downloaded.
_STUB_SOURCE = """\
/* Stand-in for TensorRT's native libraries: every factory the Python bindings import returns NULL. */
#include <stddef.h>
void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *getPluginRegistry(void) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
int initLibNvInferPlugins(void *logger, const char *ns) { return 0; }
/* TensorRT 8.x: nvuffparser::createUffParser(), nvuffparser::FieldMap::FieldMap(char const*, void const*,
   nvuffparser::FieldType, int), nvcaffeparser1::createCaffeParser(), nvcaffeparser1::shutdownProtobufLibrary() */
void *_ZN11nvuffparser15createUffParserEv(void) { return NULL; }
void _ZN11nvuffparser8FieldMapC1EPKcPKvNS_9FieldTypeEi(void *self, const char *n, const void *d, int t, int l) {}
void *_ZN14nvcaffeparser117createCaffeParserEv(void) { return NULL; }
void _ZN14nvcaffeparser123shutdownProtobufLibraryEv(void) {}
"""
_STUB_SYMBOLS = set(re.findall(r"\b(\w+)\(", _STUB_SOURCE)) - {"void", "int"}
_SYSTEM_LIBS = re.compile(r"^(libc|libm|libgcc_s|libstdc\+\+|libpthread|libdl|librt|ld-linux[-\w]*)\.so")


class BindingsUnavailableError(Exception):
    """The bindings of one release cannot be prepared on this host; the message says why and what to do."""


def require_tools() -> bool:
    """In `make test` (TRTSERVE_REQUIRE_TOOLS=1) a missing download or compiler fails instead of skipping."""
    return bool(os.environ.get("TRTSERVE_REQUIRE_TOOLS"))


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Several test runs may share the tree: one at a time prepares the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def _find_wheel(wheel: Wheel) -> Path | None:
    stem = wheel.distribution.replace("-", "_")
    folder = CACHE / "wheels"
    found = [p for tag in (_python_tag(), "py3") for p in sorted(folder.glob(f"{stem}-{wheel.version}-{tag}-*.whl"))]
    return found[0] if found else None


def download(wheel: Wheel, attempts: int = 3, pip_retries: int = 3) -> Path:
    """The cached wheel for this interpreter, downloaded from PyPI the first time (no dependencies)."""
    cached = _find_wheel(wheel)
    if cached is not None:
        return cached
    target = CACHE / "wheels"
    target.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--retries", str(pip_retries), "--timeout", "30", "-d", str(target),
               wheel.spec]
    last = ""
    for attempt in range(attempts):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        cached = _find_wheel(wheel)
        if proc.returncode == 0 and cached is not None:
            return cached
        last = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        if attempt + 1 < attempts:
            time.sleep(2 * (attempt + 1))
    raise BindingsUnavailableError(
        f"could not download {wheel.spec} from PyPI after {attempts} attempts ({last}). The conformance tier needs it "
        f"once: connect to PyPI (or put the wheel for {_python_tag()} into {target}) and run the tests again")


def _unpack(wheel: Wheel, path: Path) -> Path:
    """The unpacked wheel (a folder to put on PYTHONPATH), made atomically."""
    folder = CACHE / "modules" / f"{wheel.distribution}-{wheel.version}-{_python_tag()}"
    if (folder / ".complete").is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(path) as archive:
        archive.extractall(tmp)
    (tmp / ".complete").write_text(path.name)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _extension(folder: Path) -> Path:
    found = sorted((folder / MODULE).glob("tensorrt*.so"))
    if not found:
        raise BindingsUnavailableError(f"{folder} has no {MODULE}/tensorrt*.so: not a TensorRT bindings wheel")
    return found[0]


def needed_libraries(extension: Path) -> list[str]:
    """The SONAMEs the extension module links against that are TensorRT's (``readelf -d``), not the system's."""
    out = _tool("readelf", "-d", str(extension))
    names = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    return [n for n in names if not _SYSTEM_LIBS.match(n)]


def undefined_symbols(extension: Path) -> set[str]:
    """Undefined dynamic symbols of the extension module that no system library provides (``nm -D``)."""
    out = _tool("nm", "-D", "--undefined-only", str(extension))
    process = ctypes.CDLL(None)  # the interpreter, libc and libdl: what the system resolves anyway
    symbols = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[-2] == "U" and "@" not in parts[-1]:  # versioned ones are glibc's / libstdc++'s
            name = parts[-1]
            if not hasattr(process, name):
                symbols.add(name)
    return symbols


def _tool(name: str, *args: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise BindingsUnavailableError(f"{name} is not installed (Debian package 'binutils' for nm/readelf, 'gcc' "
                                       "for gcc)")
    return subprocess.run([exe, *args], capture_output=True, text=True, check=True, timeout=60).stdout


def _build_stub(sonames: list[str], symbols: set[str]) -> Path:
    """A folder holding the stand-in library under each SONAME in ``sonames`` (compiled once per set)."""
    missing = symbols - _STUB_SYMBOLS
    if missing:
        raise BindingsUnavailableError(f"the bindings import symbols the stand-in library does not define: "
                                       f"{sorted(missing)}; add them to _STUB_SOURCE in tests/conformance/bindings.py")
    key = hashlib.sha256((_STUB_SOURCE + "|".join(sorted(sonames))).encode()).hexdigest()[:12]
    folder = CACHE / "stubs" / key
    if all((folder / s).is_file() for s in sonames):
        return folder
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BindingsUnavailableError("gcc is not installed (Debian package 'gcc'): it compiles the stand-in for "
                                       "TensorRT's native libraries")
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    source = tmp / "trt_stub.c"
    source.write_text(_STUB_SOURCE)
    for soname in sonames:
        subprocess.run([gcc, "-shared", "-fPIC", "-O0", "-w", f"-Wl,-soname,{soname}", "-o", str(tmp / soname),
                        str(source)], check=True, capture_output=True, timeout=120)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


@dataclass(frozen=True)
class Bindings:
    """One real TensorRT bindings release, ready to import in a subprocess."""

    wheel: Wheel
    module_dir: Path  # on PYTHONPATH
    stub_dir: Path  # on LD_LIBRARY_PATH
    sonames: tuple[str, ...]
    symbols: frozenset[str]

    def env(self, *extra_paths: Path) -> dict[str, str]:
        """The environment of a subprocess that imports these bindings as ``tensorrt`` (and ``tensorrt_bindings``),
        as the ``tensorrt`` meta-package does; ``extra_paths`` go on PYTHONPATH too (e.g. a real cuda-python)."""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(self.stub_dir), env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        paths = [str(self.module_dir), str(_shim()), *map(str, extra_paths), str(ROOT), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(paths).rstrip(":")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def run(self, module: str, *args: str, timeout_s: float = 120,
            extra_paths: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
        """``python -m module args`` with these bindings importable as ``tensorrt``."""
        return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                              env=self.env(*extra_paths), cwd=ROOT, timeout=timeout_s)

    def api(self) -> dict[str, Any]:
        """The release's API surface (see dump_api.py), dumped once per release and dump script."""
        script = Path(__file__).with_name("dump_api.py")
        key = hashlib.sha256(script.read_bytes() + self.wheel.spec.encode() + _python_tag().encode()).hexdigest()[:12]
        path = CACHE / "api" / f"{self.wheel.version}-{key}.json"
        if path.is_file():
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        proc = self.run("tests.conformance.dump_api", MODULE)
        if proc.returncode != 0:
            raise AssertionError(f"importing the real {self.wheel.spec} failed:\n{proc.stderr[-3000:]}")
        data = json.loads(proc.stdout)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(proc.stdout)
        tmp.rename(path)
        return data  # type: ignore[no-any-return]


def _shim() -> Path:
    """A folder whose ``tensorrt.py`` makes ``import tensorrt`` the bindings module, as NVIDIA's meta-package does."""
    folder = CACHE / "shim"
    module = folder / "tensorrt.py"
    text = ("import sys\nimport tensorrt_bindings\n\n"
            "sys.modules[__name__] = tensorrt_bindings  # what `pip install tensorrt` gives: the bindings\n")
    if not module.is_file() or module.read_text() != text:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = module.with_name(f"tensorrt.py.tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.rename(module)
    return folder


def prepare_cuda(version: str) -> tuple[Path, ...]:
    """Folders to put on PYTHONPATH for the real cuda-python ``version`` (downloaded once, like the bindings)."""
    wheels = CUDA_WHEELS[version]
    for wheel in wheels:
        why = wheel.unavailable_reason()
        if why is not None:
            raise BindingsUnavailableError(why)
    with _locked():
        return tuple(_unpack(wheel, download(wheel)) for wheel in wheels)


def prepare(version: str) -> Bindings:
    """Download (once), unpack and stub one release; BindingsUnavailableError says why it cannot be done here."""
    wheel = WHEELS[version]
    why = wheel.unavailable_reason()
    if why is not None:
        raise BindingsUnavailableError(why)
    with _locked():
        path = download(wheel)
        folder = _unpack(wheel, path)
        extension = _extension(folder)
        sonames = needed_libraries(extension)
        symbols = undefined_symbols(extension)
        stub = _build_stub(sonames, symbols)
    return Bindings(wheel, folder, stub, tuple(sonames), frozenset(symbols))
