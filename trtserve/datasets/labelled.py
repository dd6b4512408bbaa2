"""Users' labelled frames: the two layouts they bring, read into one form that ``trtserve eval --data`` scores.

- COCO JSON (:mod:`trtserve.datasets.coco`): an images folder and an ``instances.json``;
- Ultralytics / YOLO (:mod:`trtserve.datasets.yolo`): a ``data.yaml`` naming train/val image folders, with one
  ``labels/*.txt`` per image (``class cx cy w h``, normalized to the frame).

A dataset's class names are mapped *by name* onto the model's classes (:func:`map_classes`); a name the model does
not have is an error listing both. Labels are read and checked here, before any frame is decoded: every problem is
a :class:`~trtserve.errors.UsageError` of one line naming the file (and line) and what to do. Images are only
listed here; :mod:`trtserve.calibration.dataset_eval` decodes them, and a corrupt one is counted, not fatal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from trtserve.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # listed; JPEG and PNG decode
SIZE_TOLERANCE_PX = 1.0  # a COCO box may overhang its image by this much (rounding) before it is refused


@dataclass(frozen=True)
class LabelledImage:
    """One image and its labels, class ids already the model's.

    ``boxes`` are xyxy frame pixels (COCO) or, when ``normalized``, YOLO's cx, cy, w, h as fractions of the frame
    (its size is known only once decoded). ``size_wh`` is the size the annotations say the image has (COCO), checked
    against the decoded frame; None when they say nothing.
    """

    path: Path
    boxes: NDArray[np.float64]  # [N, 4]
    class_ids: NDArray[np.int64]  # [N], the model's class ids
    normalized: bool
    size_wh: tuple[int, int] | None = None
    crowd: NDArray[np.bool_] | None = None  # [N]; COCO iscrowd

    def boxes_xyxy(self, height_px: int, width_px: int) -> NDArray[np.float64]:
        """The boxes in pixels of the decoded frame (``height_px`` x ``width_px``)."""
        if not self.normalized:
            return self.boxes
        b = self.boxes * np.array([width_px, height_px, width_px, height_px], np.float64)
        half = b[:, 2:4] / 2
        return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)


@dataclass(frozen=True)
class LabelledDataset:
    """Images with labels, in a stable order (the annotations' order, or sorted paths)."""

    layout: str  # coco | yolo
    source: Path  # the annotations file or data.yaml
    images: tuple[LabelledImage, ...]
    class_names: tuple[str, ...]  # the dataset's own names, in its order
    # what the reader noticed and did not refuse, one line each naming the files and what to do (the evaluation
    # repeats them): images without a label file (scored as frames without objects), labels without an image, ...
    warnings: tuple[str, ...] = ()
    empty_label_files: int = 0  # YOLO: images whose label file is empty (a frame without objects, as meant)
    missing_label_files: int = 0  # YOLO: images with no label file at all (scored as frames without objects)

    @property
    def objects(self) -> int:
        return sum(len(i.class_ids) for i in self.images)

    def display_name(self, image: LabelledImage) -> str:
        """The image's path relative to the dataset (what reports print), else its full path."""
        for root in (self.source.parent, *self.source.parents):
            try:
                return str(image.path.relative_to(root))
            except ValueError:
                continue
        return str(image.path)


MAX_NAMED = 3  # a warning names this many example files


def examples(names: Sequence[str]) -> str:
    """``a, b, c and 4 more``: the first :data:`MAX_NAMED` names of a list a warning is about."""
    shown = ", ".join(names[:MAX_NAMED])
    return shown + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


def map_classes(dataset_names: Mapping[int, str], model_names: Sequence[str], where: Path) -> dict[int, int]:
    """Dataset class id -> the model's class id of the same name; UsageError listing both when a name is missing."""
    index = {n: i for i, n in enumerate(model_names)}
    unknown = [n for n in dataset_names.values() if n not in index]
    if unknown:
        raise UsageError(f"{where}: class names {unknown} are not the model's; the dataset has "
                         f"{list(dataset_names.values())}, the model has {list(model_names)}; rename them in one of "
                         "the two (classes: in model.yaml) so that they match by name")
    return {k: index[n] for k, n in dataset_names.items()}


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def open_dataset(data: Path, annotations: Path | None, model_names: Sequence[str], split: str = "val"
                 ) -> LabelledDataset:
    """The dataset ``trtserve eval --data DATA [--annotations FILE]`` names.

    With ``annotations``: COCO JSON, ``data`` the folder its ``file_name`` entries are relative to. Without: ``data``
    is a YOLO ``data.yaml`` or a folder holding one, ``split`` the key of its images (``val`` by default).
    """
    if annotations is not None:
        from trtserve.datasets.coco import read_coco

        return read_coco(data, annotations, model_names)
    from trtserve.datasets.yolo import find_data_yaml, read_yolo

    if data.is_dir() and find_data_yaml(data) is None and data.joinpath("annotations.json").is_file():
        from trtserve.datasets.coco import read_coco

        return read_coco(data, data / "annotations.json", model_names)
    return read_yolo(data, model_names, split)
