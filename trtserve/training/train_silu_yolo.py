"""Train a small SiLU detector in the Ultralytics YOLOv8 layout on synthetic scenes, and export it like Ultralytics.

The calibration test model for SiLU networks (issue 19): the bundled ``shapes`` detector is ReLU on purpose,
so it cannot show how INT8 calibration and the Q/DQ placement behave on the networks users bring. This one
has the parts of an Ultralytics YOLOv8 export that matter for quantization, at a size that trains on a 2-core
CPU in minutes (553,554 parameters, 2.3 MB of ONNX; 800 steps of 16 scenes: about 11 CPU-minutes
(0.66 CPU-s a step), 35 minutes wall on the shared project machine at load ~10; held-out mAP50 0.601 /
mAP50-95 0.455 on 300 scenes):

* Conv + BatchNorm + SiLU everywhere (BatchNorm folded at export; SiLU exported as ``Sigmoid`` · ``Mul``);
* C2f blocks (1x1, split, bottlenecks with residual adds, concat, 1x1), an SPPF, an FPN/PAN neck with
  nearest upsampling and concats, strides 8/16/32;
* the decoupled head (``cv2`` box branch with 4 x 16 DFL bins, ``cv3`` class branch), the DFL decoded as
  Ultralytics does it (reshape, transpose, softmax, a fixed 1x1 conv with weights 0..15), boxes decoded to
  cx, cy, w, h in input pixels, class scores by a sigmoid: output ``[B, 4 + nc, N]``;
* anchors computed from the neck's feature-map shapes (``Shape`` -> ``Range`` ops) as Ultralytics 8.4 does
  in a dynamic export (``--static`` writes them as constants instead, as a static export has them).

Needs the ``train`` extra (PyTorch). Not run by the tests: its output, ``tests/fixtures/silu_yolo/model.onnx``,
is committed. Seeded and single-threaded by default; reproduces the committed model with the same PyTorch build
(2.13.0+cpu)::

    python -m trtserve.training.train_silu_yolo --out tests/fixtures/silu_yolo/model.onnx

Training reuses the bundled detector's data, assignment and loss (:mod:`trtserve.training.train_detector`).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from trtserve.datasets.synthetic import CLASS_NAMES
from trtserve.training.train_detector import (
    INPUT_SIZE_PX,
    REG_MAX,
    STRIDES,
    build_dataset,
    compute_loss,
    fix_output_dims,
    fuse_for_export,
    make_anchors,
    optimizer_step,
)

logger = logging.getLogger(__name__)

WIDTHS = (16, 32, 48, 64, 80)  # stem, then strides 4, 8, 16, 32
HEAD_WIDTH = 24  # channels of the box and class branches


def conv(cin: int, cout: int, k: int = 1, s: int = 1) -> nn.Sequential:
    """Ultralytics' Conv: conv (no bias) + BatchNorm + SiLU, as a Sequential so BN folds at export."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03),
                         nn.SiLU(inplace=True))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2 = conv(c, c, 3), conv(c, c, 3)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """1x1 conv, split in two halves, ``n`` bottlenecks on the second, concat of all parts, 1x1 conv."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = conv(cin, 2 * self.c)
        self.cv2 = conv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.cv1(x).split((self.c, self.c), 1))
        parts.extend(m(parts[-1]) for m in self.m)
        return self.cv2(torch.cat(parts, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        hidden = cin // 2
        self.cv1, self.cv2 = conv(cin, hidden), conv(hidden * 4, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        parts = [self.cv1(x)]
        parts.extend(self.pool(parts[-1]) for _ in range(3))
        return self.cv2(torch.cat(parts, 1))


class DFL(nn.Module):
    """Ultralytics' DFL: softmax over the bins, then their expectation by a fixed 1x1 conv (weights 0..R-1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(REG_MAX, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(REG_MAX, dtype=torch.float32).view(1, REG_MAX, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, REG_MAX, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def feature_anchors(feats: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Anchor centers [2, N] in grid units and strides [1, N], from the feature maps' shapes (as Ultralytics)."""
    points, strides = [], []
    for feat, stride in zip(feats, STRIDES):
        h, w = feat.shape[2:]
        sx = torch.arange(end=w, dtype=feat.dtype) + 0.5
        sy = torch.arange(end=h, dtype=feat.dtype) + 0.5
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        strides.append(torch.full((h * w, 1), float(stride), dtype=feat.dtype))
    return torch.cat(points).transpose(0, 1), torch.cat(strides).transpose(0, 1)


class SiluYolo(nn.Module):
    """A YOLOv8-layout SiLU detector; in training mode ``forward`` gives (box logits, class logits) like
    :class:`~trtserve.training.train_detector.ShapesDetector`, so the same loss trains it."""

    def __init__(self, num_classes: int = len(CLASS_NAMES)) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = WIDTHS
        self.num_classes = num_classes
        self.b1 = nn.Sequential(conv(3, w0, 3, 2), conv(w0, w1, 3, 2), C2f(w1, w1))  # stride 4
        self.b2 = nn.Sequential(conv(w1, w2, 3, 2), C2f(w2, w2, 2))  # P3
        self.b3 = nn.Sequential(conv(w2, w3, 3, 2), C2f(w3, w3, 2))  # P4
        self.b4 = nn.Sequential(conv(w3, w4, 3, 2), C2f(w4, w4), SPPF(w4, w4))  # P5
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = C2f(w4 + w3, w3, shortcut=False)
        self.td3 = C2f(w3 + w2, w2, shortcut=False)
        self.down3, self.bu4 = conv(w2, w2, 3, 2), C2f(w2 + w3, w3, shortcut=False)
        self.down4, self.bu5 = conv(w3, w3, 3, 2), C2f(w3 + w4, w4, shortcut=False)
        hw = HEAD_WIDTH
        self.cv2 = nn.ModuleList(  # box branches
            nn.Sequential(conv(c, hw, 3), conv(hw, hw, 3), nn.Conv2d(hw, 4 * REG_MAX, 1)) for c in (w2, w3, w4))
        self.cv3 = nn.ModuleList(  # class branches
            nn.Sequential(conv(c, hw, 3), conv(hw, hw, 3), nn.Conv2d(hw, num_classes, 1)) for c in (w2, w3, w4))
        for branch in self.cv3:
            last = branch[-1]
            assert isinstance(last, nn.Conv2d) and last.bias is not None
            nn.init.constant_(last.bias, -4.6)  # prior 0.01
        self.dfl = DFL()
        self.register_buffer("dfl_bins", torch.arange(REG_MAX, dtype=torch.float32), persistent=False)
        self.export_mode = False
        self.static_anchors = False

    def features(self, x: Tensor) -> list[Tensor]:
        p3 = self.b2(self.b1(x))
        p4 = self.b3(p3)
        p5 = self.b4(p4)
        t4 = self.td4(torch.cat([self.up(p5), p4], 1))
        n3 = self.td3(torch.cat([self.up(t4), p3], 1))
        n4 = self.bu4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bu5(torch.cat([self.down4(n4), p5], 1))
        return [n3, n4, n5]

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        feats = self.features(x)
        b = x.shape[0]
        box = torch.cat([br(f).view(b, 4 * REG_MAX, -1) for br, f in zip(self.cv2, feats)], 2)
        cls = torch.cat([br(f).view(b, self.num_classes, -1) for br, f in zip(self.cv3, feats)], 2)
        if not self.export_mode:
            return box, cls
        if self.static_anchors:  # a static export: anchors are constants
            centers, strides = make_anchors(INPUT_SIZE_PX, INPUT_SIZE_PX)
            anchors, strides = (centers / strides.view(-1, 1)).t(), strides.view(1, -1)
        else:  # Ultralytics 8.4 computes them from the neck's feature maps: Shape ops in a dynamic export
            anchors, strides = feature_anchors(feats)
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        return torch.cat((xywh, cls.sigmoid()), 1)


def export_onnx(model: SiluYolo, path: Path, static: bool = False) -> None:
    """Export as Ultralytics ``export(format="onnx", dynamic=True, simplify=False)`` would (BN folded, opset 17)."""
    m = fuse_for_export(copy.deepcopy(model).eval())
    assert isinstance(m, SiluYolo)
    m.export_mode, m.static_anchors = True, static
    dummy = torch.zeros(1, 3, INPUT_SIZE_PX, INPUT_SIZE_PX)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = ({"images": {0: "batch"}, "output0": {0: "batch"}} if static else
            {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}})
    torch.onnx.export(m, (dummy,), str(path), input_names=["images"], output_names=["output0"],
                      dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)
    if static:
        fix_output_dims(path, 4 + model.num_classes, int(make_anchors(INPUT_SIZE_PX, INPUT_SIZE_PX)[0].shape[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps (the LR schedule follows them)")
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--export-every", type=int, default=100, help="export the EMA weights every N steps")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/silu_yolo/model.onnx"))
    parser.add_argument("--static-out", type=Path, default=None,
                        help="also write a static export (anchors as constants) here")
    parser.add_argument("--checkpoint", type=Path, default=Path("build/silu_yolo.pt"))
    parser.add_argument("--stop-after", type=int, default=0,
                        help="stop (and export) after this many steps of the --steps schedule (0: run it all)")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch threads (default 1: bitwise reproducible, and fastest on a shared machine)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    images, labels = build_dataset(0, args.train_images)
    logger.info("rendered %d training scenes in %.0f s", len(images), time.monotonic() - t0)
    model = SiluYolo()
    logger.info("%d parameters", sum(p.numel() for p in model.parameters()))
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=5e-4)
    anchors, strides = make_anchors(INPUT_SIZE_PX, INPUT_SIZE_PX)
    rng = np.random.default_rng(0)
    order = np.zeros(0, np.int64)
    model.train()
    last = min(args.steps, args.stop_after or args.steps)
    for step in range(last):
        if order.size < args.batch:  # a new epoch: a fresh permutation
            order = rng.permutation(len(images))
        idx, order = order[: args.batch], order[args.batch :]
        x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255.0
        y = torch.from_numpy(labels[idx].copy())
        if rng.random() < 0.5:  # horizontal flip
            x = x.flip(3)
            valid = y[..., 0] >= 0
            x0, x1 = INPUT_SIZE_PX - y[..., 3], INPUT_SIZE_PX - y[..., 1]
            y[..., 1] = torch.where(valid, x0, y[..., 1])
            y[..., 3] = torch.where(valid, x1, y[..., 3])
        warm = min(1.0, step / 100)
        lr = args.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss, parts = compute_loss(model, x, y, anchors, strides)  # type: ignore[arg-type]
        optimizer_step(model, ema, opt, loss, 0.998 * (1 - math.exp(-step / 200)))
        if (step + 1) % 25 == 0:
            logger.info("step %d/%d lr %.5f loss %.3f %s (%.1f min)", step + 1, args.steps, lr, float(loss),
                        {k2: round(v, 3) for k2, v in parts.items()}, (time.monotonic() - t0) / 60)
        if (step + 1) % args.export_every == 0 or step + 1 == last:
            args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(ema.state_dict(), args.checkpoint)
            export_onnx(ema, args.out)
            if args.static_out is not None:
                export_onnx(ema, args.static_out, static=True)
            logger.info("step %d: exported %s", step + 1, args.out)


if __name__ == "__main__":
    main()
