"""Train the bundled detector ("shapes") on synthetic scenes, on the CPU, and export it to ONNX.

Needs the ``train`` extra (PyTorch). Not run by the tests: its output, ``engines/shapes/model.onnx``,
is committed. Usage::

    python -m trtserve.training.train_detector --epochs 30 --out engines/shapes/model.onnx

The network is a small anchor-free detector built for INT8: ReLU activations (no SiLU, whose
Sigmoid*Mul quantizes badly), residual blocks, an FPN over strides 8/16/32, decoupled box (DFL,
``reg_max`` bins) and class branches. The ONNX output uses the Ultralytics YOLOv8 layout
``[B, 4 + num_classes, N]``: cx, cy, w, h in model-input pixels, then per-class sigmoid scores.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from trtserve.datasets.synthetic import CLASS_NAMES, TRAIN_SEED, render_scene
from trtserve.vision.letterbox import letterbox

logger = logging.getLogger(__name__)

INPUT_SIZE_PX = 256
STRIDES = (8, 16, 32)
REG_MAX = 16
MAX_OBJECTS = 8


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = conv_bn(c, c)
        self.b = conv_bn(c, c, act=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.b(self.a(x)))


class ShapesDetector(nn.Module):
    def __init__(self, num_classes: int = len(CLASS_NAMES), width: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(conv_bn(3, 16, s=2), conv_bn(16, 32, s=2), ResBlock(32))
        self.c3 = nn.Sequential(conv_bn(32, 64, s=2), ResBlock(64), ResBlock(64))
        self.c4 = nn.Sequential(conv_bn(64, 96, s=2), ResBlock(96), ResBlock(96))
        self.c5 = nn.Sequential(conv_bn(96, 128, s=2), ResBlock(128), ResBlock(128))
        self.lat3, self.lat4, self.lat5 = conv_bn(64, width, 1), conv_bn(96, width, 1), conv_bn(128, width, 1)
        self.fuse4, self.fuse3 = conv_bn(width, width), conv_bn(width, width)
        self.down3, self.down4 = conv_bn(width, width, s=2), conv_bn(width, width, s=2)
        self.pan4, self.pan5 = conv_bn(width, width), conv_bn(width, width)
        self.box_branch = nn.ModuleList(
            nn.Sequential(conv_bn(width, width), conv_bn(width, width), nn.Conv2d(width, 4 * REG_MAX, 1))
            for _ in STRIDES)
        self.cls_branch = nn.ModuleList(
            nn.Sequential(conv_bn(width, width), conv_bn(width, width), nn.Conv2d(width, num_classes, 1))
            for _ in STRIDES)
        for branch in self.cls_branch:
            last = branch[-1]
            assert isinstance(last, nn.Conv2d) and last.bias is not None
            nn.init.constant_(last.bias, -4.6)  # prior 0.01
        self.register_buffer("dfl_bins", torch.arange(REG_MAX, dtype=torch.float32), persistent=False)
        self.export_mode = False

    def features(self, x: Tensor) -> list[Tensor]:
        p3 = self.c3(self.stem(x))
        p4 = self.c4(p3)
        p5 = self.c5(p4)
        t5 = self.lat5(p5)
        t4 = self.fuse4(self.lat4(p4) + F.interpolate(t5, scale_factor=2.0, mode="nearest"))
        n3 = self.fuse3(self.lat3(p3) + F.interpolate(t4, scale_factor=2.0, mode="nearest"))
        n4 = self.pan4(t4 + self.down3(n3))
        n5 = self.pan5(t5 + self.down4(n4))
        return [n3, n4, n5]

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        feats = self.features(x)
        b = x.shape[0]
        box = torch.cat([br(f).reshape(b, 4 * REG_MAX, -1) for br, f in zip(self.box_branch, feats)], 2)
        cls = torch.cat([br(f).reshape(b, self.num_classes, -1)
                         for br, f in zip(self.cls_branch, feats)], 2)
        if not self.export_mode:
            return box, cls
        anchors, strides = make_anchors(x.shape[2], x.shape[3])
        dist = dfl_decode(box, self.dfl_bins) * strides  # [B, 4, N] ltrb pixels
        lt, rb = dist[:, :2], dist[:, 2:]
        centers = anchors.t().unsqueeze(0)
        x0y0, x1y1 = centers - lt, centers + rb
        xywh = torch.cat([(x0y0 + x1y1) / 2, x1y1 - x0y0], 1)
        return torch.cat([xywh, cls.sigmoid()], 1)


def dfl_decode(box: Tensor, bins: Tensor) -> Tensor:
    """[B, 4*R, N] logits -> [B, 4, N] expected distances in stride units."""
    b, _, n = box.shape
    prob = box.reshape(b, 4, REG_MAX, n).softmax(2)
    return (prob * bins.reshape(1, 1, REG_MAX, 1)).sum(2)


def make_anchors(h: int, w: int) -> tuple[Tensor, Tensor]:
    """Anchor centers [N, 2] (x, y) in input pixels and strides [1, 1, N]."""
    pts, strides = [], []
    for s in STRIDES:
        ys, xs = torch.meshgrid(torch.arange(h // s), torch.arange(w // s), indexing="ij")
        pts.append(torch.stack([xs, ys], -1).reshape(-1, 2).float() * s + s / 2)
        strides.append(torch.full((pts[-1].shape[0],), float(s)))
    return torch.cat(pts), torch.cat(strides).reshape(1, 1, -1)


def _render(index: int) -> tuple[np.ndarray, np.ndarray]:
    scene = render_scene(TRAIN_SEED, index)
    img, geo = letterbox(scene.image_bgr, (INPUT_SIZE_PX, INPUT_SIZE_PX))
    boxes = geo.to_input(scene.boxes_xyxy)
    labels = np.full((MAX_OBJECTS, 5), -1.0, np.float32)
    labels[: len(boxes), 0] = scene.class_ids
    labels[: len(boxes), 1:] = boxes
    return img[:, :, ::-1].copy(), labels  # RGB, as the model.yaml declares


def build_dataset(first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    with Pool(2) as pool:
        items = pool.map(_render, range(first, first + count), chunksize=64)
    return np.stack([i[0] for i in items]), np.stack([i[1] for i in items])


def box_iou_pairs(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and GIoU of matching xyxy rows."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1), (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).prod(1) + 1e-7
    return iou, iou - (hull - union) / hull


def assign(labels: Tensor, anchors: Tensor, strides: Tensor) -> tuple[Tensor, Tensor]:
    """Static center-sampling assignment. Returns gt index per anchor [B, N] (-1 = background)."""
    valid = labels[..., 0] >= 0  # [B, M]
    boxes = labels[..., 1:]  # [B, M, 4]
    ax, ay = anchors[:, 0].view(1, 1, -1), anchors[:, 1].view(1, 1, -1)
    s = strides.view(1, 1, -1)
    x0, y0, x1, y1 = (boxes[..., i : i + 1] for i in range(4))
    inside = (ax > x0) & (ax < x1) & (ay > y0) & (ay < y1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    near = ((ax - cx).abs() < 2.5 * s) & ((ay - cy).abs() < 2.5 * s)
    longest = torch.max(x1 - x0, y1 - y0)
    lo = torch.where(s == 8, 0.0, torch.where(s == 16, 40.0, 80.0))
    hi = torch.where(s == 8, 56.0, torch.where(s == 16, 112.0, 1e9))
    in_scale = (longest >= lo) & (longest < hi)
    cand = inside & near & in_scale & valid.unsqueeze(-1)
    # every object gets at least its nearest anchor on a level of the right scale
    dist = ((ax - cx) ** 2 + (ay - cy) ** 2) / s**2 + (~in_scale) * 1e6
    nearest = dist.argmin(-1)  # [B, M]
    fallback = torch.zeros_like(cand)
    fallback.scatter_(2, nearest.unsqueeze(-1), True)
    cand |= fallback & valid.unsqueeze(-1)
    area = ((x1 - x0) * (y1 - y0)).expand_as(cand)
    area = torch.where(cand, area, torch.full_like(area, 1e12))
    gt_idx = area.argmin(1)  # [B, N]
    pos = cand.any(1)
    return torch.where(pos, gt_idx, torch.full_like(gt_idx, -1)), pos


def compute_loss(model: ShapesDetector, imgs: Tensor, labels: Tensor,
                 anchors: Tensor, strides: Tensor) -> tuple[Tensor, dict[str, float]]:
    box_logits, cls_logits = model(imgs)  # type: ignore[misc]
    gt_idx, pos = assign(labels, anchors, strides)
    _b, _nc, _n = cls_logits.shape
    cls_target = torch.zeros_like(cls_logits)
    num_pos = max(1.0, float(pos.sum()))
    if pos.any():
        bi, ai = pos.nonzero(as_tuple=True)
        gt = labels[bi, gt_idx[bi, ai]]  # [P, 5]
        st = strides.view(-1)[ai]
        logits = box_logits[bi, :, ai].reshape(-1, 4, REG_MAX)
        dist = (logits.softmax(-1) * model.dfl_bins).sum(-1) * st[:, None]
        c = anchors[ai]
        pred = torch.cat([c - dist[:, :2], c + dist[:, 2:]], 1)
        iou, giou = box_iou_pairs(pred, gt[:, 1:])
        loss_box = (1 - giou).sum() / num_pos
        target = torch.cat([c - gt[:, 1:3], gt[:, 3:5] - c], 1) / st[:, None]
        target = target.clamp(0, REG_MAX - 1.01)
        left = target.floor().long()
        wl = left.float() + 1 - target
        flat = logits.reshape(-1, REG_MAX)
        loss_dfl = (F.cross_entropy(flat, left.reshape(-1), reduction="none") * wl.reshape(-1)
                    + F.cross_entropy(flat, left.reshape(-1) + 1, reduction="none") * (1 - wl).reshape(-1))
        loss_dfl = loss_dfl.sum() / num_pos / 4
        cls_target[bi, gt[:, 0].long(), ai] = iou.detach().clamp(min=0.05)
    else:
        loss_box = loss_dfl = box_logits.sum() * 0
    loss_cls = F.binary_cross_entropy_with_logits(cls_logits, cls_target, reduction="sum") / num_pos
    loss = 7.5 * loss_box + 1.0 * loss_cls + 1.5 * loss_dfl
    return loss, {"box": float(loss_box), "cls": float(loss_cls), "dfl": float(loss_dfl)}


def optimizer_step(model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, loss: Tensor, decay: float) -> None:
    """One step on ``loss`` (gradients clipped to norm 10), then ``ema`` moves toward ``model`` by ``1 - decay``."""
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    opt.step()
    with torch.no_grad():
        for pe, pm in zip(ema.state_dict().values(), model.state_dict().values()):
            if pe.dtype.is_floating_point:
                pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
            else:
                pe.copy_(pm)


def fuse_for_export(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm into the Conv before it (deployment graphs have no BN)."""
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and len(child) >= 2 and isinstance(child[0], nn.Conv2d) \
                and isinstance(child[1], nn.BatchNorm2d):
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(child[0], child[1])
            setattr(model, name, nn.Sequential(fused, *list(child)[2:]))
        else:
            fuse_for_export(child)
    return model


def export_onnx(model: ShapesDetector, path: Path) -> None:
    import copy

    m = fuse_for_export(copy.deepcopy(model).eval())
    assert isinstance(m, ShapesDetector)
    m.export_mode = True
    dummy = torch.zeros(1, 3, INPUT_SIZE_PX, INPUT_SIZE_PX)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(m, (dummy,), str(path), input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
                      opset_version=17, do_constant_folding=True, dynamo=False)
    fix_output_dims(path, 4 + model.num_classes, int(make_anchors(INPUT_SIZE_PX, INPUT_SIZE_PX)[0].shape[0]))


def fix_output_dims(path: Path, rows: int, anchors: int) -> None:
    """Record the static output dims (the exporter leaves them symbolic) so heads can be checked at load."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_value = rows
    dims[2].Clear()
    dims[2].dim_value = anchors
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train-images", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", type=Path, default=Path("engines/shapes/model.onnx"))
    parser.add_argument("--checkpoint", type=Path, default=Path("build/shapes.pt"))
    parser.add_argument("--time-budget-min", type=float, default=0.0,
                        help="stop after this many minutes (0 = no limit); the LR schedule follows it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    t0 = time.monotonic()
    images, labels = build_dataset(0, args.train_images)
    logger.info("rendered %d training scenes in %.0f s", len(images), time.monotonic() - t0)
    model = ShapesDetector()
    ema = ShapesDetector()
    ema.load_state_dict(model.state_dict())
    ema.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    anchors, strides = make_anchors(INPUT_SIZE_PX, INPUT_SIZE_PX)
    steps_per_epoch = len(images) // args.batch
    total_steps = steps_per_epoch * args.epochs
    rng = np.random.default_rng(0)
    step, t_train = 0, time.monotonic()
    budget_s = args.time_budget_min * 60
    for epoch in range(args.epochs):
        order = rng.permutation(len(images))
        model.train()
        for k in range(steps_per_epoch):
            idx = order[k * args.batch : (k + 1) * args.batch]
            x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255.0
            y = torch.from_numpy(labels[idx].copy())
            if rng.random() < 0.5:  # horizontal flip: every class is mirror-symmetric up to rotation
                x = x.flip(3)
                valid = y[..., 0] >= 0
                x0 = INPUT_SIZE_PX - y[..., 3]
                x1 = INPUT_SIZE_PX - y[..., 1]
                y[..., 1] = torch.where(valid, x0, y[..., 1])
                y[..., 3] = torch.where(valid, x1, y[..., 3])
            progress = step / total_steps
            if budget_s:
                progress = max(progress, (time.monotonic() - t_train) / budget_s)
            warm = min(1.0, step / 300)
            lr = args.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
            for g in opt.param_groups:
                g["lr"] = lr
            loss, parts = compute_loss(model, x, y, anchors, strides)
            optimizer_step(model, ema, opt, loss, 0.999 * (1 - math.exp(-step / 500)))
            step += 1
            if step % 50 == 0:
                logger.info("epoch %d step %d/%d lr %.5f loss %.3f %s", epoch, step, total_steps, lr,
                            float(loss), {k2: round(v, 3) for k2, v in parts.items()})
            if budget_s and time.monotonic() - t_train > budget_s:
                break
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ema.state_dict(), args.checkpoint)
        export_onnx(ema, args.out)
        logger.info("epoch %d done at %.0f min; exported %s", epoch, (time.monotonic() - t0) / 60, args.out)
        if budget_s and time.monotonic() - t_train > budget_s:
            break


if __name__ == "__main__":
    main()
