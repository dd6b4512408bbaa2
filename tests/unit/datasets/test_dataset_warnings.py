"""Bad input in users' datasets that is reported, not refused: an empty YOLO label file (a frame without objects)
told apart from a missing one (scored the same way, but named in a warning), label files that belong to no image,
images a COCO file does not list; the evaluation carries each warning and the counts."""

import json
import shutil
from pathlib import Path

import cv2
import pytest
import yaml

from trtserve.datasets.labelled import open_dataset
from trtserve.datasets.synthetic import CLASS_NAMES, evaluation_set, write_coco
from trtserve.datasets.yolo import label_path, write_yolo


@pytest.fixture(scope="module")
def scenes() -> list:
    return list(evaluation_set(6))


def test_empty_and_missing_label_files_are_told_apart(tmp_path: Path, scenes: list) -> None:
    data = write_yolo(scenes, tmp_path / "yolo", suffix=".jpg")
    images = tmp_path / "yolo" / "images" / "val"
    label_path(images / "00000.jpg").write_text("")
    label_path(images / "00001.jpg").write_text("\n  \n")  # blank lines: still empty
    label_path(images / "00002.jpg").unlink()
    dataset = open_dataset(data, None, CLASS_NAMES)
    assert dataset.empty_label_files == 2 and dataset.missing_label_files == 1
    assert [len(i.class_ids) for i in dataset.images][:3] == [0, 0, 0]
    (warning,) = dataset.warnings
    assert warning.startswith("1 of the 6 'val' images have no label file and are scored as frames without objects")
    assert "labels/val/00002.txt" in warning and "write an empty .txt" in warning


def test_labels_without_their_image_are_named(tmp_path: Path, scenes: list) -> None:
    data = write_yolo(scenes, tmp_path / "yolo", suffix=".jpg")
    labels = tmp_path / "yolo" / "labels" / "val"
    for k in range(5):
        shutil.copy(labels / "00000.txt", labels / f"renamed_{k}.txt")
    (warning,) = open_dataset(data, None, CLASS_NAMES).warnings
    assert warning.startswith("5 label files beside the 'val' images belong to no image of it")
    assert "renamed_0.txt, " in warning and "and 2 more" in warning and "renamed, moved" in warning


def test_a_labels_folder_shared_by_split_lists_is_not_a_mismatch(tmp_path: Path, scenes: list) -> None:
    root = tmp_path / "flat"
    write_yolo(scenes, root, suffix=".png")
    images = sorted((root / "images" / "val").iterdir())
    (root / "val.txt").write_text("".join(f"images/val/{p.name}\n" for p in images[:3]))
    (root / "train.txt").write_text("".join(f"images/val/{p.name}\n" for p in images[3:]))
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "train.txt", "val": "val.txt",
                                                    "names": list(CLASS_NAMES)}))
    dataset = open_dataset(root / "data.yaml", None, CLASS_NAMES)
    assert len(dataset.images) == 3 and dataset.warnings == ()


def test_images_the_coco_file_does_not_list(tmp_path: Path, scenes: list) -> None:
    annotations = write_coco(scenes, tmp_path / "coco")
    folder = annotations.parent
    listed = json.loads(annotations.read_text())["images"]
    cv2.imwrite(str(folder / "extra.png"), scenes[0].image_bgr)
    (warning,) = open_dataset(folder, annotations, CLASS_NAMES).warnings
    assert warning.startswith(f"1 images in {folder} are not in {annotations.name} and are not scored (e.g. extra.png)")
    assert len(listed) == 6
