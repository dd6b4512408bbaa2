"""Batch assembly: letterbox frames, then normalize them into the model's input layout (or, when the model
normalizes itself, stack the letterboxed uint8 frames as they are)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from trtserve.config import InputSpec
from trtserve.vision.letterbox import Letterbox, letterbox


class Preprocessor:
    """Turns BGR uint8 frames into the model's input tensor as ``model.yaml`` describes it.

    ``in_model``: the model normalizes inside (its input is the letterboxed BGR uint8 frames, see
    :mod:`trtserve.backends.input_prefix`): :meth:`to_input` then only stacks them. :meth:`to_tensor` always gives
    the float tensor (calibration, and a drift shadow fed a uint8 batch, use it).
    """

    def __init__(self, spec: InputSpec, dtype: np.dtype | None = None, in_model: bool = False) -> None:
        self.spec = spec
        self.in_model = in_model
        self.dtype = dtype if dtype is not None else np.dtype(np.float32)
        # x * scale/std - mean/std per channel, in the model's colour order: fixed per model, not per batch
        inv_std = 1.0 / np.array(spec.std, np.float32)
        self._alpha = np.float32(spec.scale) * inv_std
        self._beta = np.array(spec.mean, np.float32) * inv_std
        self._order = (2, 1, 0) if spec.color_order == "rgb" else (0, 1, 2)
        self._scratch = threading.local()  # per thread: the batch array reused by ``reuse=True``

    def _batch_array(self, shape: tuple[int, ...], dtype: np.dtype, reuse: bool) -> NDArray:
        """A new array of ``shape``, or with ``reuse`` a view of this thread's own array, grown when a batch is larger
        than any before: a server's engine thread writes every batch into the same pages instead of faulting in
        fresh ones (a batch of 8 at 640x640 is 39 MB of float32, which malloc maps and unmaps anew each time)."""
        if not reuse:
            return np.empty(shape, dtype)
        kept: NDArray | None = getattr(self._scratch, "array", None)
        if kept is None or kept.dtype != dtype or kept.shape[1:] != shape[1:] or kept.shape[0] < shape[0]:
            kept = np.empty(shape, dtype)
            self._scratch.array = kept
        return kept[:shape[0]]

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

    def to_tensor(self, letterboxed: Sequence[NDArray[np.uint8]] | NDArray[np.uint8], reuse: bool = False
                  ) -> NDArray[np.floating]:
        """``B`` letterboxed ``H x W x 3`` BGR uint8 frames -> the model's layout, colour order and normalization.
        ``reuse``: written into this thread's own array (:meth:`_batch_array`), which the thread's next ``reuse``
        call overwrites: for a caller done with the tensor before it assembles the next batch."""
        h, w = self.input_hw
        n = len(letterboxed)
        tensor = self._batch_array((n, 3, h, w) if self.spec.layout == "nchw" else (n, h, w, 3), self.dtype, reuse)
        order, alpha, beta = self._order, self._alpha, self._beta
        for frame, dst in zip(letterboxed, tensor):
            if frame.shape != (h, w, 3) or frame.dtype != np.uint8:  # a bug upstream, not a bad frame: INTERNAL
                raise ValueError(f"a letterboxed frame is {frame.dtype}{list(frame.shape)}; "
                                 f"expected uint8[{h}, {w}, 3]")
            if self.spec.layout == "nchw" and self.dtype == np.float32:
                # one C++ pass per channel plane straight into the batch (cv2.addWeighted with src2 weighted 0):
                # 0.4 ms for 8 frames of 256x256. blobFromImage per frame + concatenate took 1.1 ms, and in the
                # server its arrays cost ~270 page faults per frame (each batch's memory faulted in anew)
                planes = cv2.split(frame)
                for c, src in enumerate(order):
                    cv2.addWeighted(planes[src], float(alpha[c]), planes[src], 0.0, -float(beta[c]),
                                    dst=dst[c], dtype=cv2.CV_32F)
                continue
            src_frame = frame[..., list(order)] if order != (0, 1, 2) else frame
            if self.spec.layout == "nchw":
                src_frame = src_frame.transpose(2, 0, 1)
                a, b = alpha[:, None, None], beta[:, None, None]
            else:
                a, b = alpha, beta
            dst[...] = src_frame.astype(np.float32) * a - b  # in float32, then the model's dtype
        return tensor

    def to_input(self, letterboxed: Sequence[NDArray[np.uint8]] | NDArray[np.uint8], reuse: bool = False
                 ) -> NDArray[np.generic]:
        """The model's input for a batch of letterboxed frames: :meth:`to_tensor`, or with ``in_model`` the frames
        stacked into one ``uint8 [B, H, W, 3]`` array (a batch already stacked is returned as it is). ``reuse``: as
        :meth:`to_tensor` says."""
        if not self.in_model:
            return self.to_tensor(letterboxed, reuse)
        h, w = self.input_hw
        if isinstance(letterboxed, np.ndarray) and letterboxed.dtype == np.uint8 and letterboxed.shape[1:] == (h, w, 3):
            return letterboxed
        for frame in letterboxed:
            if frame.shape != (h, w, 3) or frame.dtype != np.uint8:  # a bug upstream: INTERNAL
                raise ValueError(f"a letterboxed frame is {frame.dtype}{list(frame.shape)}; "
                                 f"expected uint8[{h}, {w}, 3]")
        stacked = self._batch_array((len(letterboxed), h, w, 3), np.dtype(np.uint8), reuse)
        return np.stack(list(letterboxed), out=stacked)

    def letterbox_batch(self, frames: list[NDArray[np.uint8]]) -> tuple[NDArray[np.uint8], list[Letterbox]]:
        """Letterbox ``frames`` into one ``uint8 [B, H, W, 3]`` batch; returns it with each frame's geometry."""
        h, w = self.input_hw
        staging = np.empty((len(frames), h, w, 3), np.uint8)
        geometries = [self.letterbox_one(f, staging[i])[1] for i, f in enumerate(frames)]
        return staging, geometries

    def batch(self, frames: list[NDArray[np.uint8]]) -> tuple[NDArray[np.floating], list[Letterbox]]:
        """Letterbox and normalize ``frames`` into one float input tensor (:meth:`to_tensor`, whatever
        ``in_model`` says: calibration feeds the float model); returns it with each frame's geometry."""
        staging, geometries = self.letterbox_batch(frames)
        return self.to_tensor(staging), geometries
