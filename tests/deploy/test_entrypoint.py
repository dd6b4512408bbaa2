"""docker/entrypoint.sh outside a container: the real config validation (python -m trtserve.deploy) and a stand-in
``trtserve`` on PATH that builds engines the way ``trtserve build`` is specified (reuse on a matching device key,
rebuild otherwise), since TensorRT cannot run here."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.deploy.conftest import ROOT

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"

FAKE_TRTSERVE = r"""#!/bin/sh
# stand-in for trtserve: records its arguments; "build" keeps one engine per device key like the real command
echo "trtserve $*" >> "$FAKE_LOG"
[ "$1" = --repository ] && { repo=$2; shift 2; }
case "$1" in
  build)
    model=$2
    [ -n "${FAKE_BUILD_FAILS:-}" ] && { echo "trtserve: error: TensorRT is not installed" >&2; exit 2; }
    plan="$repo/$model/cache/$FAKE_DEVICE_KEY.plan"
    [ -f "$plan" ] || { mkdir -p "$repo/$model/cache"; echo engine > "$plan"; }
    ;;
  serve) echo "serving" ;;
esac
"""


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "trtserve"
    fake.write_text(FAKE_TRTSERVE)
    fake.chmod(0o755)
    seed = tmp_path / "seed"
    (seed / "shapes").mkdir(parents=True)
    shutil.copy(ROOT / "engines" / "shapes" / "model.yaml", seed / "shapes" / "model.yaml")
    (seed / "shapes" / "model.onnx").write_bytes(b"onnx")
    config = tmp_path / "server.yaml"
    config.write_text("models: [shapes]\nprecision: int8\ngrace_period_s: 10\n")
    (tmp_path / "dev").mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith("TRTSERVE_")}
    return {**keep, "PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(tmp_path / "calls.log"),
            "FAKE_DEVICE_KEY": "sm89-trt10.3-int8", "TRTSERVE_PYTHON": sys.executable,
            "PYTHONPATH": str(ROOT), "TRTSERVE_CONFIG": str(config), "TRTSERVE_SEED_REPOSITORY": str(seed),
            "TRTSERVE_MODEL_REPOSITORY": str(tmp_path / "repo"), "TRTSERVE_MODEL_CONFIG_DIR": str(tmp_path / "cm"),
            "TRTSERVE_DEV_DIR": str(tmp_path / "dev"), "TRTSERVE_BUILD_ENGINES": "1"}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=120)


def calls(env: dict[str, str]) -> list[str]:
    path = Path(env["FAKE_LOG"])
    return path.read_text().splitlines() if path.exists() else []


def test_builds_a_missing_engine_then_serves(env: dict[str, str]) -> None:
    result = run(env, "serve", "--workers", "4")
    assert result.returncode == 0, result.stderr
    repo = Path(env["TRTSERVE_MODEL_REPOSITORY"])
    assert (repo / "shapes" / "cache" / "sm89-trt10.3-int8.plan").is_file()
    assert (repo / "shapes" / "model.onnx").read_bytes() == b"onnx"  # seeded from the image's repository
    assert "model shapes: no engine was cached; built one for this device" in result.stderr
    assert calls(env) == [f"trtserve --repository {repo} build shapes --precision int8",
                          f"trtserve --repository {repo} serve --config {env['TRTSERVE_CONFIG']} --workers 4"]
    assert result.stdout.strip() == "serving"


def test_reuses_the_cached_engine_of_this_device(env: dict[str, str]) -> None:
    assert run(env, "prepare").returncode == 0
    plan = Path(env["TRTSERVE_MODEL_REPOSITORY"]) / "shapes" / "cache" / "sm89-trt10.3-int8.plan"
    before = plan.stat().st_mtime_ns
    result = run(env, "prepare")
    assert result.returncode == 0, result.stderr
    assert "model shapes: reused the cached engine for this device" in result.stderr
    assert plan.stat().st_mtime_ns == before
    assert not any(" serve" in c for c in calls(env))  # prepare never serves (the initContainer's mode)


def test_logs_and_rebuilds_an_engine_from_another_device(env: dict[str, str]) -> None:
    cache = Path(env["TRTSERVE_MODEL_REPOSITORY"]) / "shapes" / "cache"
    cache.mkdir(parents=True)
    (cache / "sm86-trt10.3-int8.plan").write_text("engine of an A10")
    result = run(env, "prepare")
    assert result.returncode == 0, result.stderr
    assert ("model shapes: cached engines were for another device or build (sm86-trt10.3-int8.plan ); "
            "rebuilt for this device") in result.stderr
    assert (cache / "sm89-trt10.3-int8.plan").is_file()


def test_bad_config_exits_2_naming_the_key_before_any_build(env: dict[str, str]) -> None:
    Path(env["TRTSERVE_CONFIG"]).write_text("models: [shapes]\nbatcher:\n  max_batch_sise: 8\n")
    result = run(env, "serve")
    assert result.returncode == 2
    (line,) = [x for x in result.stderr.splitlines() if "error" in x]
    assert "bad server configuration, not starting" in line
    assert f"{env['TRTSERVE_CONFIG']}: unknown key 'batcher.max_batch_sise'" in line
    assert calls(env) == []


def test_bad_environment_variable_exits_2(env: dict[str, str]) -> None:
    result = run({**env, "TRTSERVE_GRPC_PORT": "eighty"}, "serve")
    assert result.returncode == 2
    assert "TRTSERVE_GRPC_PORT='eighty'" in result.stderr and calls(env) == []


def test_model_config_from_the_configmap_replaces_the_images(env: dict[str, str]) -> None:
    cm = Path(env["TRTSERVE_MODEL_CONFIG_DIR"])
    cm.mkdir()
    (cm / "shapes.yaml").write_text((ROOT / "k8s" / "base" / "models" / "shapes.yaml").read_text())
    result = run(env, "prepare")
    assert result.returncode == 0, result.stderr
    repo_config = Path(env["TRTSERVE_MODEL_REPOSITORY"]) / "shapes" / "model.yaml"
    assert repo_config.read_text() == (cm / "shapes.yaml").read_text()


def test_a_failed_build_stops_with_its_reason(env: dict[str, str]) -> None:
    result = run({**env, "FAKE_BUILD_FAILS": "1"}, "serve")
    assert result.returncode == 1
    assert "TensorRT is not installed" in result.stderr
    assert "model shapes: engine build failed (see above); not serving" in result.stderr


def test_cpu_image_serves_without_building(env: dict[str, str]) -> None:
    result = run({**env, "TRTSERVE_BUILD_ENGINES": "0"})  # no arguments: serve, as the images' CMD
    assert result.returncode == 0, result.stderr
    assert [c.split()[3] for c in calls(env)] == ["serve"]


def test_other_commands_pass_through(env: dict[str, str]) -> None:
    assert run(env, "health", "--service", "shapes").returncode == 0
    assert calls(env) == ["trtserve health --service shapes"]


def test_gpu_image_without_gpu_stays_up_not_ready_and_says_why(env: dict[str, str]) -> None:
    proc = subprocess.Popen(["sh", str(ENTRYPOINT), "serve"], stderr=subprocess.PIPE, text=True,
                            env={**env, "TRTSERVE_REQUIRE_GPU": "1", "TRTSERVE_STANDBY_LOG_INTERVAL_S": "1"},
                            start_new_session=True)
    try:
        time.sleep(2.5)
        assert proc.poll() is None, "the entrypoint exited instead of staying up not ready"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    lines = [x for x in stderr.splitlines() if "no NVIDIA GPU is visible" in x]
    assert len(lines) >= 2 and "readiness stays false" in lines[0]  # repeated, so it stays the latest log line
    assert calls(env) == []


def test_gpu_found_through_nvidia_smi_or_jetson_device_nodes(env: dict[str, str], tmp_path: Path) -> None:
    smi = Path(env["PATH"].split(":")[0]) / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA L4 (UUID: GPU-1)'\n")
    smi.chmod(0o755)
    assert run({**env, "TRTSERVE_REQUIRE_GPU": "1"}, "prepare").returncode == 0
    smi.unlink()
    (Path(env["TRTSERVE_DEV_DIR"]) / "nvhost-ctrl-gpu").write_text("")
    assert run({**env, "TRTSERVE_REQUIRE_GPU": "1"}, "prepare").returncode == 0


def test_shellcheck_is_clean() -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    result = subprocess.run([shellcheck, "--shell=sh", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    smoke = subprocess.run([shellcheck, str(ROOT / "docker" / "buildah-smoke.sh")], capture_output=True, text=True)
    assert smoke.returncode == 0, smoke.stdout
