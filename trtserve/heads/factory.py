"""The configured head for a model, checked against its output shapes; ``auto`` picks the only one that fits."""

from __future__ import annotations

from trtserve.config import HeadSpec
from trtserve.errors import ModelLoadError
from trtserve.heads.base import Head
from trtserve.heads.registry import AUTO, HEADS


def make_head(spec: HeadSpec, num_classes: int, output_shapes: list[tuple[int | None, ...]],
              where: str = "model") -> Head:
    """Build the configured head, checking it against the outputs; ``auto`` picks the only matching one."""
    shapes = [tuple(s) for s in output_shapes]
    if spec.type == AUTO:
        # only dims known now count: a dynamic dim would let every layout "fit"
        known: list[tuple[int | None, ...]] = [tuple(-1 if d is None else d for d in s) for s in shapes]
        detecting = [h for h in map(HEADS.load, HEADS.names()) if h.auto_detect]
        matching = [h for h in detecting if h.accepts(known, num_classes)]
        if len(matching) != 1:
            found = [h.type for h in matching] or "none"
            raise ModelLoadError(
                f"{where}: cannot pick a head from output shapes {shapes} with {num_classes} classes "
                f"(matching head types: {found}); set head.type to one of {sorted(HEADS.names())} in model.yaml")
        return matching[0](spec, num_classes)
    head_cls = HEADS.load(spec.type)
    if not head_cls.accepts(shapes, num_classes):
        raise ModelLoadError(f"{where}: head.type '{spec.type}' does not match output shapes {shapes} with "
                             f"{num_classes} classes; fix head.type or classes in model.yaml (or use 'raw')")
    return head_cls(spec, num_classes)
