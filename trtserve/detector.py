"""In-process detection: frames -> preprocess -> backend -> head -> detections in frame pixels.

This is the one place a frame's path is written; the CLI (and later the gRPC services and the
benchmark) are adapters over :class:`Detector`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from trtserve.backends.base import Backend, BackendOptions
from trtserve.backends.input_prefix import FoldsInput
from trtserve.backends.registry import backend_class
from trtserve.config import ModelConfig
from trtserve.errors import InvalidFrameError, ModelLoadError, TrtserveError
from trtserve.heads.base import Head, Thresholds
from trtserve.heads.factory import make_head
from trtserve.vision.detections import Detections
from trtserve.vision.frames import check_frame, decode_for_input, decode_image
from trtserve.vision.letterbox import Letterbox
from trtserve.vision.preprocess import Preprocessor

logger = logging.getLogger(__name__)

Frame = NDArray[np.uint8] | bytes


@dataclass(frozen=True)
class BatchRun:
    """One batch through the model: what went in, what came out, and where the time went (seconds)."""

    # the backend's input: float, or uint8 letterboxed frames when it normalizes inside; with run_batch's reuse_input
    # a view of the engine thread's own array, overwritten by its next batch
    tensor: NDArray[np.generic]
    outputs: dict[str, NDArray[np.generic]]
    detections: list[Detections]
    preprocess_s: float  # normalize and layout of the letterboxed batch (stacking it when the model normalizes)
    inference_s: float
    postprocess_s: float  # head decode, thresholds, NMS, un-letterbox
    # CPU time of the backend call on the calling thread (with ONNX Runtime intra_op_threads > 1, its other threads'
    # share is not in it)
    inference_cpu_s: float = 0.0


@dataclass(frozen=True)
class FrameResult:
    """The answer for one frame: detections, or the error that failed this frame alone."""

    detections: Detections | None
    error: TrtserveError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


_warned_float_int8: set[tuple[str, int]] = set()


def warn_if_not_quantized(path: Path) -> None:
    """Warn (once per file version) when an ONNX model served as ``int8`` holds no quantized operator: it computes
    in FP32 (what an INT8 artifact written from a model whose nodes had no names looked like)."""
    try:
        key = (str(path.resolve()), path.stat().st_mtime_ns)
        if path.suffix != ".onnx" or key in _warned_float_int8:
            return
        import onnx

        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    except Exception:  # an engine, or unreadable: the backend reports what matters
        return
    _warned_float_int8.add(key)
    if not ops & {"QuantizeLinear", "DequantizeLinear", "ConvInteger", "MatMulInteger"} and not any(
            op.startswith("QLinear") for op in ops):
        logger.warning("%s is served as int8 but holds no quantized operator (no QuantizeLinear/DequantizeLinear or "
                       "QLinear*): it computes in FP32; recalibrate it with `trtserve calibrate MODEL --images DIR "
                       "--overwrite`", path)


def infer_padded(backend: Backend, input_name: str, tensor: NDArray[np.generic], fixed_batch: int | None
                 ) -> dict[str, NDArray[np.generic]]:
    """Run one batch; a model with a fixed batch larger than it gets zero frames appended, cut off after."""
    n = tensor.shape[0]
    if fixed_batch is not None and n < fixed_batch:
        pad = np.zeros((fixed_batch - n, *tensor.shape[1:]), tensor.dtype)
        tensor = np.concatenate([tensor, pad])
    outputs = backend.infer({input_name: tensor})
    return {k: v[:n] for k, v in outputs.items()}


class Detector:
    """A loaded model ready to detect. Create with :meth:`open`; release with :meth:`close`."""

    def __init__(self, config: ModelConfig, backend: Backend, precision: str) -> None:
        self.config = config
        self.backend = backend
        self.precision = precision
        self.preprocessor = Preprocessor(config.input)
        self.head: Head
        self.input_name: str
        self._check_io()
        self.thresholds = Thresholds.from_spec(config.head)

    @classmethod
    def open(cls, config: ModelConfig, precision: str = "fp32", backend: str | None = None,
             options: BackendOptions | None = None, normalize_in_model: bool = False) -> Detector:
        """Load ``config``'s model for ``precision`` on ``backend`` (None: model.yaml's ``backend``, by default
        onnxruntime); raises ModelLoadError/ConfigError. The backend picks its file (an ONNX artifact, or the
        TensorRT engine built for this host). ``normalize_in_model``: where the backend can (ONNX Runtime), the
        model gets a prefix that takes the letterboxed uint8 frames and normalizes them itself
        (:mod:`trtserve.backends.input_prefix`); elsewhere, and for a model whose input cannot take it, the
        frames are normalized on the CPU as without it."""
        from trtserve.backends.devices import open_backend  # model.yaml's device: one GPU, or several

        kind = backend_class(backend or config.backend)
        options = replace(options or BackendOptions(), precision=precision)
        loaded = open_backend(kind, config, precision, options, normalize_in_model)
        if precision == "int8":
            warn_if_not_quantized(loaded.model_path)
        try:
            return cls(config, loaded, precision)
        except Exception:
            loaded.close()
            raise

    def _check_io(self) -> None:
        where = f"{self.config.source_file} ({self.backend.model_path.name})"
        inputs = self.backend.inputs
        names = [t.name for t in inputs]
        wanted = self.config.input.name
        if wanted is None and len(inputs) != 1:
            raise ModelLoadError(f"{where}: the model has inputs {names}; set input.name in model.yaml")
        if wanted is not None and wanted not in names:
            raise ModelLoadError(f"{where}: key 'input.name' is {wanted!r} but the model's inputs are {names}")
        info = next(t for t in inputs if t.name == (wanted or names[0]))
        self.input_name = info.name
        spec = self.config.input
        expected_hw = (spec.height_px, spec.width_px)
        folded = isinstance(self.backend, FoldsInput) and self.backend.input_folded
        layout = "nhwc" if folded else spec.layout  # a prefixed model takes the letterboxed frames: NHWC
        if len(info.shape) != 4:
            raise ModelLoadError(f"{where}: input '{info.name}' has rank {len(info.shape)}; "
                                 "expected a 4-D image batch")
        hw = info.shape[2:4] if layout == "nchw" else info.shape[1:3]
        channels = info.shape[1] if layout == "nchw" else info.shape[3]
        if channels not in (None, 3):
            raise ModelLoadError(f"{where}: input '{info.name}' of shape {list(info.shape)} does not have 3 "
                                 f"channels in layout {spec.layout}; fix input.layout in model.yaml")
        if any(d is not None and d != e for d, e in zip(hw, expected_hw)):
            raise ModelLoadError(f"{where}: input '{info.name}' is {list(info.shape)} but model.yaml says "
                                 f"{spec.height_px}x{spec.width_px} ({spec.layout}); fix input.height_px/width_px")
        batch_dim = info.shape[0]
        if batch_dim is not None and batch_dim < self.config.max_batch_size:
            raise ModelLoadError(f"{where}: the model has a fixed batch of {batch_dim} but max_batch_size is "
                                 f"{self.config.max_batch_size}; re-export with a dynamic batch or lower "
                                 "max_batch_size")
        self.fixed_batch = batch_dim
        self.preprocessor = Preprocessor(spec, info.dtype if info.dtype.kind == "f" else np.dtype(np.float32),
                                         in_model=folded)
        self.head = make_head(self.config.head, len(self.config.class_names),
                              [t.shape for t in self.backend.outputs], where, probe=self._probe_output_shapes)
        self.head.check_model(self.config, where)

    def _probe_output_shapes(self) -> list[tuple[int | None, ...]]:
        """The output shapes of one blank frame through the model: what ``head: auto`` picks from when the export
        declares its output dims symbolic (asked for only then)."""
        spec = self.config.input
        blank = np.full((spec.height_px, spec.width_px, 3), spec.pad_value, np.uint8)
        outputs = self.infer_tensor(self.preprocessor.to_input([blank]))
        logger.info("%s: output dims are symbolic; one blank frame gave %s", self.config.source_file,
                    {k: list(v.shape) for k, v in outputs.items()})
        return [tuple(int(d) for d in v.shape) for v in outputs.values()]

    def prepare(self, frame: Frame) -> NDArray[np.uint8]:
        """Decode (bytes) or check (array) one frame; raises InvalidFrameError."""
        if isinstance(frame, (bytes, bytearray, memoryview)):
            return decode_image(bytes(frame), self.config.max_frame_pixels, self.config.input.exif_orientation)
        return check_frame(frame, self.config.max_frame_pixels)

    def letterbox(self, frame: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], Letterbox]:
        """A checked frame letterboxed to the model input (uint8, H x W x 3) and its geometry."""
        return self.preprocessor.letterbox_one(frame)

    def prepare_letterboxed(self, frame: Frame) -> tuple[NDArray[np.uint8], Letterbox]:
        """:meth:`prepare` then :meth:`letterbox`, letting a large JPEG be downscaled while it is decoded."""
        if isinstance(frame, (bytes, bytearray, memoryview)):
            image, original_hw = decode_for_input(bytes(frame), self.config.max_frame_pixels,
                                                  self.preprocessor.needed_wh, self.config.input.exif_orientation)
            return self.preprocessor.letterbox_one(image, original_hw=original_hw)
        return self.letterbox(check_frame(frame, self.config.max_frame_pixels))

    def infer_letterboxed(self, images: Sequence[NDArray[np.uint8]], geometries: Sequence[Letterbox],
                          thresholds: Sequence[Thresholds]) -> list[Detections]:
        """Letterboxed frames (at most max_batch_size) -> detections, each frame with its own thresholds.

        A failure fails the whole batch (the caller decides who to tell).
        """
        return self.run_batch(images, geometries, thresholds).detections

    def run_batch(self, images: Sequence[NDArray[np.uint8]], geometries: Sequence[Letterbox],
                  thresholds: Sequence[Thresholds], reuse_input: bool = False) -> BatchRun:
        """:meth:`infer_letterboxed` keeping what monitoring needs: the input tensor, raw outputs, stage times.
        ``reuse_input``: the input tensor is assembled in this thread's own array (:meth:`Preprocessor.to_tensor`),
        so :attr:`BatchRun.tensor` is valid only until this thread's next such batch: whoever keeps it copies it."""
        t0 = time.perf_counter()
        if not 0 < len(images) <= self.config.max_batch_size:
            raise InvalidFrameError(f"batch of {len(images)} frames; expected 1..{self.config.max_batch_size}")
        tensor = self.preprocessor.to_input(images, reuse_input)
        t1, cpu1 = time.perf_counter(), time.thread_time()
        outputs = self.infer_tensor(tensor)
        t2, cpu2 = time.perf_counter(), time.thread_time()
        detections = self.decode(outputs, geometries, thresholds)
        t3 = time.perf_counter()
        return BatchRun(tensor, outputs, detections, t1 - t0, t2 - t1, t3 - t2, cpu2 - cpu1)

    def infer_tensor(self, tensor: NDArray[np.generic]) -> dict[str, NDArray[np.generic]]:
        """The backend's input batch (:meth:`Preprocessor.to_input`) -> raw outputs (fixed-batch models are padded,
        then cut back)."""
        return infer_padded(self.backend, self.input_name, tensor, self.fixed_batch)

    def decode(self, outputs: dict[str, NDArray[np.generic]], geometries: Sequence[Letterbox],
               thresholds: Sequence[Thresholds]) -> list[Detections]:
        """Raw outputs of a batch -> detections in original-frame pixels, each frame with its thresholds."""
        shapes: list[tuple[int | None, ...]] = [tuple(int(d) for d in v.shape) for v in outputs.values()]
        if not self.head.accepts(shapes, len(self.config.class_names)):  # dynamic dims are known only now
            raise ModelLoadError(f"{self.config.source_file}: head.type '{self.head.type}' does not match the "
                                 f"output shapes {shapes} the model produced; fix head.type or classes")
        return self.head.decode_each(outputs, geometries, thresholds)

    def detect(self, frames: Sequence[Frame], thresholds: Thresholds | None = None) -> list[FrameResult]:
        """Detect on any number of frames; a bad frame fails alone, a failing batch fails its frames only."""
        results: list[FrameResult | None] = [None] * len(frames)
        good: list[tuple[int, NDArray[np.uint8], Letterbox]] = []
        for i, frame in enumerate(frames):
            try:
                good.append((i, *self.prepare_letterboxed(frame)))
            except TrtserveError as exc:
                results[i] = FrameResult(None, exc)
        step = self.config.max_batch_size
        for start in range(0, len(good), step):
            chunk = good[start : start + step]
            try:
                detections = self.infer_letterboxed([f for _, f, _ in chunk], [g for _, _, g in chunk],
                                                    [thresholds or self.thresholds] * len(chunk))
                for (i, _, _), det in zip(chunk, detections):
                    results[i] = FrameResult(det)
            except TrtserveError as exc:
                logger.warning("batch of %d frames failed: %s", len(chunk), exc)
                for i, _, _ in chunk:
                    results[i] = FrameResult(None, exc)
        return [r for r in results if r is not None]

    def with_thresholds(self, score: float | None = None, iou: float | None = None,
                        max_detections: int | None = None) -> Thresholds:
        """The model's thresholds with these overrides; InvalidFrameError (INVALID_ARGUMENT) for values out of
        range: score and IoU in 0..1, max_detections at least 1."""
        for name, value in (("score", score), ("iou", iou)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise InvalidFrameError(f"thresholds.{name} is {value}; expected 0..1")
        if max_detections is not None and max_detections < 1:
            raise InvalidFrameError(f"thresholds.max_detections is {max_detections}; expected at least 1")
        t = self.thresholds
        return replace(t, score=t.score if score is None else score, iou=t.iou if iou is None else iou,
                       max_detections=t.max_detections if max_detections is None else max_detections)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
