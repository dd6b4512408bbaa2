"""The Ultralytics / YOLO dataset layout read into a :class:`~trtserve.datasets.labelled.LabelledDataset`, and
written from synthetic scenes (:func:`write_yolo`, for tests and for ``trtserve scenes --layout yolo``).

``data.yaml`` names the root (``path``, default: the yaml's folder), the image sources of each split (``train``,
``val``, ``test``: a folder, a ``.txt`` list of image paths, or a list of them, relative to the root) and the class
``names`` (a list, or a mapping id -> name). Each image ``.../images/.../x.jpg`` has its labels in
``.../labels/.../x.txt``: one object per line, ``class cx cy w h`` normalized to 0..1 (a segmentation line,
``class x1 y1 x2 y2 ...``, counts as its polygon's box). An empty label file is an image without objects (how
YOLO writes a background frame). A missing one is scored the same way, as Ultralytics does, but it is counted and
reported apart (:attr:`LabelledDataset.warnings`, naming the files): it is as often a label left behind as a
background frame. A split where no image has a label file is refused (the labels are elsewhere), and label files
beside the images that belong to no image of the split are reported (their images were renamed or moved).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trtserve.datasets.labelled import (
    IMAGE_SUFFIXES,
    LabelledDataset,
    LabelledImage,
    examples,
    list_images,
    map_classes,
)
from trtserve.errors import UsageError

COORDINATE_TOLERANCE = 1e-3  # labels may overshoot 0..1 by rounding


def find_data_yaml(folder: Path) -> Path | None:
    """``folder/data.yaml`` (or ``.yml``), else the only ``*.yaml`` in ``folder``; None if there is none."""
    for name in ("data.yaml", "data.yml"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    return found[0] if len(found) == 1 else None


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the suffix ``.txt``."""
    s = str(image)
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if a in s:
        head, tail = s.rsplit(a, 1)
        s = head + b + tail
    return Path(s).with_suffix(".txt")


def _names(doc: dict[str, Any], source: Path) -> dict[int, str]:
    names = doc.get("names")
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return {i: n.strip() for i, n in enumerate(names)}
    if isinstance(names, dict) and all(isinstance(k, int) and isinstance(v, str) for k, v in names.items()):
        return {k: v.strip() for k, v in sorted(names.items())}
    raise UsageError(f"{source}: key 'names' is {names!r}; expected the class names as a list or a mapping "
                     "{0: name, ...}")


def _images_of(entry: Any, root: Path, source: Path, split: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for e in entries:
        if not isinstance(e, str):
            raise UsageError(f"{source}: key {split!r} has {e!r}; expected a folder or a .txt list of images")
        p = Path(e) if Path(e).is_absolute() else root / e
        if p.is_dir():
            images += list_images(p)
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    q = Path(line.strip())
                    images.append(q if q.is_absolute() else root / q)
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            raise UsageError(f"{source}: {split}: {e} is not a folder, image list or image under {root}; fix "
                             f"'{split}' (or 'path', the root it is relative to)")
    return images


def _labels(path: Path, names: dict[int, str], to_model: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(cxcywh [N, 4], model class ids [N]) of one label file; UsageError naming file:line on a bad line."""
    boxes: list[list[float]] = []
    classes: list[int] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{n}"
        try:
            cls = int(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise UsageError(f"{where}: {line.strip()!r} is not 'class cx cy w h' (an integer class, then numbers)"
                             ) from None
        if cls not in names:
            raise UsageError(f"{where}: class {cls}, but data.yaml names {len(names)} classes "
                             f"({min(names)}..{max(names)}); fix the label or data.yaml's names")
        if len(values) == 4:
            cx, cy, w, h = values
            lo, hi = [cx - w / 2, cy - h / 2], [cx + w / 2, cy + h / 2]
        elif len(values) >= 6 and len(values) % 2 == 0:  # a segmentation polygon: its box
            xy = np.array(values).reshape(-1, 2)
            lo, hi = xy.min(axis=0).tolist(), xy.max(axis=0).tolist()
            cx, cy, w, h = (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[0] - lo[0], hi[1] - lo[1]
        else:
            raise UsageError(f"{where}: {len(fields)} values; expected 'class cx cy w h' (5) or a segmentation "
                             "polygon 'class x1 y1 x2 y2 x3 y3 ...'")
        t = COORDINATE_TOLERANCE
        if w < 0 or h < 0 or min(lo) < -t or max(hi) > 1 + t:
            raise UsageError(f"{where}: box {values[:4]} is not inside 0..1; YOLO labels are cx cy w h normalized "
                             "by the image's width and height (divide pixel values by them)")
        boxes.append([cx, cy, w, h])
        classes.append(to_model[cls])
    return np.array(boxes, np.float64).reshape(-1, 4), np.array(classes, np.int64)


def read_yolo(data: Path, model_names: Sequence[str], split: str = "val") -> LabelledDataset:
    """Read the ``split`` images of a YOLO dataset; ``data`` is its ``data.yaml`` or the folder holding it."""
    source = data
    if data.is_dir():
        found = find_data_yaml(data)
        if found is None:
            raise UsageError(f"--data {data} holds no data.yaml; give the YOLO data.yaml, or a COCO images folder "
                             "with --annotations instances.json")
        source = found
    try:
        doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}; check --data") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{source} is not YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{source}: expected a mapping with 'names' and '{split}' (an Ultralytics data.yaml)")
    names = _names(doc, source)
    to_model = map_classes(names, model_names, source)
    if doc.get(split) in (None, "", []):
        splits = [k for k in ("train", "val", "test") if doc.get(k)]
        raise UsageError(f"{source} has no {split!r} images (it has {splits or 'none'}); pass --split "
                         f"{splits[0] if splits else 'val'} or add '{split}:' to it")
    base = Path(str(doc.get("path") or "."))
    root = base if base.is_absolute() else source.parent / base
    if not root.is_dir() and Path.cwd().joinpath(base).is_dir():
        root = Path.cwd() / base
    paths = _images_of(doc[split], root, source, split)
    if not paths:
        raise UsageError(f"{source}: the {split!r} images ({doc[split]}) are none; check 'path' and '{split}'")
    images: list[LabelledImage] = []
    missing: list[Path] = []
    empty = 0
    used: set[Path] = set()
    for p in paths:
        lp = label_path(p)
        if lp.is_file():
            used.add(lp.resolve())
            boxes, classes = _labels(lp, names, to_model)
            empty += len(classes) == 0
        else:  # Ultralytics: an image without a label file is a background image
            missing.append(p)
            boxes, classes = np.zeros((0, 4)), np.zeros(0, np.int64)
        images.append(LabelledImage(p, boxes, classes, normalized=True))
    if len(missing) == len(paths):
        raise UsageError(f"{source}: none of the {len(paths)} {split!r} images has a label file (e.g. "
                         f"{label_path(paths[0])} for {paths[0].name}); YOLO labels go in a 'labels' folder beside "
                         "'images', one .txt per image")
    warnings = []
    if missing:
        warnings.append(f"{len(missing)} of the {len(paths)} {split!r} images have no label file and are scored as "
                        f"frames without objects (e.g. {examples([str(label_path(p)) for p in missing])}); write an "
                        "empty .txt for a frame that has none, or put the missing labels there")
    orphans = _orphan_labels(paths, used)
    if orphans:
        warnings.append(f"{len(orphans)} label files beside the {split!r} images belong to no image of it (e.g. "
                        f"{examples([str(o) for o in orphans])}); was the image renamed, moved or not in {split!r}?")
    return LabelledDataset("yolo", source, tuple(images), tuple(names.values()), tuple(warnings), empty,
                           len(missing))


def image_folder(labels: Path) -> Path:
    """The images folder whose labels ``labels`` holds: :func:`label_path`'s rule backwards (the last ``labels``
    component of the path becomes ``images``)."""
    parts = list(labels.parts)
    if "labels" in parts:
        parts[len(parts) - 1 - parts[::-1].index("labels")] = "images"
    return Path(*parts)


def _orphan_labels(images: Sequence[Path], used: set[Path]) -> list[Path]:
    """``.txt`` files in the label folders of ``images`` that no image has (in any image format), sorted. A label of
    an image of another split (a folder shared by the splits' lists) is not one of them: its image is there."""
    folders = {label_path(p).parent for p in images}
    orphans = []
    for d in sorted(folders):
        if not d.is_dir():
            continue
        pictures = image_folder(d)
        stems = ({p.stem for p in pictures.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES} if pictures.is_dir()
                 else set())
        orphans += [f for f in sorted(d.glob("*.txt")) if f.resolve() not in used and f.stem not in stems]
    return orphans


def write_yolo(scenes: Sequence[Any], directory: Path, split: str = "val", suffix: str = ".png",
               jpeg_quality: int = 90) -> Path:
    """Write :class:`~trtserve.datasets.synthetic.Scene` s as a YOLO dataset (``images/SPLIT``, ``labels/SPLIT``,
    ``data.yaml``) with the synthetic class names; returns the data.yaml path. Labels have 6 decimals."""
    import cv2

    from trtserve.datasets.synthetic import CLASS_NAMES

    image_dir, label_dir = directory / "images" / split, directory / "labels" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if suffix in (".jpg", ".jpeg") else []
    for i, scene in enumerate(scenes):
        h, w = scene.image_bgr.shape[:2]
        cv2.imwrite(str(image_dir / f"{i:05d}{suffix}"), scene.image_bgr, params)
        lines = []
        for (x0, y0, x1, y1), c in zip(scene.boxes_xyxy.tolist(), scene.class_ids.tolist()):
            lines.append(f"{int(c)} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} "
                         f"{(y1 - y0) / h:.6f}")
        (label_dir / f"{i:05d}.txt").write_text("".join(f"{line}\n" for line in lines))
    path = directory / "data.yaml"
    path.write_text(yaml.safe_dump({"path": ".", split: f"images/{split}", "names": list(CLASS_NAMES)},
                                   sort_keys=False))
    return path
