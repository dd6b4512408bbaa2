"""``trtserve calibrate`` never replaces shipped artifacts unasked, writes ``--out DIR``, rewrites (never drops)
the caches of TensorRT versions it was not asked for, and refuses INT8 models that quantize nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import onnx
import pytest

from calibrators.trt_cache import read_cache
from trtserve.cli import main
from trtserve.config import load_model_config
from trtserve.datasets.synthetic import CALIBRATION_SEED, render_scene

from ...conftest import ENGINES

FAST = ["--method", "entropy", "--batch", "4"]


@pytest.fixture()
def shipped(tmp_path: Path) -> Path:
    """A repository with a full copy of the bundled model folder, its INT8 artifacts and three caches included."""
    root = tmp_path / "repo"
    shutil.copytree(ENGINES / "shapes", root / "shapes")
    return root


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for i in range(8):
        cv2.imwrite(str(folder / f"{i:03d}.png"), render_scene(CALIBRATION_SEED, i).image_bgr)
    return folder


def run(capsys: pytest.CaptureFixture[str], repo: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--repository", str(repo), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_replacing_shipped_artifacts_needs_overwrite(shipped: Path, frames: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = shipped / "shapes"
    before = snapshot(folder)
    code, _, err = run(capsys, shipped, "calibrate", "shapes", "--images", str(frames), *FAST)
    assert code == 2 and "Traceback" not in err
    assert "would replace model.int8.onnx, model.int8.tensorrt.onnx, calibration.trt8502.cache" in err
    assert "--overwrite" in err and "--out DIR" in err
    assert snapshot(folder) == before  # nothing written, model.yaml included
    code, out, err = run(capsys, shipped, "calibrate", "shapes", "--images", str(frames), *FAST, "--overwrite")
    assert code == 0, err
    assert "rewrote calibration.trt8502.cache, calibration.trt8602.cache, calibration.trt100300.cache" in out
    config = load_model_config(folder / "model.yaml")
    for version in (8502, 8602, 100300):  # the shipped caches stay recorded, rewritten from the new ranges
        path = config.artifacts[f"calibration_cache_{version}"]
        assert path.read_bytes() != before[path.name]
        assert read_cache(path).version_int == version
    assert read_cache(folder / "calibration.trt8502.cache").scales == read_cache(
        folder / "calibration.trt100300.cache").scales
    assert "peak RSS" in out and "budget 1024" in out


def test_out_writes_a_calibrated_copy_and_leaves_the_model_folder(shipped: Path, frames: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = shipped / "shapes"
    before = snapshot(folder)
    out_repo = tmp_path / "calibrated"
    code, out, err = run(capsys, shipped, "calibrate", "shapes", "--images", str(frames), *FAST,
                         "--trt-version", "10.3.0", "--out", str(out_repo / "shapes"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["memory"]["budget_mb"] == 1024.0 and report["memory"]["peak_rss_mb"] > 0
    assert snapshot(folder) == before  # the model's own folder is untouched
    copy = load_model_config(out_repo / "shapes" / "model.yaml")
    assert copy.available_precisions() == ["fp32", "int8"]
    assert sorted(k for k in copy.artifacts if k.startswith("calibration_cache_")) == [
        "calibration_cache_100300", "calibration_cache_8502", "calibration_cache_8602"]
    assert (out_repo / "shapes" / "model.onnx").read_bytes() == before["model.onnx"]
    assert snapshot(out_repo / "shapes")["model.int8.onnx"] != before["model.int8.onnx"]
    # the copy is a model folder: eval serves its INT8 from there
    code, out, err = run(capsys, out_repo, "eval", "--model", "shapes", "--precision", "int8", "--images", "4",
                         "--json")
    assert code == 0 and json.loads(out)["precision"] == "int8", err
    # a folder that is not empty is refused without --overwrite
    code, _, err = run(capsys, shipped, "calibrate", "shapes", "--images", str(frames), *FAST, "--out",
                       str(out_repo / "shapes"))
    assert code == 2 and "is not empty" in err and "--overwrite" in err


def test_an_int8_model_that_quantizes_nothing_is_refused(shipped: Path, frames: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = shipped / "shapes"
    yaml_path = folder / "model.yaml"
    yaml_path.write_text(yaml_path.read_text() + "quantization:\n  exclude_op_types: [Conv]\n")
    before = snapshot(folder)
    code, _, err = run(capsys, shipped, "calibrate", "shapes", "--images", str(frames), *FAST, "--overwrite")
    assert code == 2 and "Traceback" not in err
    assert "shapes: calibration would quantize no weighted layer" in err and "all 46 weighted layers" in err
    assert snapshot(folder) == before


def test_unnamed_nodes_calibrate_to_a_quantized_model(tmp_path: Path, frames: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "repo"
    shutil.copytree(ENGINES / "shapes", root / "shapes", ignore=shutil.ignore_patterns("*.int8*", "calibration*"))
    yaml_path = root / "shapes" / "model.yaml"
    yaml_path.write_text(yaml_path.read_text().split("artifacts:")[0])
    model = onnx.load(str(root / "shapes" / "model.onnx"))
    for node in model.graph.node:
        node.name = ""
    onnx.save(model, str(root / "shapes" / "model.onnx"))
    code, out, err = run(capsys, root, "calibrate", "shapes", "--images", str(frames), *FAST, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert len(report["tensors"]) > 40
    written = onnx.load(str(root / "shapes" / "model.int8.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in written.graph.node) > 40
    assert sum(n.op_type == "DequantizeLinear" for n in written.graph.node) > 80  # weights and activations
