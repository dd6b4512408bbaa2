"""``trtserve eval --multi-label`` (every class above threshold per box, as Ultralytics val scores) on the bundled
model, on the synthetic set and on a user's YOLO folder; the dataset's warnings (a missing label file) reach the
report."""

import json
from pathlib import Path

import pytest

from trtserve.cli import main
from trtserve.datasets.synthetic import evaluation_set
from trtserve.datasets.yolo import label_path, write_yolo

from ..conftest import ENGINES

IMAGES = 24


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(["--repository", str(ENGINES), *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.startswith(("{", "[")) else {}, err


def test_multi_label_scores_more_candidates_on_the_synthetic_set(capsys: pytest.CaptureFixture[str]) -> None:
    code, single, err = run(capsys, "eval", "--images", str(IMAGES), "--json")
    assert code == 0, err
    code, multi, err = run(capsys, "eval", "--images", str(IMAGES), "--json", "--multi-label")
    assert code == 0, err
    assert multi["multi_label"] is True and single["multi_label"] is False
    assert multi["map50"] > single["map50"]  # the second class of an ambiguous box now counts (0.887 -> 0.930 on 300)
    code, loose, _ = run(capsys, "eval", "--images", str(IMAGES), "--json", "--multi-label", "--iou-threshold", "0.7")
    assert code == 0 and loose["map50"] != multi["map50"]  # the NMS IoU is the one asked for


def test_multi_label_on_a_yolo_folder_with_a_missing_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_yolo(list(evaluation_set(IMAGES)), tmp_path / "yolo", suffix=".jpg")
    label_path(tmp_path / "yolo" / "images" / "val" / "00003.jpg").unlink()
    code, single, err = run(capsys, "eval", "--data", str(data), "--precision", "fp32", "--json")
    assert code == 0, err
    code, multi, err = run(capsys, "eval", "--data", str(data), "--precision", "fp32", "--json", "--multi-label")
    assert code == 0, err
    assert multi["multi_label"] is True and single["multi_label"] is False
    assert multi["precisions"]["fp32"]["map50"] > single["precisions"]["fp32"]["map50"]
    assert multi["missing_label_files"] == 1 and multi["empty_label_files"] == 0
    (warning,) = multi["warnings"]
    assert "labels/val/00003.txt" in warning and "scored as frames without objects" in warning
    code = main(["--repository", str(ENGINES), "eval", "--data", str(data), "--precision", "fp32"])
    out = capsys.readouterr().out
    assert code == 0 and "warning: 1 of the 24 'val' images have no label file" in out
