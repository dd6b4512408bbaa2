"""Deterministic synthetic scenes: the bundled detector's training data, held-out set and demo video.

No pretrained detector weights can be downloaded on the project's machines, so the bundled model is
trained on scenes rendered here. Everything is a pure function of ``(seed, index)``: the same call
gives the same pixels and the same boxes on every machine with the same OpenCV and NumPy.

Scenes hold up to eight objects from :data:`CLASS_NAMES` with varied size, colour, fill, rotation and
partial occlusion (every object keeps at least :data:`MIN_VISIBLE_FRACTION` of its area visible) on
textured, cluttered, noisy backgrounds under varied lighting. Boxes are the exact extent of each
drawn shape, in original-frame pixels, xyxy.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.errors import UsageError

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
MIN_VISIBLE_FRACTION = 0.55
FRAME_SIZES_WH: tuple[tuple[int, int], ...] = (
    (320, 240),
    (384, 288),
    (256, 256),
    (320, 320),
    (416, 234),
    (240, 320),
    (480, 360),
)
TRAIN_SEED = 1
EVAL_SEED = 20261122  # disjoint from the training stream: a different root seed
CALIBRATION_SEED = 5  # calibration frames: neither training nor evaluation scenes
_SUBPIXEL_BITS = 4
_SUBPIXEL = float(1 << _SUBPIXEL_BITS)


@dataclass(frozen=True)
class Scene:
    """One rendered frame: BGR uint8 pixels and its ground truth in frame pixels."""

    image_bgr: NDArray[np.uint8]
    boxes_xyxy: NDArray[np.float32]  # [N, 4]
    class_ids: NDArray[np.int64]  # [N]


@dataclass(frozen=True)
class ShapeSpec:
    class_id: int
    center_xy: tuple[float, float]
    size_px: float  # diameter of the circumscribed circle
    angle_rad: float
    aspect: float  # height/width squash for squares, 1 for others
    color_bgr: tuple[float, float, float]
    fill: str  # solid | gradient | stripes


def _polygon(spec: ShapeSpec) -> NDArray[np.float64] | None:
    """Vertices (K, 2) of a polygonal shape, or None for circle and ring."""
    name = CLASS_NAMES[spec.class_id]
    r = spec.size_px / 2.0
    if name == "square":
        w, h = 1.0, spec.aspect
        norm = math.hypot(w, h)
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / norm * r
    elif name == "triangle":
        t = np.deg2rad(np.array([-90.0, 30.0, 150.0]))
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * r
    elif name == "star":
        t = np.deg2rad(np.arange(10) * 36.0 - 90.0)
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([np.cos(t) * radius, np.sin(t) * radius], axis=1)
    elif name == "cross":
        a, b = r / math.hypot(1.0, 0.36), 0.36 * r / math.hypot(1.0, 0.36)
        pts = np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b],
             [-a, b], [-a, -b], [-b, -b]]
        )
    else:
        return None
    c, s = math.cos(spec.angle_rad), math.sin(spec.angle_rad)
    rot = np.array([[c, -s], [s, c]])
    return pts @ rot.T + np.array(spec.center_xy)


def shape_box(spec: ShapeSpec) -> NDArray[np.float64]:
    """Exact xyxy extent of the shape (unclipped)."""
    poly = _polygon(spec)
    if poly is None:
        cx, cy = spec.center_xy
        r = spec.size_px / 2.0
        return np.array([cx - r, cy - r, cx + r, cy + r])
    return np.array([poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max()])


def shape_mask(spec: ShapeSpec, hw: tuple[int, int]) -> NDArray[np.float32]:
    """Anti-aliased coverage mask in [0, 1] of the shape on an ``hw`` canvas."""
    mask = np.zeros(hw, dtype=np.uint8)
    poly = _polygon(spec)
    if poly is not None:
        pts = np.round(poly * _SUBPIXEL).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)
    else:
        center = tuple(round(v * _SUBPIXEL) for v in spec.center_xy)
        radius = round(spec.size_px / 2.0 * _SUBPIXEL)
        cv2.circle(mask, center, radius, 255, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
        if CLASS_NAMES[spec.class_id] == "ring":
            cv2.circle(mask, center, int(radius * 0.55), 0, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
    return mask.astype(np.float32) / 255.0


def _background(rng: np.random.Generator, hw: tuple[int, int]) -> NDArray[np.float32]:
    h, w = hw
    kind = rng.integers(0, 4)
    base = rng.uniform(30, 220, size=3)
    if kind == 0:  # low-frequency colour noise
        grid = rng.uniform(-70, 70, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
        img = cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC) + base
    elif kind == 1:  # linear gradient between two colours
        other = rng.uniform(30, 220, size=3)
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
        ramp = t[None, :, None] if t.size == w else t[:, None, None]
        img = np.broadcast_to(base * (1 - ramp) + other * ramp, (h, w, 3)).astype(np.float32)
    elif kind == 2:  # stripes / checker texture
        period = float(rng.uniform(6, 30))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        theta = rng.uniform(0, math.pi)
        wave = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
        amp = rng.uniform(10, 45)
        img = base[None, None, :] + (wave * amp)[:, :, None]
    else:  # fine grain texture
        grain = rng.normal(0, rng.uniform(8, 25), size=(h // 2 + 1, w // 2 + 1, 3)).astype(np.float32)
        img = cv2.resize(grain, (w, h), interpolation=cv2.INTER_LINEAR)[:h, :w] + base
    img = np.ascontiguousarray(img, dtype=np.float32)
    for _ in range(int(rng.integers(0, 7))):  # clutter: lines and arcs that are not objects
        color = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.6:
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p1, p2, color, int(rng.integers(1, 3)), cv2.LINE_AA)
        else:
            axes = (int(rng.integers(8, 40)), int(rng.integers(8, 40)))
            cv2.ellipse(img, p1, axes, float(rng.uniform(0, 360)), 0, float(rng.uniform(60, 200)),
                        color, 1, cv2.LINE_AA)
    return img.astype(np.float32, copy=False)


def _random_color(rng: np.random.Generator, against: NDArray[np.float32]) -> tuple[float, float, float]:
    """A saturated-enough colour that stands apart from the mean background ``against`` (BGR)."""
    for _ in range(20):
        hsv = np.array([[[rng.uniform(0, 180), rng.uniform(80, 255), rng.uniform(70, 255)]]], np.uint8)
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        if float(np.abs(bgr - against).sum()) > 110.0:
            break
    return (float(bgr[0]), float(bgr[1]), float(bgr[2]))


def _paint(canvas: NDArray[np.float32], spec: ShapeSpec, mask: NDArray[np.float32],
           rng: np.random.Generator) -> None:
    color = np.array(spec.color_bgr, dtype=np.float32)
    x0, y0, x1, y1 = (int(v) for v in np.clip(shape_box(spec), 0, None))
    h, w = mask.shape
    x1, y1 = min(w, x1 + 2), min(h, y1 + 2)
    if x1 <= x0 or y1 <= y0:
        return
    region = canvas[y0:y1, x0:x1]
    m = mask[y0:y1, x0:x1, None]
    if spec.fill == "gradient":
        other = color * rng.uniform(0.45, 0.8)
        t = np.linspace(0, 1, x1 - x0, dtype=np.float32)[None, :, None]
        paint = color * (1 - t) + other * t
    elif spec.fill == "stripes":
        yy = np.arange(y0, y1, dtype=np.float32)[:, None, None]
        paint = color * (0.8 + 0.2 * np.sign(np.sin(yy * 2 * math.pi / rng.uniform(4, 9))))
        paint = np.broadcast_to(paint, region.shape)
    else:
        paint = color
    region[...] = region * (1 - m) + paint * m


def _lighting(rng: np.random.Generator, img: NDArray[np.float32]) -> NDArray[np.uint8]:
    h, w = img.shape[:2]
    gain = rng.uniform(0.6, 1.35)
    ramp_strength = rng.uniform(0.0, 0.35)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = 1 + ramp_strength * ((xx / w - 0.5) * math.cos(theta) + (yy / h - 0.5) * math.sin(theta))
    img = img * (gain * ramp)[:, :, None] + rng.uniform(-25, 25)
    img = np.clip(img, 0, 255)
    gamma = rng.uniform(0.7, 1.4)
    img = 255.0 * (img / 255.0) ** gamma
    if rng.random() < 0.3:
        img = np.asarray(cv2.GaussianBlur(img, (3, 3), 0), np.float32)
    img = img + rng.normal(0, rng.uniform(0, 10), size=img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(45, 95))])
        if ok:
            out = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), np.uint8)
    return out


def _random_spec(rng: np.random.Generator, hw: tuple[int, int], background: NDArray[np.float32]
                 ) -> ShapeSpec:
    h, w = hw
    max_size = min(h, w) * 0.42
    size = float(math.exp(rng.uniform(math.log(14.0), math.log(max_size))))
    r = size / 2
    cx, cy = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
    cls = int(rng.integers(0, len(CLASS_NAMES)))
    local = background[int(cy), int(cx)]
    fill = str(rng.choice(["solid", "solid", "solid", "gradient", "stripes"]))
    return ShapeSpec(cls, (cx, cy), size, float(rng.uniform(0, 2 * math.pi)),
                     float(rng.uniform(0.55, 1.0)), _random_color(rng, local), fill)


def render_scene(seed: int, index: int, frame_wh: tuple[int, int] | None = None) -> Scene:
    """Render scene ``index`` of the stream ``seed``; ``frame_wh`` overrides the random frame size."""
    rng = np.random.default_rng([seed, index])
    w, h = frame_wh if frame_wh is not None else FRAME_SIZES_WH[int(rng.integers(0, len(FRAME_SIZES_WH)))]
    canvas = _background(rng, (h, w))
    wanted = int(rng.integers(1, 9))
    specs: list[ShapeSpec] = []
    masks: list[NDArray[np.float32]] = []
    visible: list[NDArray[np.float32]] = []
    for _ in range(wanted * 4):
        if len(specs) == wanted:
            break
        spec = _random_spec(rng, (h, w), canvas)
        mask = shape_mask(spec, (h, w))
        area = float(mask.sum())
        if area < 30:
            continue
        # Later shapes cover earlier ones: refuse a placement that would hide too much of one.
        if any(float((v * (1 - mask)).sum()) < MIN_VISIBLE_FRACTION * float(m.sum())
               for v, m in zip(visible, masks)):
            continue
        visible = [v * (1 - mask) for v in visible]
        specs.append(spec)
        masks.append(mask)
        visible.append(mask.copy())
    for spec, mask in zip(specs, masks):
        _paint(canvas, spec, mask, rng)
    image = _lighting(rng, canvas)
    boxes = np.array([shape_box(s) for s in specs], dtype=np.float64).reshape(-1, 4)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
    return Scene(image, boxes.astype(np.float32), np.array([s.class_id for s in specs], np.int64))


def evaluation_set(num_images: int = 300, seed: int = EVAL_SEED) -> Iterator[Scene]:
    """The held-out evaluation scenes (a root seed never used for training)."""
    for i in range(num_images):
        yield render_scene(seed, i)


def write_coco(scenes: list[Scene], directory: Path) -> Path:
    """Write scenes as PNG files plus a COCO ``annotations.json``; returns the JSON path."""
    directory.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for i, scene in enumerate(scenes):
        name = f"{i:05d}.png"
        cv2.imwrite(str(directory / name), scene.image_bgr)
        h, w = scene.image_bgr.shape[:2]
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        for box, cls in zip(scene.boxes_xyxy.tolist(), scene.class_ids.tolist()):
            x0, y0, x1, y1 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(cls),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    categories = [{"id": i, "name": n} for i, n in enumerate(CLASS_NAMES)]
    path = directory / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@dataclass
class _Track:
    spec: ShapeSpec
    velocity_xy: tuple[float, float]
    spin_rad_per_frame: float
    first_frame: int
    last_frame: int


def video_frames(num_frames: int = 300, frame_wh: tuple[int, int] = (480, 360), seed: int = 7
                 ) -> Iterator[Scene]:
    """Frames of the demo video: objects that move, spin, appear, leave and cross each other."""
    rng = np.random.default_rng([seed, 0])
    w, h = frame_wh
    background = _background(rng, (h, w))
    tracks: list[_Track] = []
    for _ in range(14):
        spec = _random_spec(rng, (h, w), background)
        start = int(rng.integers(0, max(1, num_frames - 60)))
        speed = rng.uniform(0.8, 3.5)
        heading = rng.uniform(0, 2 * math.pi)
        tracks.append(_Track(spec, (speed * math.cos(heading), speed * math.sin(heading)),
                             float(rng.uniform(-0.05, 0.05)), start,
                             min(num_frames, start + int(rng.integers(60, 240)))))
    for t in range(num_frames):
        frame_rng = np.random.default_rng([seed, t + 1])
        canvas = background.copy()
        boxes, classes = [], []
        for tr in tracks:
            if not tr.first_frame <= t < tr.last_frame:
                continue
            dt = t - tr.first_frame
            s = tr.spec
            spec = ShapeSpec(s.class_id, (s.center_xy[0] + tr.velocity_xy[0] * dt,
                                          s.center_xy[1] + tr.velocity_xy[1] * dt),
                             s.size_px, s.angle_rad + tr.spin_rad_per_frame * dt, s.aspect,
                             s.color_bgr, s.fill)
            box = shape_box(spec)
            clipped = np.clip(box, 0, [w, h, w, h])
            if (clipped[2] - clipped[0]) < 4 or (clipped[3] - clipped[1]) < 4:
                continue
            _paint(canvas, spec, shape_mask(spec, (h, w)), frame_rng)
            boxes.append(clipped)
            classes.append(s.class_id)
        noisy = canvas + frame_rng.normal(0, 3.0, size=canvas.shape).astype(np.float32)
        yield Scene(np.clip(noisy, 0, 255).astype(np.uint8),
                    np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64))


def write_video(path: Path, num_frames: int = 300, fps: float = 15.0) -> Path:
    """Write the demo video (mp4v) to ``path`` and return it; deterministic content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = video_frames(num_frames)
    first = next(frames)
    h, w = first.image_bgr.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise UsageError(f"cannot write the sample video {path}: OpenCV could not open an mp4v writer there; check "
                         "the folder is writable (or pass --video FILE)")
    try:
        writer.write(first.image_bgr)
        for scene in frames:
            writer.write(scene.image_bgr)
    finally:
        writer.release()
    logger.info("wrote sample video %s (%d frames, %dx%d)", path, num_frames, w, h)
    return path
