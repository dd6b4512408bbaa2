"""docker/: the Dockerfiles (parsed with dockerfile-parse), .dockerignore and the compose stack."""

from __future__ import annotations

import fnmatch
import io
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.deploy.conftest import ROOT

DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.jetson")
COMPILERS = {"gcc", "g++", "clang", "build-essential", "make", "cmake", "gfortran", "cc", "c++", "ninja-build",
             "nvcc", "cuda-toolkit", "python3-dev", "libpython3-dev"}


@dataclass
class Stage:
    image: str  # the FROM image with global ARG defaults substituted
    name: str | None
    instructions: list[dict[str, Any]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [str(i["value"]) for i in self.instructions if i["instruction"] == instruction]


def _substitute(text: str, args: dict[str, str]) -> str:
    for _ in range(5):  # defaults may refer to earlier ARGs
        text = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)
    return text


def stages_of(text: str) -> list[Stage]:
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instr in parser.structure:
        kind, value = instr["instruction"], str(instr["value"])
        if kind == "FROM":
            parts = value.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(_substitute(parts[0], args), name))
        elif kind == "ARG" and not stages:
            key, _, default = value.partition("=")
            args[key.strip()] = _substitute(default.strip().strip('"'), args)
        elif stages:
            stages[-1].instructions.append(instr)
    return stages


def problems(text: str) -> list[str]:
    """What keeps a Dockerfile from the project's rules; empty when it follows them."""
    found: list[str] = []
    stages = stages_of(text)
    if len(stages) < 2:
        found.append("not multi-stage")
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image in names:
            continue
        tail = stage.image.rsplit("/", 1)[-1]
        if "@sha256:" in stage.image:
            continue
        if ":" not in tail or "$" in stage.image:
            found.append(f"FROM {stage.image}: no pinned tag")
        elif tail.rsplit(":", 1)[1] == "latest":
            found.append(f"FROM {stage.image}: latest")
    final = stages[-1] if stages else Stage("", None)
    users = final.values("USER")
    if not users or users[-1].split(":")[0] in ("root", "0"):
        found.append("final stage runs as root")
    checks = final.values("HEALTHCHECK")
    if not checks or "trtserve" not in checks[-1] or "health" not in checks[-1]:
        found.append("no HEALTHCHECK speaking grpc.health.v1 (trtserve health)")
    for run in final.values("RUN"):
        words = set(re.split(r"[\s;&|\\]+", run))
        installs = ("apt-get install" in run or "apt install" in run or "apk add" in run or "dnf install" in run)
        bad = words & COMPILERS if installs else set()
        if bad:
            found.append(f"final stage installs a compiler: {sorted(bad)}")
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_follows_the_rules(name: str) -> None:
    assert problems((ROOT / "docker" / name).read_text()) == []


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_entrypoint_and_healthcheck(name: str) -> None:
    final = stages_of((ROOT / "docker" / name).read_text())[-1]
    assert final.values("ENTRYPOINT") == ['["/usr/local/bin/trtserve-entrypoint"]']
    assert any(v.split()[0] == "docker/entrypoint.sh" for v in final.values("COPY"))
    assert any("--from=build" in v and "/opt/venv" in v for v in final.values("COPY"))
    env = " ".join(final.values("ENV"))
    build_engines = "TRTSERVE_BUILD_ENGINES=0" if name == "Dockerfile.cpu" else "TRTSERVE_BUILD_ENGINES=1"
    assert build_engines in env and "TRTSERVE_HOST=0.0.0.0" in env
    health = final.values("HEALTHCHECK")[-1]
    assert health.split("CMD", 1)[1].strip() == '["trtserve", "health"]'
    assert int(re.search(r"--start-period=(\d+)s", health).group(1)) >= (120 if name == "Dockerfile.cpu" else 900)


def test_jetson_dockerfile_takes_the_l4t_tag_as_build_argument() -> None:
    text = (ROOT / "docker" / "Dockerfile.jetson").read_text()
    assert stages_of(text)[0].image == "nvcr.io/nvidia/l4t-jetpack:r36.4.0"
    assert stages_of(text.replace("ARG L4T_TAG=r36.4.0", "ARG L4T_TAG=r36.3.0"))[-1].image.endswith(":r36.3.0")


def test_rules_catch_bad_dockerfiles() -> None:
    bad = "FROM python:latest\nRUN apt-get install -y gcc\nUSER root\nCMD [\"trtserve\"]\n"
    assert problems(bad) == ["not multi-stage", "FROM python:latest: latest", "final stage runs as root",
                             "no HEALTHCHECK speaking grpc.health.v1 (trtserve health)",
                             "final stage installs a compiler: ['gcc']"]
    unpinned = "ARG BASE=ubuntu\nFROM ${BASE} AS a\nFROM a\nUSER 1000\nHEALTHCHECK CMD trtserve health\n"
    assert problems(unpinned) == ["FROM ubuntu: no pinned tag"]


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if pat == "**" or fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or path.startswith(pat + "/"):
            result = not negate
    return result


def test_dockerignore_keeps_what_the_images_copy_and_drops_built_engines() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for name in DOCKERFILES:
        for stage in stages_of((ROOT / "docker" / name).read_text()):
            for copy in stage.values("COPY"):
                if copy.startswith("--from"):
                    continue
                for source in shlex.split(copy)[:-1]:
                    assert not _ignored(patterns, source.rstrip("/")), f"{name}: COPY {source} is excluded"
    for path in ("engines/shapes/cache/a.plan", "engines/shapes/x.plan", ".venv/bin/python", "tests/conftest.py",
                 "trtserve/__pycache__/cli.cpython-311.pyc", ".git/HEAD"):
        assert _ignored(patterns, path), path
    assert not _ignored(patterns, "engines/shapes/model.onnx")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    return data


def test_compose_images_pinned_and_server_locked_down() -> None:
    services = compose()["services"]
    for name, service in services.items():
        image = service["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (name, image)
    trtserve = services["trtserve"]
    assert trtserve["read_only"] is True and "/tmp" in trtserve["tmpfs"]
    assert trtserve["user"].split(":")[0] not in ("0", "root")
    assert trtserve["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    server = yaml.safe_load((ROOT / "docker" / "server.yaml").read_text())
    assert int(trtserve["stop_grace_period"].rstrip("s")) > 2 * server["grace_period_s"]
    gpu = yaml.safe_load((ROOT / "docker" / "compose.gpu.yaml").read_text())["services"]["trtserve"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_wires_alert_rules_and_dashboard() -> None:
    services = compose()["services"]
    docker = ROOT / "docker"
    prom_mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert prom_mounts["../monitoring/alerts.yml"].startswith("/etc/prometheus/rules/")
    prom_config = yaml.safe_load((docker / "prometheus" / "prometheus.yml").read_text())
    assert prom_config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    (job,) = prom_config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["trtserve:8002"] and job["metrics_path"] == "/metrics"
    assert "127.0.0.1:8002:8002" in services["trtserve"]["ports"]
    graf_mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    dashboard = graf_mounts["../monitoring/grafana/trtserve.json"]
    provider = yaml.safe_load((docker / "grafana" / "provisioning" / "dashboards" / "trtserve.yaml").read_text())
    assert Path(dashboard).parent == Path(provider["providers"][0]["options"]["path"])
    for source in [*prom_mounts, *graf_mounts]:
        if not source.startswith("../monitoring/"):  # the metrics work adds monitoring/
            assert (docker / source).exists(), source


def test_gpu_image_runs_on_a_runtime_base_with_tensorrt_runtime_packages_only() -> None:
    text = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    stages = stages_of(text)
    build, final = stages[0], stages[-1]
    assert build.image.startswith("nvcr.io/nvidia/tensorrt:")  # the venv is built on the development image
    assert not final.image.startswith("nvcr.io/nvidia/tensorrt:") and "devel" not in final.image
    cuda = re.fullmatch(r"nvcr\.io/nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu(\d+\.\d+)", final.image)
    assert cuda, final.image
    deb = re.search(r"^ARG TENSORRT_DEB_VERSION=(\S+)$", text, re.MULTILINE)
    assert deb and deb.group(1).endswith(f"+cuda{cuda.group(1)}.{cuda.group(2)}"), "TensorRT debs for another CUDA"
    install = " ".join(r for r in final.values("RUN") if "apt-get install" in r)
    packages = [w for w in install.split() if w.startswith(("libnvinfer", "libnvonnx", "python3-libnvinfer"))]
    assert packages and all(p.endswith("=${TENSORRT_DEB_VERSION}") for p in packages), packages  # all pinned alike
    assert not [p for p in packages if "-dev" in p or "-bin" in p or "samples" in p], packages
    assert "python3-libnvinfer=${TENSORRT_DEB_VERSION}" in packages  # the bindings the venv sees
    build_run = " ".join(build.values("RUN"))
    assert "include-system-site-packages = true" in build_run and "--system-site-packages" not in build_run
