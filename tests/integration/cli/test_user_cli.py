"""The CLI as Ultralytics and Triton users reach for it: detect on folders, globs and videos into --out DIR with
--classes / --iou-threshold; models checked (broken ones marked, auto heads resolved); --repository after the
subcommand; stream refusing what is not a video; one --server name."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from trtserve.cli import main
from trtserve.datasets.synthetic import render_scene, write_video

from ...conftest import ENGINES


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    (root / "a").mkdir()
    (root / "b").mkdir()
    for i in range(3):
        cv2.imwrite(str(root / "a" / f"{i}.jpg"), render_scene(3, i).image_bgr)
    cv2.imwrite(str(root / "b" / "0.jpg"), render_scene(3, 7).image_bgr)  # same name as a/0.jpg
    write_video(root / "clip.mp4", num_frames=10)
    return root


def test_detect_folder_glob_and_video_into_out_dir(sources: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "detect", str(sources / "a"), str(sources / "b" / "*.jpg"),
                            str(sources / "clip.mp4"), "--out", str(out), "--json", "--repository", str(ENGINES))
    assert code == 0, err
    items = json.loads(stdout)
    assert [Path(i.get("image", i.get("video"))).name for i in items] == ["0.jpg", "1.jpg", "2.jpg", "0.jpg",
                                                                          "clip.mp4"]
    assert sorted(p.name for p in out.iterdir()) == ["0.jpg", "0_1.jpg", "1.jpg", "2.jpg", "clip.mp4"]
    video = items[-1]
    assert len(video["frames"]) == 10 and sum(video["detections_per_class"].values()) > 0
    capture = cv2.VideoCapture(video["annotated"])
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    capture.release()


def test_detect_classes_and_iou_threshold(sources: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(sources / "a" / "0.jpg")
    code, stdout, _ = run(capsys, "--repository", str(ENGINES), "detect", image, "--json")
    everything = json.loads(stdout)[0]["detections"]
    label = everything[0]["label"]
    code, stdout, _ = run(capsys, "--repository", str(ENGINES), "detect", image, "--classes", label, "--json")
    only = json.loads(stdout)[0]["detections"]
    assert code == 0 and only and {d["label"] for d in only} == {label}
    assert only == [d for d in everything if d["label"] == label]
    code, stdout, _ = run(capsys, "--repository", str(ENGINES), "detect", image, "--iou-threshold", "1.0",
                          "--score-threshold", "0.05", "--json")
    assert code == 0 and len(json.loads(stdout)[0]["detections"]) >= len(everything)
    code, _, err = run(capsys, "--repository", str(ENGINES), "detect", image, "--classes", "person")
    assert code == 2 and "'person' is not a class of this model; it has ['circle'" in err
    code, _, err = run(capsys, "--repository", str(ENGINES), "detect", str(sources / "nothing*.png"))
    assert code == 2 and "matches no file" in err


def test_models_marks_broken_models_and_shows_resolved_heads(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    ignore = shutil.ignore_patterns("*.int8*", "calibration*")
    for name in ("auto", "missing", "wrongsize"):
        shutil.copytree(ENGINES / "shapes", tmp_path / name, ignore=ignore)
        text = (tmp_path / name / "model.yaml").read_text().split("artifacts:")[0]
        (tmp_path / name / "model.yaml").write_text(text.replace("name: shapes", f"name: {name}"))
    model = onnx.load(str(tmp_path / "auto" / "model.onnx"))
    for dim in model.graph.output[0].type.tensor_type.shape.dim:
        dim.Clear()
        dim.dim_param = "d"
    onnx.save(model, str(tmp_path / "auto" / "model.onnx"))
    yaml_path = tmp_path / "auto" / "model.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("type: yolov8", "type: auto"))
    (tmp_path / "missing" / "model.onnx").unlink()
    yaml_path = tmp_path / "wrongsize" / "model.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("height_px: 256", "height_px: 320"))
    (tmp_path / "badyaml").mkdir()
    (tmp_path / "badyaml" / "model.yaml").write_text("name: badyaml\nhead: {type: yolov99}\n")
    code, stdout, _ = run(capsys, "models", "--repository", str(tmp_path), "--json")
    rows = {r["name"]: r for r in json.loads(stdout)}
    assert code == 2
    assert rows["auto"]["ok"] and rows["auto"]["head"] == "yolov8"
    assert not rows["missing"]["ok"] and "model.onnx is missing" in rows["missing"]["error"]
    assert not rows["wrongsize"]["ok"] and "fix input.height_px/width_px" in rows["wrongsize"]["error"]
    assert not rows["badyaml"]["ok"] and "missing required key 'onnx'" in rows["badyaml"]["error"]
    code, stdout, _ = run(capsys, "models", "--repository", str(tmp_path))
    lines = {line.split()[0]: line for line in stdout.splitlines()}
    assert "head=yolov8" in lines["auto"] and "BROKEN" not in lines["auto"]
    assert "BROKEN:" in lines["missing"] and "BROKEN:" in lines["badyaml"]


def test_stream_refuses_a_source_that_is_not_a_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "frame.txt"
    image.write_text("not a video at all")
    code, _, err = run(capsys, "stream", str(image), "--server", "127.0.0.1:1")
    assert code == 2 and err.startswith("trtserve: error: ") and "video" in err


def test_repository_after_the_subcommand_and_one_server_name() -> None:
    from trtserve.cli.parser import build_parser

    parser = build_parser()
    for argv in (["eval", "--repository", "X"], ["--repository", "X", "eval"], ["models", "--repository", "X"],
                 ["calibrate", "m", "--images", "i", "--repository", "X"],
                 ["build", "m", "--precision", "fp32", "--repository", "X"]):
        assert str(parser.parse_args(argv).repository) == "X", argv
    assert parser.parse_args(["eval"]).repository is None
    assert parser.parse_args(["health", "--server", "h:1"]).address == "h:1"
    assert parser.parse_args(["health", "--address", "h:2"]).address == "h:2"  # the old spelling
    assert np.all([parser.parse_args([c, *rest, "--server", "h:3"]).server == "h:3"
                   for c, rest in (("stream", ["0"]), ("models", []), ("bench", []))])
