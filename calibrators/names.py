"""Stable, unique node names: calibration keys nodes by name, and ONNX lets every name be empty.

A graph whose nodes all have the empty name (legal ONNX; some exporters write them that way) would make every
node the same node to :mod:`calibrators.graph` and quantize nothing. :func:`unique_node_names` gives each
unnamed node ``<op_type>_<index>`` (its position in the graph) and each later node that repeats a name
``<name>_<k>``, with ``_<k>`` counted up while the name is taken. The names are deterministic (the same model
always gets the same names, so they can go in ``quantization.exclude_nodes``), unique, and never collide with
a name the model already has; a model whose names are already unique is left as it is.
"""

from __future__ import annotations

import onnx


def unique_node_names(model: onnx.ModelProto) -> int:
    """Name the unnamed nodes of ``model``'s graph and rename repeated names (in place); how many were changed."""
    graph = model.graph
    taken = {node.name for node in graph.node if node.name}
    first_seen: set[str] = set()
    changed = 0
    for index, node in enumerate(graph.node):
        if node.name and node.name not in first_seen:
            first_seen.add(node.name)
            continue
        base = node.name or f"{node.op_type or 'node'}_{index}"
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        taken.add(name)
        first_seen.add(name)
        changed += 1
    return changed
