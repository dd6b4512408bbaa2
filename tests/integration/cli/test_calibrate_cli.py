"""``trtserve calibrate`` on a copy of the bundled model: artifacts, model.yaml, report, bad input."""

import json
import os
import shutil
from pathlib import Path

import cv2
import pytest

from calibrators.files import atomic_write_bytes
from calibrators.trt_cache import read_cache
from trtserve.cli import main
from trtserve.config import load_model_config
from trtserve.datasets.synthetic import CALIBRATION_SEED, render_scene

from ...conftest import ENGINES


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(ENGINES / "shapes", root / "shapes",
                    ignore=shutil.ignore_patterns("*.int8*", "calibration*"))
    text = (root / "shapes" / "model.yaml").read_text()
    if "artifacts:" in text:
        (root / "shapes" / "model.yaml").write_text(text.split("artifacts:")[0])
    return root


def images(folder: Path, count: int, unreadable: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), render_scene(CALIBRATION_SEED, i).image_bgr)
    for i in range(unreadable):
        (folder / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    return folder


def run(capsys: pytest.CaptureFixture[str], repo: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--repository", str(repo), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_calibrate_writes_artifacts_report_and_model_yaml(repo: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    folder = images(tmp_path / "calib", 12, unreadable=2)
    code, out, err = run(capsys, repo, "calibrate", "shapes", "--images", str(folder), "--batch", "4",
                         "--trt-version", "8.6.2", "--trt-version", "10.3.0", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["frames_used"] == 12 and report["frames_skipped"] == 2 and report["method"] == "auto"
    assert report["method_choice"]["chosen"] in report["method_choice"]["agreement"]  # the default: a measured choice
    assert "calibrated on 12 frames; 300 or more" in caplog.text  # too few frames: warned with the numbers
    model_dir = repo / "shapes"
    assert json.loads((model_dir / "calibration.report.json").read_text()) == report
    assert any(why.startswith("final output conv") for why in report["excluded"].values())
    config = load_model_config(model_dir / "model.yaml")
    assert config.available_precisions() == ["fp32", "int8"]
    assert config.artifacts["int8_tensorrt"].is_file()
    cache = read_cache(model_dir / "calibration.trt8602.cache")
    assert cache.version_int == 8602 and cache.algorithm == "EntropyCalibration2"
    assert read_cache(model_dir / "calibration.trt100300.cache").scales == cache.scales
    assert cache.amax("images") == pytest.approx(report["tensors"]["images"]["amax"], rel=1e-6)
    assert "# The bundled detector" in (model_dir / "model.yaml").read_text()  # comments kept
    code, out, _ = run(capsys, repo, "eval", "--precision", "int8", "--images", "10", "--json")
    assert code == 0 and json.loads(out)["precision"] == "int8"
    # calibrating again replaces the artifacts block instead of adding a second one
    code, _, _ = run(capsys, repo, "calibrate", "shapes", "--images", str(folder), "--method", "minmax",
                     "--trt-version", "8.5.2", "--json", "--overwrite")
    assert code == 0
    text = (model_dir / "model.yaml").read_text()
    assert text.count("artifacts:") == 1 and "calibration_cache_8502" in text
    assert read_cache(model_dir / "calibration.trt8502.cache").algorithm == "MinMaxCalibration"
    # the caches of the versions not asked for this time are rewritten from the new ranges, not dropped
    assert "calibration_cache_8602" in text and "calibration_cache_100300" in text
    assert read_cache(model_dir / "calibration.trt8602.cache").scales == read_cache(
        model_dir / "calibration.trt8502.cache").scales


@pytest.mark.parametrize("setup, args, message", [
    ("empty", ["--images"], "no image files"),
    ("broken", ["--images"], "none of the 3 images could be read"),
    ("none", [], "exactly one of --images DIR or --video FILE"),
    ("missing_video", ["--video"], "no such file"),
    ("bad_version", ["--images"], "--trt-version: TensorRT version 'eight'"),
    ("no_frames", ["--images"], "--num 0: expected at least 1 frame"),
    ("no_video_frames", ["--video"], "--num -1: expected at least 1 frame"),
])
def test_bad_input(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, args: list[str],
                   message: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    extra: list[str] = []
    if setup == "broken":
        images(folder, 0, unreadable=3)
    if setup == "bad_version":
        images(folder, 2)
        extra = ["--trt-version", "eight"]
    if setup.startswith("no_"):
        images(folder, 2)
        extra = ["--num", "0" if setup == "no_frames" else "-1"]
    target = [str(folder if setup != "missing_video" else tmp_path / "absent.mp4")] if args else []
    before = sorted(p.name for p in (repo / "shapes").iterdir())
    code, _, err = run(capsys, repo, "calibrate", "shapes", *args, *target, *extra)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in (repo / "shapes").iterdir()) == before  # nothing written


def test_interrupted_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.int8.onnx"
    target.write_bytes(b"old")

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.int8.onnx"]


def test_model_yaml_exclusions_are_honoured(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    folder = images(tmp_path / "calib", 4)
    yaml_path = repo / "shapes" / "model.yaml"
    first_conv = "/stem/stem.0/stem.0.0/Conv"
    yaml_path.write_text(yaml_path.read_text() + f"quantization:\n  exclude_nodes: ['{first_conv}']\n")
    code, out, err = run(capsys, repo, "calibrate", "shapes", "--images", str(folder), "--method", "entropy",
                         "--json")  # 4 frames: too few for the auto method's accuracy check
    assert code == 0, err
    assert json.loads(out)["excluded"][first_conv] == "excluded by configuration"
    for name in ("model.int8.onnx", "model.int8.tensorrt.onnx"):
        graph = onnx.load(str(repo / "shapes" / name)).graph
        producers = {o: n.op_type for n in graph.node for o in n.output}
        conv = next(n for n in graph.node if n.name == first_conv)
        assert producers.get(conv.input[1]) != "DequantizeLinear"  # weights stay float
    yaml_path.write_text(yaml_path.read_text().replace(first_conv, "/no/such/Conv"))
    code, _, err = run(capsys, repo, "calibrate", "shapes", "--images", str(folder))
    assert code == 2 and "'/no/such/Conv'" in err and "not in the model" in err
