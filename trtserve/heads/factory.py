"""The configured head for a model, checked against its output shapes; ``auto`` picks the only one that fits.

Exports with every output dim symbolic (Ultralytics ``export(dynamic=True, simplify=False)``: ``[(None, None,
None)]``) give ``auto`` nothing to pick from: then the shapes of one real batch (``probe``, the caller runs the
model once on a blank frame) are used instead.
"""

from __future__ import annotations

from collections.abc import Callable

from trtserve.config import HeadSpec
from trtserve.errors import ModelLoadError
from trtserve.heads.base import Head
from trtserve.heads.registry import AUTO, HEADS

Shapes = list[tuple[int | None, ...]]


def resolve_head_type(output_shapes: Shapes, num_classes: int, probe: Callable[[], Shapes] | None = None,
                      where: str = "model") -> type[Head]:
    """The only auto-detectable head whose layout the outputs have; ModelLoadError when none or several fit.

    Only dims known now count (a dynamic dim would let every layout "fit"); when a dim the pick depends on is
    dynamic and ``probe`` is given, the shapes it returns (the outputs of one real batch) are used instead.
    """
    shapes = [tuple(s) for s in output_shapes]
    detecting = [h for h in map(HEADS.load, HEADS.names()) if h.auto_detect]

    def fitting(candidate: Shapes) -> list[type[Head]]:
        known: Shapes = [tuple(-1 if d is None else d for d in s) for s in candidate]
        return [h for h in detecting if h.accepts(known, num_classes)]

    matching = fitting(shapes)
    probed: Shapes | None = None
    if len(matching) != 1 and probe is not None and any(d is None for s in shapes for d in s[1:]):
        probed = [tuple(s) for s in probe()]
        matching = fitting(probed)
    if len(matching) != 1:
        found = [h.type for h in matching] or "none"
        seen = f" (one batch gave {probed})" if probed is not None else ""
        raise ModelLoadError(
            f"{where}: cannot pick a head from output shapes {shapes}{seen} with {num_classes} classes "
            f"(matching head types: {found}); set head.type to one of {sorted(HEADS.names())} in model.yaml")
    return matching[0]


def make_head(spec: HeadSpec, num_classes: int, output_shapes: Shapes, where: str = "model",
              probe: Callable[[], Shapes] | None = None) -> Head:
    """Build the configured head, checking it against the outputs; ``auto`` picks the only matching one
    (:func:`resolve_head_type`; ``probe``: the output shapes of one real batch, asked for only when needed)."""
    shapes = [tuple(s) for s in output_shapes]
    if spec.type == AUTO:
        return resolve_head_type(shapes, num_classes, probe, where)(spec, num_classes)
    head_cls = HEADS.load(spec.type)
    if not head_cls.accepts(shapes, num_classes):
        raise ModelLoadError(f"{where}: head.type '{spec.type}' does not match output shapes {shapes} with "
                             f"{num_classes} classes; fix head.type or classes in model.yaml (or use 'raw')")
    return head_cls(spec, num_classes)
