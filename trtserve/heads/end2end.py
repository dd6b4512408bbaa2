"""End-to-end (NMS-free) layout of YOLOv10 and NMS-embedded exports: ``[B, N, 6]`` = x1, y1, x2, y2, score, class.

An Ultralytics ``export(format="onnx", nms=True)`` embeds its NMS as a loop over the batch that the tracer unrolls
for the export's own ``batch`` (1 unless ``batch=N`` is given): with a dynamic batch dim the model still takes 8
frames, but answers only the first. :meth:`EndToEndHead.check_model` refuses such a model at load when
``max_batch_size`` is above that batch, reading the ``batch`` and ``args`` the export writes into the ONNX
metadata (YOLOv10's own end-to-end head, exported without ``nms=True``, decodes every frame and is not refused).
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

from trtserve.config import ModelConfig
from trtserve.errors import ModelLoadError
from trtserve.heads.base import Head, Thresholds, dim_is, single_output
from trtserve.vision.detections import Detections, Outputs
from trtserve.vision.letterbox import Letterbox

logger = logging.getLogger(__name__)


class EndToEndHead(Head):
    type = "end2end"

    @classmethod
    def accepts(cls, output_shapes: list[tuple[int | None, ...]], num_classes: int) -> bool:
        return len(output_shapes) == 1 and len(output_shapes[0]) == 3 and dim_is(output_shapes[0][2], 6)

    def decode(self, outputs: Outputs, geometries: list[Letterbox], thresholds: Thresholds) -> list[Detections]:
        out = single_output(outputs)
        return [self.finish(pred[:, :4], pred[:, 4], pred[:, 5].round().astype("int64"), geometry, thresholds,
                            suppress=False)  # the model already suppressed duplicates
                for pred, geometry in zip(out, geometries)]

    def check_model(self, config: ModelConfig, where: str) -> None:
        """ModelLoadError for an Ultralytics ``nms=True`` export traced for fewer frames than ``max_batch_size``."""
        traced = nms_export_batch(config.onnx_path)
        if traced is not None and traced < config.max_batch_size:
            raise ModelLoadError(
                f"{where}: model '{config.name}' is an Ultralytics nms=True export traced for batch {traced} (its "
                f"ONNX metadata), so it answers only the first {traced} frame(s) of each batch, but max_batch_size "
                f"is {config.max_batch_size}; re-export with `yolo export ... nms=True batch="
                f"{config.max_batch_size}` or set max_batch_size: {traced} in model.yaml")


def export_metadata(onnx_path: Path) -> dict[str, str]:
    """The ONNX file's ``metadata_props`` (what exporters such as Ultralytics write); {} when it cannot be read
    (the backend that loads the model reports why)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # unreadable here means unreadable for the backend too: its error is the one to show
        logger.debug("cannot read the metadata of %s: %s", onnx_path, exc)
        return {}
    return {p.key: p.value for p in model.metadata_props}


def nms_export_batch(onnx_path: Path) -> int | None:
    """The batch an Ultralytics ``nms=True`` export was traced for (its ``batch`` metadata), None for any other
    model (no such metadata, or exported without ``nms=True``)."""
    meta = export_metadata(onnx_path)
    args = _literal(meta.get("args", ""))
    if not isinstance(args, dict) or args.get("nms") is not True:
        return None
    batch = _literal(meta.get("batch", ""))
    if isinstance(batch, bool) or not isinstance(batch, int):
        batch = args.get("batch")
    return batch if isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1 else None


def _literal(text: str) -> Any:
    """A Python literal as Ultralytics writes its metadata (``str(dict)``); None when it is not one."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
