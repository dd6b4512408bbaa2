"""FP16 ONNX for TensorRT 11, whose networks are strongly typed (the ONNX types are the engine's precision)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from trtserve.errors import ConfigError

logger = logging.getLogger(__name__)


def convert_fp16(source: Path, target: Path, keep_float: list[str] | None = None) -> Path:
    """Write an FP16 copy of ``source`` with float32 inputs/outputs; ``keep_float`` nodes stay float32.

    Defaults to the detection head (its convs, Sigmoid and decode), which loses accuracy in FP16/INT8.
    Uses onnxconverter-common's ``convert_float_to_float16``.
    """
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise ConfigError(f"FP16 on TensorRT 11 needs an FP16 ONNX; install onnxconverter-common "
                          f"(pip install 'trtserve[gpu]') or add artifacts.fp16 to model.yaml ({exc})") from None
    from calibrators.files import atomic_write_bytes
    from calibrators.graph import detection_head_nodes

    model = onnx.load(str(source))
    block = keep_float if keep_float is not None else sorted(detection_head_nodes(model))
    with warnings.catch_warnings():  # it warns once per constant clamped to the FP16 range: expected, not news
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=block)
    _float32_outputs(converted, {o.name for o in model.graph.output
                                 if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT})
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, converted.SerializeToString())
    logger.info("wrote FP16 model %s (%d nodes kept float32)", target, len(block))
    return target


def _float32_outputs(model: Any, names: set[str]) -> None:
    """Cast outputs that were float32 back to float32 (onnxconverter-common 1.16 casts an output to FP16 when its
    producer is in the block list, despite keep_io_types)."""
    import onnx

    for output in model.graph.output:
        if output.name not in names or output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            continue
        inner = f"{output.name}__fp16"
        for node in model.graph.node:
            node.output[:] = [inner if o == output.name else o for o in node.output]
            node.input[:] = [inner if i == output.name else i for i in node.input]
        model.graph.node.append(onnx.helper.make_node("Cast", [inner], [output.name], to=onnx.TensorProto.FLOAT,
                                                      name=f"{output.name}__to_float32"))
        output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
