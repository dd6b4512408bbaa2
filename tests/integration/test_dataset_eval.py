"""``trtserve eval --data`` on the user's own labels (COCO JSON and YOLO layouts, generated from the held-out
synthetic scenes): the bundled detector scores what the synthetic evaluation scores on the same scenes, FP32 and
INT8 side by side with their agreement; corrupt images are listed, not fatal; ``calibrate --eval-data`` too."""

import json
import shutil
from pathlib import Path

import pytest

from trtserve.calibration.dataset_eval import evaluate_dataset
from trtserve.calibration.evaluation import evaluate
from trtserve.cli import main
from trtserve.datasets.labelled import open_dataset
from trtserve.datasets.synthetic import CALIBRATION_SEED, evaluation_set, render_scene, write_coco
from trtserve.datasets.yolo import write_yolo
from trtserve.detector import Detector
from trtserve.repository import ModelRepository

from ..conftest import ENGINES

SCENES = 16


@pytest.fixture(scope="module")
def scenes() -> list:
    return list(evaluation_set(SCENES))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory, scenes: list) -> dict[str, tuple[Path, Path | None]]:
    root = tmp_path_factory.mktemp("datasets")
    annotations = write_coco(scenes, root / "coco")  # PNG: the pixels the synthetic evaluation sees
    data_yaml = write_yolo(scenes, root / "yolo")
    return {"coco": (annotations.parent, annotations), "yolo": (data_yaml, None)}


def run(capsys: pytest.CaptureFixture[str], *argv: str, repo: Path = ENGINES) -> tuple[int, str, str]:
    code = main(["--repository", str(repo), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_dataset_map_equals_the_synthetic_evaluation_in_both_layouts(
        layouts: dict[str, tuple[Path, Path | None]]) -> None:
    config = ModelRepository(ENGINES).get("shapes")
    expected = {}
    for precision in ("fp32", "int8"):
        with Detector.open(config, precision) as detector:
            expected[precision] = evaluate(detector, SCENES)
    for layout, (data, annotations) in layouts.items():
        result = evaluate_dataset(config, open_dataset(data, annotations, config.class_names), ("fp32", "int8"))
        assert result.layout == layout and result.images == SCENES and not result.unreadable
        for precision, want in expected.items():
            got = result.precisions[precision]
            assert got.map50 == pytest.approx(want.map50, abs=1e-4), (layout, precision)
            assert got.map50_95 == pytest.approx(want.map50_95, abs=1e-4), (layout, precision)
            assert got.map50_95 > 0.6
            assert [c.name for c in got.classes] == list(config.class_names)
        assert 0.9 <= result.agreement_f1 <= 1.0
        assert all(d.f1 < 1.0 and d.image.endswith(".png") for d in result.disagreements)
        assert [d.f1 for d in result.disagreements] == sorted(d.f1 for d in result.disagreements)


def test_eval_cli_json_lists_corrupt_images_and_keeps_going(tmp_path: Path, scenes: list,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data_yaml = write_yolo(scenes[:6], tmp_path / "yolo", suffix=".jpg")
    (tmp_path / "yolo" / "images" / "val" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, out, err = run(capsys, "eval", "--data", str(data_yaml), "--precision", "all", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["layout"] == "yolo" and report["images"] == 6
    assert [u["image"] for u in report["unreadable"]] == ["images/val/broken.jpg"]
    assert "cannot decode the image" in report["unreadable"][0]["reason"]
    assert set(report["precisions"]) == {"fp32", "int8"} and "agreement_f1" in report
    assert report["precisions"]["fp32"]["map50"] > 0.7
    code, out, _ = run(capsys, "eval", "--data", str(tmp_path / "yolo"), "--precision", "fp32")
    assert code == 0
    assert "mAP50-95" in out and "AP50-95 circle" in out and "unreadable: images/val/broken.jpg" in out
    assert "agreement" not in out  # one precision: nothing to agree with


def test_eval_cli_bad_labels_are_one_line(tmp_path: Path, scenes: list, capsys: pytest.CaptureFixture[str]) -> None:
    annotations = write_coco(scenes[:3], tmp_path / "coco")
    code, _, err = run(capsys, "eval", "--data", str(tmp_path), "--annotations", str(annotations))
    assert code == 2 and err.startswith("trtserve: error: ") and err.count("\n") == 1
    assert "does not match the images" in err
    doc = json.loads(annotations.read_text())
    doc["images"][1]["width"] += 40  # the annotations were made for another size of this image
    annotations.write_text(json.dumps(doc))
    code, _, err = run(capsys, "eval", "--data", str(annotations.parent), "--annotations", str(annotations))
    assert code == 2 and "00001.png is" in err and "the annotations do not match the images" in err


def test_calibrate_eval_data_compares_on_the_users_labels(tmp_path: Path, layouts: dict[str, tuple[Path, Path | None]],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ENGINES / "shapes", repo / "shapes", ignore=shutil.ignore_patterns("*.int8*", "calibration*"))
    text = (repo / "shapes" / "model.yaml").read_text()
    (repo / "shapes" / "model.yaml").write_text(text.split("artifacts:")[0])
    frames = tmp_path / "calib"
    frames.mkdir()
    import cv2

    for i in range(16):
        cv2.imwrite(str(frames / f"{i:03d}.png"), render_scene(CALIBRATION_SEED, i).image_bgr)
    data_yaml, _ = layouts["yolo"]
    code, out, err = run(capsys, "calibrate", "shapes", "--images", str(frames), "--batch", "8", "--eval-data",
                         str(data_yaml), "--json", repo=repo)
    assert code == 0, err
    report = json.loads(out)
    on_data = report["evaluation_data"]
    assert on_data["images"] == SCENES and set(on_data["precisions"]) == {"fp32", "int8"}
    assert on_data["precisions"]["int8"]["map50"] > 0.7 and on_data["agreement_f1"] > 0.85
    # bad labels fail before any calibration is done
    code, _, err = run(capsys, "calibrate", "shapes", "--images", str(frames), "--eval-data", str(tmp_path),
                       repo=repo)
    assert code == 2 and "holds no data.yaml" in err
