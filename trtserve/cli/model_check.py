"""What ``trtserve models`` shows per model: it is opened as a server would (files present, ONNX loads, input size
and layout match model.yaml, the head resolves against the real outputs), so a broken model is marked with the
reason instead of listed as fine, and ``head: auto`` shows the head it resolved to."""

from __future__ import annotations

from typing import Any

from trtserve.errors import TrtserveError


def check_models(repository: Any) -> list[dict[str, Any]]:
    """One row per model folder of ``repository`` (a :class:`~trtserve.repository.ModelRepository`): name, head
    (resolved), input, classes, precisions, max_batch_size, ok, and the reason when not ok."""
    from trtserve.detector import Detector

    rows: list[dict[str, Any]] = []
    for name in repository.names():
        try:
            config = repository.get(name)
        except TrtserveError as exc:
            rows.append({"name": name, "head": None, "precisions": [], "input": None, "classes": None,
                         "max_batch_size": None, "ok": False, "error": str(exc)})
            continue
        row: dict[str, Any] = {"name": config.name, "head": config.head.type,
                               "precisions": config.available_precisions(),
                               "input": [config.input.height_px, config.input.width_px],
                               "classes": len(config.class_names), "max_batch_size": config.max_batch_size,
                               "ok": True}
        try:
            if "fp32" not in row["precisions"]:
                raise TrtserveError(f"{config.onnx_path} is missing; put the FP32 ONNX there or fix 'onnx' in "
                                    f"{config.source_file}")
            with Detector.open(config, "fp32") as detector:
                row["head"] = detector.head.type
        except TrtserveError as exc:
            row["ok"], row["error"] = False, str(exc)
        rows.append(row)
    return rows


def describe(rows: list[dict[str, Any]]) -> str:
    """The rows as ``trtserve models`` prints them, a broken model's reason on its line."""
    lines = []
    for r in rows:
        if r["input"] is None:
            lines.append(f"{r['name']:<20} BROKEN: {r['error']}")
            continue
        line = (f"{r['name']:<20} head={r['head']:<8} input={r['input'][0]}x{r['input'][1]} "
                f"classes={r['classes']} precisions={','.join(r['precisions'])}")
        lines.append(line if r["ok"] else f"{line} BROKEN: {r['error']}")
    return "\n".join(lines) or "(no models)"
