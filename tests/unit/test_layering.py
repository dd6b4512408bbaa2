"""The package's layering, read from the source: which stage may import which, and no import cycle.

Every ``import`` counts, the lazy ones inside functions too (they are dependencies all the same); only
``if TYPE_CHECKING:`` blocks are left out (annotations, never run). The rules, from the bottom up:

* ``calibrators`` is a library of its own: it never imports ``trtserve``.
* ``trtserve.errors`` imports nothing; ``config`` only errors and the two plugin tables (``backends.registry``,
  ``heads.registry``, which import only ``trtserve.registry``), so validation never loads a plugin.
* ``vision`` (frames, letterbox, detections, video) imports no other trtserve package but config / errors.
* the seams a frame passes through (``heads``, ``backends``) and the TensorRT build side (``tensorrt``) sit on
  vision / config; ``detector`` on them; the stages (``calibration``, ``monitoring``, ``serving``) on the detector.
* ``serving`` never imports ``cli``, ``bench`` or ``deploy``; ``monitoring`` never imports ``serving``; no library
  package imports ``cli`` or ``bench`` (the tools on top); ``cli`` is imported by nothing; the two protocol
  servicers never import each other.
* the plugin tables name their plugins as strings, loaded by their users (detector, head factory, doctor), never
  by config validation: checked by running it, since ``importlib`` is invisible to a reading of the source.
"""

from __future__ import annotations

import ast
import functools
import graphlib
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("trtserve", "calibrators")

# component -> the components it may import (besides itself). A component is a subpackage of trtserve
# (trtserve.serving), a top-level module (trtserve.config), or one of the plugin tables named apart.
BASE = {"trtserve", "trtserve.errors", "trtserve.reports", "trtserve.logs", "trtserve.threads"}  # version, errors,
# report form, logs, OS thread names
ALLOWED: dict[str, set[str]] = {
    "calibrators": set(),
    "trtserve": set(),
    "trtserve.errors": set(),
    "trtserve.reports": set(),
    "trtserve.logs": set(),
    "trtserve.threads": set(),
    "trtserve.registry": BASE,
    "trtserve.backends.registry": BASE | {"trtserve.registry"},
    "trtserve.heads.registry": BASE | {"trtserve.registry"},
    "trtserve.config": BASE | {"trtserve.backends.registry", "trtserve.heads.registry"},
    "trtserve.protogen": BASE,
    "trtserve.v1": BASE,
    "trtserve.vision": BASE | {"trtserve.config"},
    "trtserve.datasets": BASE | {"trtserve.vision"},
    "trtserve.repository": BASE | {"trtserve.config", "calibrators"},  # folds a QAT model's Q/DQ for its shadow
    "trtserve.heads": BASE | {"trtserve.config", "trtserve.vision", "trtserve.heads.registry"},
    "trtserve.tensorrt": BASE | {"trtserve.config", "calibrators"},
    "trtserve.backends": BASE | {"trtserve.config", "trtserve.backends.registry", "trtserve.tensorrt"},
    "trtserve.detector": BASE | {"trtserve.config", "trtserve.vision", "trtserve.heads", "trtserve.heads.registry",
                                 "trtserve.backends", "trtserve.backends.registry"},
    "trtserve.client": BASE | {"trtserve.vision", "trtserve.v1"},
    "trtserve.training": BASE | {"trtserve.datasets", "trtserve.vision"},
}
SEAMS = {"trtserve.config", "trtserve.vision", "trtserve.heads", "trtserve.heads.registry", "trtserve.backends",
         "trtserve.backends.registry", "trtserve.detector", "trtserve.repository", "calibrators"}
ALLOWED["trtserve.calibration"] = BASE | SEAMS | {"trtserve.datasets"}
ALLOWED["trtserve.monitoring"] = BASE | SEAMS | {"trtserve.tensorrt"}
ALLOWED["trtserve.serving"] = BASE | SEAMS | {"trtserve.monitoring", "trtserve.v1"}
ALLOWED["trtserve.deploy"] = BASE | SEAMS | {"trtserve.serving", "trtserve.monitoring", "trtserve.tensorrt"}
ALLOWED["trtserve.bench"] = BASE | SEAMS | {"trtserve.serving", "trtserve.monitoring", "trtserve.calibration",
                                            "trtserve.datasets", "trtserve.client", "trtserve.v1"}
ALLOWED["trtserve.cli"] = set(ALLOWED) - {"trtserve.cli"}  # the thin adapter over everything; nothing imports it
# siblings inside one stage that share code only through a third module (serving/protocol.py), never directly
SIBLINGS_APART = {("trtserve.serving.kserve_service", "trtserve.serving.detection_service"),
                  ("trtserve.serving.detection_service", "trtserve.serving.kserve_service")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def component(module: str) -> str:
    """``trtserve.serving.server`` -> ``trtserve.serving``; the plugin tables and top-level modules stand alone."""
    if module.startswith("calibrators"):
        return "calibrators"
    parts = module.split(".")
    if ".".join(parts[:3]) in ("trtserve.backends.registry", "trtserve.heads.registry"):
        return ".".join(parts[:3])
    return ".".join(parts[:2])


@functools.cache
def _known_modules() -> frozenset[str]:
    return frozenset(m for m, _ in sources())


def sources() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_pb2" not in path.name:
                yield module_name(path), path


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Every import statement's target modules, outside ``if TYPE_CHECKING:``; with ``top_level_only``, not those
    inside functions (which run only when called)."""

    def __init__(self, package: str, top_level_only: bool) -> None:
        self.package, self.top_level_only = package, top_level_only
        self.found: list[tuple[str, int]] = []

    def visit_If(self, node: ast.If) -> None:
        for child in node.orelse if _type_checking(node) else [*node.body, *node.orelse]:
            self.visit(child)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if not self.top_level_only:
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815 - ast.NodeVisitor's naming

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(a.name, node.lineno) for a in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: from the package, up level - 1
            parts = self.package.split(".")
            base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
        self.found.append((base, node.lineno))
        self.found += [(f"{base}.{a.name}", node.lineno) for a in node.names]  # a submodule, when it is one


def imports(module: str, path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for the imports of ``module``'s source that name a module of trtserve/calibrators."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    visitor = _Imports(package, top_level_only)
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    known = _known_modules()
    found = []
    for name, line in visitor.found:  # each to the module it loads: `pkg.mod.Name` and `pkg.mod_pb2` count as pkg.mod
        parts = name.split(".")
        if parts[0] in PACKAGES:
            owner = next(".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in known
                         or i == 1)
            found.append((owner, line))
    return list(dict.fromkeys(found))  # `from m import a, b` names m once per line


def violations(module: str, path: Path) -> list[str]:
    """What ``module`` (at ``path``) imports against the rules, one line each."""
    own = component(module)
    assert own in ALLOWED, f"{module}: component {own} has no layering rule; add it to ALLOWED"
    found = []
    for target, line in imports(module, path):
        other = component(target)
        if other != own and other not in ALLOWED[own]:
            found.append(f"{path}:{line}: {own} imports {target} ({other} is not below it)")
        if (module, target) in SIBLINGS_APART:
            found.append(f"{path}:{line}: {module} imports its sibling {target}")
    return found


def cycle_in(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle of ``graph`` (node -> the nodes it depends on), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_the_rules_themselves_have_no_cycle() -> None:
    cycle = cycle_in(ALLOWED)
    assert cycle is None, f"the layering rules have a cycle: {' -> '.join(cycle or [])}"


def test_every_import_follows_the_layering() -> None:
    scanned = dict(sources())
    assert len(scanned) > 60 and {"trtserve.serving.server", "calibrators.qdq", "trtserve.cli.parser"} <= set(scanned)
    found = [v for module, path in scanned.items() for v in violations(module, path)]
    assert not found, "\n".join(found)


def test_no_import_cycle_between_modules() -> None:
    """Module-level imports only: those run at import time, where a cycle breaks (lazy imports cannot)."""
    graph = {module: {t for t, _ in imports(module, path, top_level_only=True) if t != module}
             for module, path in sources()}
    cycle = cycle_in(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_subpackage_inits_import_nothing() -> None:
    """So that importing one module of a stage loads nothing else (``trtserve health`` starts in ~0.15 s)."""
    heavy = []
    for module, path in sources():
        if path.name == "__init__.py" and module.startswith("trtserve."):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body):
                heavy.append(module)
    assert not heavy, f"these __init__ modules import at load time: {heavy}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The rules bite on a source that breaks them: lazy, relative, ``from pkg import module``, generated stubs."""
    bad = tmp_path / "bad.py"
    bad.write_text("from trtserve.errors import ConfigError\n"
                   "def later():\n    from ..serving import server\n"
                   "    import trtserve.v1.detection_pb2\n")
    found = violations("trtserve.vision.bad", bad)
    assert any("imports trtserve.serving.server (trtserve.serving is not below it)" in v for v in found), found
    assert any("imports trtserve.v1 (trtserve.v1" in v for v in found), found
    assert not any("trtserve.errors" in v for v in found)
    sibling = tmp_path / "kserve_service.py"
    sibling.write_text("from trtserve.serving.detection_service import DetectionService\n")
    assert violations("trtserve.serving.kserve_service", sibling) == [
        f"{sibling}:1: trtserve.serving.kserve_service imports its sibling trtserve.serving.detection_service"]


def test_plugin_tables_point_into_their_own_package() -> None:
    from trtserve.backends.registry import BACKENDS
    from trtserve.heads.registry import HEADS

    for table, package in ((BACKENDS, "trtserve.backends."), (HEADS, "trtserve.heads.")):
        for name in table.names():
            cls = table.load(name)
            assert cls.__module__.startswith(package), f"{table.kind} {name!r} lives in {cls.__module__}"


def test_validating_a_model_config_loads_no_plugin(tmp_path: Path) -> None:
    """model.yaml validation reads the tables' names and tags only: no head, backend, NumPy or OpenCV."""
    config = tmp_path / "m" / "model.yaml"
    config.parent.mkdir()
    config.write_text("name: m\nonnx: m.onnx\ninput: {height_px: 64, width_px: 64}\nhead: {type: end2end}\n"
                      "backend: tensorrt\ndrift: {shadow_backend: onnxruntime}\n")
    code = (f"import sys; from trtserve.config import load_model_config; load_model_config({str(config)!r}); "
            "print(sorted(m for m in sys.modules if m.startswith(('trtserve.heads.', 'trtserve.backends.', 'numpy', "
            "'cv2')) and not m.endswith('.registry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"
