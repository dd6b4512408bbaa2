"""COCO JSON detection labels (``instances.json``: images, annotations with ``bbox`` = x, y, w, h in pixels,
categories by id and name) read into a :class:`~trtserve.datasets.labelled.LabelledDataset`.

Checked before any frame is decoded: the file is JSON with the three lists; every image it lists exists under the
images folder; every annotation names a listed image and category, has a box of four finite numbers with w, h >= 0
that lies inside the size its image is said to have. Each failure is one line naming the file and what to do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtserve.datasets.labelled import (
    SIZE_TOLERANCE_PX,
    LabelledDataset,
    LabelledImage,
    examples,
    list_images,
    map_classes,
)
from trtserve.errors import UsageError


def read_coco(images_dir: Path, annotations: Path, model_names: Sequence[str]) -> LabelledDataset:
    """Read ``annotations`` (COCO JSON) for the images under ``images_dir``; see the module for what is checked."""
    try:
        doc = json.loads(annotations.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the annotations {annotations}: {exc.strerror or exc}; check --annotations"
                         ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{annotations} is not JSON ({exc}); --annotations takes a COCO instances JSON") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations",
                                                                                    "categories")):
        raise UsageError(f"{annotations}: a COCO instances file needs the lists 'images', 'annotations' and "
                         "'categories'; is this a COCO detection file?")
    if not images_dir.is_dir():
        raise UsageError(f"--data {images_dir} is not a folder; with --annotations, --data is the folder of the "
                         "images the annotations list")
    categories: dict[int, str] = {}
    for c in doc["categories"]:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise UsageError(f"{annotations}: category {c!r} needs an integer 'id' and a 'name'")
        categories[c["id"]] = c["name"].strip()
    to_model = map_classes(categories, model_names, annotations)

    entries: dict[int, dict[str, Any]] = {}
    missing: list[str] = []
    for im in doc["images"]:
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise UsageError(f"{annotations}: image entry {str(im)[:80]} needs an integer 'id' and a 'file_name'")
        if im["id"] in entries:
            raise UsageError(f"{annotations}: image id {im['id']} is listed twice; image ids must be unique")
        path = images_dir / im["file_name"]
        if not path.is_file():
            missing.append(im["file_name"])
        w, h = im.get("width"), im.get("height")
        size = (int(w), int(h)) if isinstance(w, (int, float)) and isinstance(h, (int, float)) else None
        entries[im["id"]] = {"path": path, "size": size, "boxes": [], "classes": [], "crowd": []}
    if missing:
        raise UsageError(f"{annotations} does not match the images in {images_dir}: {len(missing)} of the "
                         f"{len(entries)} images it lists are not there (e.g. {missing[0]}); pass --data the folder "
                         "its file_name entries are relative to")

    for n, a in enumerate(doc["annotations"]):
        where = f"{annotations}: annotation {a.get('id', n) if isinstance(a, dict) else n}"
        if not isinstance(a, dict):
            raise UsageError(f"{where} is not an object")
        entry = entries.get(a.get("image_id"))  # type: ignore[arg-type]
        if entry is None:
            raise UsageError(f"{where} is for image_id {a.get('image_id')!r}, which 'images' does not list; the "
                             "annotations do not match their own images list")
        if a.get("category_id") not in categories:
            raise UsageError(f"{where} has category_id {a.get('category_id')!r}, which 'categories' does not list "
                             f"(ids {sorted(categories)})")
        box = a.get("bbox")
        if (not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box)
                or not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0):
            raise UsageError(f"{where} has bbox {box!r}; expected [x, y, width, height] in pixels, width and "
                             "height >= 0")
        x, y, w, h = (float(v) for v in box)
        size = entry["size"]
        if size is not None and (x < -SIZE_TOLERANCE_PX or y < -SIZE_TOLERANCE_PX
                                 or x + w > size[0] + SIZE_TOLERANCE_PX or y + h > size[1] + SIZE_TOLERANCE_PX):
            raise UsageError(f"{where} has bbox {box} outside its {size[0]}x{size[1]} image "
                             f"{entry['path'].name}; the annotations do not match the images (boxes must be "
                             "x, y, width, height in pixels of that image)")
        entry["boxes"].append([x, y, x + w, y + h])
        entry["classes"].append(to_model[a["category_id"]])
        entry["crowd"].append(bool(a.get("iscrowd", 0)))

    images = tuple(LabelledImage(e["path"], np.array(e["boxes"], np.float64).reshape(-1, 4),
                                 np.array(e["classes"], np.int64), normalized=False, size_wh=e["size"],
                                 crowd=np.array(e["crowd"], bool)) for e in entries.values())
    if not images:
        raise UsageError(f"{annotations} lists no images; nothing to evaluate")
    listed = {e["path"].resolve() for e in entries.values()}
    unlisted = [str(p.relative_to(images_dir)) for p in list_images(images_dir) if p.resolve() not in listed]
    warnings: tuple[str, ...] = ()
    if unlisted:
        warnings = (f"{len(unlisted)} images in {images_dir} are not in {annotations.name} and are not scored (e.g. "
                    f"{examples(unlisted)}); is --annotations the file made for this folder?",)
    return LabelledDataset("coco", annotations, images, tuple(categories.values()), warnings)
