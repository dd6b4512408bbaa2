"""Rendering of the kustomize overlays for the deployment tests: the real kustomize where one is installed
(``kustomize`` or ``kubectl kustomize`` with kustomize v4+), otherwise the Python renderer beside this file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import kustomize_py

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "jetson")
EXAMPLES = ("monitored",)  # k8s/examples/: overlays with the opt-in components

Renderer = Callable[[Path], list[dict[str, Any]]]


def real_kustomize() -> tuple[list[str], str] | None:
    """(command, version) of an installed kustomize v4+, or None (also when TRTSERVE_TEST_RENDERER=python)."""
    if os.environ.get("TRTSERVE_TEST_RENDERER") == "python":
        return None
    if shutil.which("kustomize"):
        out = subprocess.run(["kustomize", "version"], capture_output=True, text=True, timeout=60).stdout.strip()
        return ["kustomize", "build"], out
    if shutil.which("kubectl"):
        run = subprocess.run(["kubectl", "version", "--client", "-o", "json"], capture_output=True, text=True,
                             timeout=60)
        try:
            version = json.loads(run.stdout).get("kustomizeVersion", "")
        except json.JSONDecodeError:
            return None
        major = version.lstrip("v").split(".")[0]
        if major.isdigit() and int(major) >= 4:
            return ["kubectl", "kustomize"], version
    return None


def render_with(command: list[str]) -> Renderer:
    def render(path: Path) -> list[dict[str, Any]]:
        run = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{' '.join(command)} {path} failed:\n{run.stderr}"
        return [d for d in yaml.safe_load_all(run.stdout) if d]
    return render


@pytest.fixture(scope="session")
def render() -> Renderer:
    found = real_kustomize()
    return render_with(found[0]) if found else kustomize_py.build


@pytest.fixture(scope="session")
def rendered(render: Renderer) -> dict[str, list[dict[str, Any]]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def examples(render: Renderer) -> dict[str, list[dict[str, Any]]]:
    return {name: render(K8S / "examples" / name) for name in EXAMPLES}
