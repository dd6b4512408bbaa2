"""Batch assembly: letterbox frames into one reused uint8 buffer, then normalize in one vectorized step."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.config import InputSpec
from trtserve.vision.letterbox import Letterbox, letterbox


class Preprocessor:
    """Turns BGR uint8 frames into the model's input tensor as ``model.yaml`` describes it."""

    def __init__(self, spec: InputSpec, dtype: np.dtype | None = None) -> None:
        self.spec = spec
        self.dtype = dtype if dtype is not None else np.dtype(np.float32)
        self._mean = np.array(spec.mean, np.float32)
        self._inv_std = 1.0 / np.array(spec.std, np.float32)

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.spec.height_px, self.spec.width_px)

    def letterbox_one(self, frame: NDArray[np.uint8], out: NDArray[np.uint8] | None = None,
                      original_hw: tuple[int, int] | None = None) -> tuple[NDArray[np.uint8], Letterbox]:
        return letterbox(frame, self.input_hw, self.spec.pad_value, out, self.spec.interpolation, original_hw)

    def needed_wh(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) a frame of this size is resized to inside the letterbox."""
        plan = Letterbox.plan((height, width), self.input_hw)
        return plan.resized_width_px, plan.resized_height_px

    def to_tensor(self, letterboxed: NDArray[np.uint8]) -> NDArray[np.floating]:
        """``[B, H, W, 3]`` BGR uint8 -> the model's layout, colour order and normalization (new array)."""
        spec = self.spec
        if (spec.layout == "nchw" and self.dtype == np.float32 and len(set(spec.mean)) == 1
                and len(set(spec.std)) == 1):
            # one C++ pass per frame for swap, scale, shift and transpose: (x - mean/scale) * scale/std.
            # blobFromImage per frame, not blobFromImages: the batch call measured ~7x slower (6.5 vs 0.9 ms
            # for 8 frames of 256x256, OpenCV 4.12)
            scale, swap = spec.scale / spec.std[0], spec.color_order == "rgb"
            mean = (spec.mean[0] / spec.scale,) * 3 if spec.scale else (0.0, 0.0, 0.0)
            return np.concatenate([cv2.dnn.blobFromImage(frame, scale, swapRB=swap, mean=mean)
                                   for frame in letterboxed]).astype(np.float32, copy=False)
        x = letterboxed[..., ::-1] if self.spec.color_order == "rgb" else letterboxed
        x = x.astype(np.float32) * np.float32(self.spec.scale)
        if self.spec.mean != (0.0, 0.0, 0.0) or self.spec.std != (1.0, 1.0, 1.0):
            x = (x - self._mean) * self._inv_std
        if self.spec.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def batch(self, frames: list[NDArray[np.uint8]]) -> tuple[NDArray[np.floating], list[Letterbox]]:
        """Letterbox and normalize ``frames`` into one input tensor; returns it with each frame's geometry."""
        h, w = self.input_hw
        staging = np.empty((len(frames), h, w, 3), np.uint8)
        geometries = [self.letterbox_one(f, staging[i])[1] for i, f in enumerate(frames)]
        return self.to_tensor(staging), geometries
