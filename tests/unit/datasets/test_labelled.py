"""Users' labelled datasets (COCO JSON, YOLO data.yaml) read and checked, and scored with the project's COCO mAP:
ground truth given back as predictions scores mAP 1.0 in both layouts."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from trtserve.calibration.dataset_eval import score, truth_of
from trtserve.datasets.labelled import LabelledDataset, open_dataset
from trtserve.datasets.synthetic import CLASS_NAMES, evaluation_set, write_coco
from trtserve.datasets.yolo import label_path, write_yolo
from trtserve.errors import UsageError

SCENES = 8


@pytest.fixture(scope="module")
def scenes() -> list:
    return list(evaluation_set(SCENES))


@pytest.fixture()
def coco(tmp_path: Path, scenes: list) -> Path:
    return write_coco(scenes, tmp_path / "coco")


@pytest.fixture()
def yolo(tmp_path: Path, scenes: list) -> Path:
    return write_yolo(scenes, tmp_path / "yolo", suffix=".jpg")


def perfect_score(dataset: LabelledDataset) -> tuple[float, float, list]:
    truths, preds = [], []
    for image in dataset.images:
        h, w = cv2.imread(str(image.path)).shape[:2]
        t = truth_of(image, h, w)
        truths.append(t)
        preds.append((t.boxes_xyxy, np.ones(len(t.class_ids)), t.class_ids))
    s = score(dataset, truths, preds, CLASS_NAMES)
    return s.map50, s.map50_95, list(s.classes)


def test_ground_truth_as_predictions_scores_one_in_both_layouts(coco: Path, yolo: Path, scenes: list) -> None:
    for dataset in (open_dataset(coco.parent, coco, CLASS_NAMES), open_dataset(yolo, None, CLASS_NAMES)):
        assert len(dataset.images) == SCENES
        assert dataset.objects == sum(len(s.class_ids) for s in scenes)
        map50, map50_95, classes = perfect_score(dataset)
        assert map50 == 1.0 and map50_95 == 1.0
        assert [c.name for c in classes] == list(CLASS_NAMES)
        assert all(c.ap50_95 == 1.0 for c in classes if c.objects)


def test_yolo_boxes_are_the_scenes_boxes(yolo: Path, scenes: list) -> None:
    dataset = open_dataset(yolo.parent, None, CLASS_NAMES)  # the folder holding data.yaml
    for image, scene in zip(dataset.images, scenes):
        h, w = scene.image_bgr.shape[:2]
        np.testing.assert_allclose(image.boxes_xyxy(h, w), scene.boxes_xyxy, atol=1e-3 * max(h, w))
        np.testing.assert_array_equal(image.class_ids, scene.class_ids)


def test_classes_map_by_name_onto_the_models_order(coco: Path) -> None:
    doc = json.loads(coco.read_text())
    # the dataset numbers its classes differently (ids 10.., reversed order) and has only some of them
    doc["categories"] = [{"id": 10 + i, "name": c["name"]} for i, c in enumerate(reversed(doc["categories"]))]
    remap = {5 - i: 10 + i for i in range(6)}
    for a in doc["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    coco.write_text(json.dumps(doc))
    dataset = open_dataset(coco.parent, coco, CLASS_NAMES)
    assert dataset.class_names == tuple(reversed(CLASS_NAMES))
    assert perfect_score(dataset)[:2] == (1.0, 1.0)


def test_unknown_class_names_list_both(coco: Path, yolo: Path) -> None:
    doc = yaml.safe_load(yolo.read_text())
    doc["names"][1] = "box"
    yolo.write_text(yaml.safe_dump(doc))
    with pytest.raises(UsageError, match=r"data.yaml: class names \['box'\] are not the model's; the dataset has "
                                         r"\['circle', 'box'.*the model has \['circle', 'square'"):
        open_dataset(yolo, None, CLASS_NAMES)
    with pytest.raises(UsageError, match="class names"):
        open_dataset(coco.parent, coco, ("person", "car"))


def test_empty_and_missing_label_files_are_images_without_objects(yolo: Path) -> None:
    first = label_path(yolo.parent / "images" / "val" / "00000.jpg")
    first.write_text("")
    label_path(yolo.parent / "images" / "val" / "00001.jpg").unlink()
    dataset = open_dataset(yolo, None, CLASS_NAMES)
    assert len(dataset.images[0].class_ids) == 0 and len(dataset.images[1].class_ids) == 0
    assert len(dataset.images) == SCENES


def test_yolo_label_problems_name_the_file_and_line(yolo: Path) -> None:
    label = label_path(yolo.parent / "images" / "val" / "00002.jpg")
    good = label.read_text()
    for bad, message in [("9 0.5 0.5 0.1 0.1", r"00002.txt:2: class 9, but data.yaml names 6 classes"),
                         ("1 120 80 30 30", r"00002.txt:2: box .* is not inside 0..1; .*divide pixel values"),
                         ("1 0.5 0.5", r"00002.txt:2: 3 values; expected 'class cx cy w h'"),
                         ("cat 0.5 0.5 0.1 0.1", r"00002.txt:2: 'cat 0.5 0.5 0.1 0.1' is not 'class cx cy w h'")]:
        label.write_text(good.splitlines()[0] + "\n" + bad + "\n")
        with pytest.raises(UsageError, match=message):
            open_dataset(yolo, None, CLASS_NAMES)


def test_yolo_segmentation_lines_count_as_their_box(yolo: Path) -> None:
    label = label_path(yolo.parent / "images" / "val" / "00000.jpg")
    label.write_text("3 0.1 0.2 0.3 0.2 0.2 0.6\n")
    image = open_dataset(yolo, None, CLASS_NAMES).images[0]
    np.testing.assert_allclose(image.boxes_xyxy(100, 100), [[10, 20, 30, 60]])


def test_yolo_without_any_label_file_is_refused(yolo: Path) -> None:
    for p in (yolo.parent / "labels" / "val").iterdir():
        p.unlink()
    with pytest.raises(UsageError, match=r"none of the 8 'val' images has a label file \(e.g. .*labels/val/"):
        open_dataset(yolo, None, CLASS_NAMES)


def test_missing_split_says_which_exist(yolo: Path) -> None:
    with pytest.raises(UsageError, match=r"has no 'test' images \(it has \['val'\]\); pass --split val"):
        open_dataset(yolo, None, CLASS_NAMES, split="test")


def test_coco_that_does_not_match_the_images_is_refused(coco: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"does not match the images in .*: 8 of the 8 images it lists are not there "
                                         r"\(e.g. 00000.png\); pass --data the folder"):
        open_dataset(tmp_path, coco, CLASS_NAMES)
    doc = json.loads(coco.read_text())
    doc["annotations"][0]["bbox"] = [300.0, 200.0, 400.0, 300.0]
    coco.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=r"annotation 1 has bbox .* outside its \d+x\d+ image 00000.png; the "
                                         "annotations do not match the images"):
        open_dataset(coco.parent, coco, CLASS_NAMES)
    doc["annotations"][0]["image_id"] = 99
    coco.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="is for image_id 99, which 'images' does not list"):
        open_dataset(coco.parent, coco, CLASS_NAMES)


def test_coco_file_that_is_not_coco(coco: Path) -> None:
    coco.write_text("{not json")
    with pytest.raises(UsageError, match="is not JSON"):
        open_dataset(coco.parent, coco, CLASS_NAMES)
    coco.write_text(json.dumps({"images": []}))
    with pytest.raises(UsageError, match="needs the lists 'images', 'annotations' and 'categories'"):
        open_dataset(coco.parent, coco, CLASS_NAMES)


def test_a_folder_without_data_yaml(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"holds no data\.yaml"):
        open_dataset(tmp_path, None, CLASS_NAMES)
