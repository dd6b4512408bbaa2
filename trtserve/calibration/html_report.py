"""``calibration.report.html``: what ``trtserve calibrate`` did, as one self-contained page to look at.

Drawn from a :class:`~trtserve.calibration.report.CalibrationReport` (and, after ``calibrate --eval-data``, the
:class:`~trtserve.calibration.dataset_eval.DatasetEvaluation`):

* the summary figures (every scalar field of the report, so a field added to it shows up here too);
* FP32 against INT8: mAP side by side, and AP per class on the user's data, with INT8's agreement with FP32 and the
  frames that disagree most;
* the layers kept float, why, and the agreement each one gained alone when ``--auto-exclude`` measured it;
* per calibrated tensor, the histogram of |x| (at most 64 bins, log scale) with the chosen cut (amax) marked, the
  share of values above it and the method that chose it.

The page is plain HTML with inline CSS and hand-drawn inline SVG: no script, no external URL, image or font (a
Content-Security-Policy of ``default-src 'none'`` says so to the browser too), so it opens offline and can be mailed
or attached to a ticket. Every string that comes from the model or the data (tensor, node, class and file names)
is escaped. Its size grows by about 1 kB per tensor.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtserve import __version__

if TYPE_CHECKING:
    from calibrators.histogram import HistogramSummary
    from trtserve.calibration.dataset_eval import DatasetEvaluation
    from trtserve.calibration.report import CalibrationReport

HTML_REPORT_FILE = "calibration.report.html"
FOLD_ROWS = 20  # longer tables are folded (<details>) behind their first rows
MOST_CLIPPED = 10
SERIES_CLASSES = ("fp32", "int8")  # the two precisions' bars
# as fill attributes, not CSS classes, so the drawings keep their colours where a reader drops the page's style
COLOURS = {
    "fp32": "#0072b2",
    "int8": "#e69f00",
    "gain": "#009e73",
    "neg": "#d55e00",
    "axis": "#999999",
    "bins": "#4a6fa5",
    "clipped": "#f4c7c3",
    "cut": "#b00020",
    "max": "#555555",
}

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1180px;
padding:0 16px;color:#1b1b1b;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#555;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0 10px}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f6f6f6}td.v{text-align:right;font-variant-numeric:tabular-nums}
.worse{color:#b00020}.better{color:#006b3c}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:10px}
.t{border:1px solid #e3e3e3;border-radius:4px;padding:6px 8px}
.n{font:12px ui-monospace,Menlo,Consolas,monospace;word-break:break-all;margin-bottom:3px}
.m{font-size:12px;color:#444}.ax{display:flex;justify-content:space-between;font-size:11px;color:#777}
svg.h{width:100%;height:56px;display:block;background:#fafafa}
.key span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;background:#777}
.key .fp32{background:#0072b2}.key .int8{background:#e69f00}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}
code{font:12px ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
"""


def _e(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def _num(value: object, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}g}"
    return _e(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    """A table; ``rows`` hold ready HTML cells, those from column ``numeric_from`` on right-aligned."""
    rows = list(rows)
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if any(header) else ""

    def row(cells: Sequence[str]) -> str:
        return (
            "<tr>"
            + "".join(f"<td{' class=v' if i >= numeric_from else ''}>{c}</td>" for i, c in enumerate(cells))
            + "</tr>"
        )

    shown = "".join(row(r) for r in rows[:FOLD_ROWS])
    out = f"<table>{head}{shown}</table>"
    if len(rows) > FOLD_ROWS:
        rest = "".join(row(r) for r in rows[FOLD_ROWS:])
        out += f"<details><summary>{len(rows) - FOLD_ROWS} more rows</summary><table>{head}{rest}</table></details>"
    return out


def _metric(name: str) -> str:
    return {"map50": "mAP50", "map50_95": "mAP50-95"}.get(name, name.replace("_", " "))


def _delta_pt(fp32: float | None, int8: float | None) -> str:
    """INT8 minus FP32 in points (0.01), coloured by sign."""
    if fp32 is None or int8 is None:
        return "–"
    delta = (int8 - fp32) * 100
    cls = "worse" if delta < -0.05 else "better" if delta > 0.05 else ""
    return f'<span class="{cls}">{delta:+.2f} pt</span>'


def histogram_svg(summary: HistogramSummary, amax: float, max_abs: float) -> str:
    """The histogram of |x| as a small inline SVG: bars on a log scale, the part above the cut shaded, the cut (a
    red line) at ``amax`` and the largest |x| (dashed). Coordinates are in bins (x) and percent (y)."""
    counts = summary.counts
    n = len(counts)
    if n == 0 or summary.bin_width <= 0:
        return '<svg class="h" viewBox="0 0 1 100" preserveAspectRatio="none" role="img" aria-label="all zeros"></svg>'
    top = math.log10(1 + max(counts))
    heights = [100 - round(100 * math.log10(1 + c) / top) if top > 0 else 100 for c in counts]
    path = ["M0 100"]
    start = 0
    for i in range(1, n + 1):  # one step per run of bins of the same height
        if i == n or heights[i] != heights[start]:
            path.append(f"V{heights[start]}h{i - start}")
            start = i
    path.append("V100Z")
    cut = min(amax / summary.bin_width, n)
    peak = min(max_abs / summary.bin_width, n)
    return (
        f'<svg class="h" width="256" height="56" viewBox="0 0 {n} 100" preserveAspectRatio="none" role="img" '
        f'aria-label="histogram of |x|, cut at {amax:.4g}">'
        f'<rect fill="{COLOURS["clipped"]}" x="{cut:.2f}" width="{n - cut:.2f}" height="100"/>'
        f'<path fill="{COLOURS["bins"]}" d="{"".join(path)}"/>'
        f'<rect fill="{COLOURS["max"]}" x="{max(peak - 0.25, 0):.2f}" width="0.25" height="100"/>'
        f'<rect class="k" fill="{COLOURS["cut"]}" x="{max(cut - 0.2, 0):.2f}" width="0.4" height="100"/>'
        "</svg>"
    )


def share_above(summary: HistogramSummary, amax: float) -> float | None:
    """The share of values above ``amax`` (clipped to it in INT8), from the small histogram: bins wholly above
    count fully, the bin the cut falls in by the part of its width above the cut (an estimate)."""
    total = sum(summary.counts)
    if total == 0 or summary.bin_width <= 0:
        return None
    position = amax / summary.bin_width
    whole = int(position)
    above = float(sum(summary.counts[whole + 1 :]))
    if whole < len(summary.counts):
        above += summary.counts[whole] * (1 - (position - whole))
    return above / total


def bar_chart(
    rows: Sequence[tuple[str, Sequence[float | None]]],
    series: Sequence[str],
    scale_max: float,
    value_format: str = "{:.3f}",
    signed: bool = False,
) -> str:
    """Horizontal bars: one group per row (its label on the left), one bar per series (CSS class = series name).

    ``scale_max`` is the value of a full-length bar; ``signed`` puts zero in the middle, negative values (class
    ``neg``) going left.
    """
    label_w, bar_w, bar_h, gap = 230, 360, 12, 8
    group_h = bar_h * len(series) + gap
    height = group_h * len(rows) + gap
    scale_max = scale_max if scale_max > 0 else 1.0
    zero = label_w + (bar_w / 2 if signed else 0)
    full = bar_w / 2 if signed else bar_w
    parts = [
        f'<svg class="bars" width="{label_w + bar_w + 70}" height="{height}" font-size="12" '
        'font-family="system-ui,sans-serif" role="img">'
    ]
    if signed:
        parts.append(f'<rect fill="{COLOURS["axis"]}" x="{zero - 0.5:.1f}" y="0" width="1" height="{height}"/>')
    for r, (label, values) in enumerate(rows):
        y0 = gap + r * group_h
        text = label if len(label) <= 32 else label[:31] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{y0 + bar_h * len(series) / 2 + 4:.0f}" text-anchor="end">'
            f"<title>{_e(label)}</title>{_e(text)}</text>"
        )
        for s, (name, value) in enumerate(zip(series, values)):
            if value is None or not math.isfinite(value):
                continue
            w = min(abs(value) / scale_max, 1.0) * full if signed or value > 0 else 0.0
            y = y0 + s * bar_h
            left = zero - w if value < 0 else zero
            cls = "neg" if value < 0 else name
            text_x = max(zero + 4, left + w + 4)
            parts.append(
                f'<rect fill="{COLOURS.get(cls, "#777")}" x="{left:.1f}" y="{y}" width="{w:.1f}" height="{bar_h - 2}"/>'
                f'<text x="{text_x:.1f}" y="{y + bar_h - 3}">{_e(value_format.format(value))}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _key(series: Sequence[str]) -> str:
    return '<div class="key">' + "".join(f'<span class="{_e(s)}"></span>{_e(s.upper())}' for s in series) + "</div>"


def _summary(report: CalibrationReport, data: Mapping[str, Any]) -> str:
    rows = [
        [_e(k.replace("_", " ")), _num(v)]
        for k, v in data.items()
        if v is None or isinstance(v, (str, int, float, bool))
    ]
    rows.append(["tensors calibrated", str(len(report.tensors))])
    layers = getattr(report, "weighted_layers", None)
    if layers is not None and hasattr(layers, "describe"):
        rows.append(["weighted layers", _e(layers.describe())])
    rows.append(["nodes kept float", str(len(report.excluded))])
    artifacts = data.get("artifacts")
    if isinstance(artifacts, Mapping):
        files = [str(v) for v in artifacts.values() if isinstance(v, str)]
        for v in artifacts.values():
            if isinstance(v, Mapping):
                files += [str(f) for f in v.values()]
        rows.append(["files written", "<br>".join(f"<code>{_e(f)}</code>" for f in files)])
    return "<h2 id=summary>Summary</h2>" + _table(["", ""], rows, numeric_from=2)


def _accuracy(evaluation: Mapping[str, Any] | None, dataset: DatasetEvaluation | None) -> str:
    if evaluation is None and dataset is None:
        return (
            "<h2 id=accuracy>FP32 against INT8</h2><p>Not measured: run <code>trtserve calibrate</code> with "
            "<code>--eval-images N</code> or <code>--eval-data DIR</code> to compare the two.</p>"
        )
    out = ["<h2 id=accuracy>FP32 against INT8</h2>"]
    if evaluation is not None:
        pairs = sorted(
            {k[: -len("_fp32")] for k in evaluation if k.endswith("_fp32") and f"{k[:-5]}_int8" in evaluation}
        )
        rest = [k for k in evaluation if not (k.endswith("_fp32") or k.endswith("_int8"))]
        out.append(f"<p>On {_num(evaluation.get('images'))} held-out synthetic images:</p>")
        out.append(
            _table(
                ["metric", "FP32", "INT8", "INT8 − FP32"],
                [
                    [
                        _e(_metric(p)),
                        _num(evaluation[f"{p}_fp32"]),
                        _num(evaluation[f"{p}_int8"]),
                        _delta_pt(evaluation[f"{p}_fp32"], evaluation[f"{p}_int8"]),
                    ]
                    for p in pairs
                ],
            )
        )
        out.append(
            _key(SERIES_CLASSES)
            + bar_chart(
                [(_metric(p), [evaluation[f"{p}_fp32"], evaluation[f"{p}_int8"]]) for p in pairs], SERIES_CLASSES, 1.0
            )
        )
        out.append(_table(["", ""], [[_e(k.replace("_", " ")), _num(evaluation[k])] for k in rest if k != "images"]))
    if dataset is not None:
        out.append(_dataset(dataset))
    return "".join(out)


def _dataset(dataset: DatasetEvaluation) -> str:
    names = list(dataset.precisions)
    out = [
        f"<h3>On {_e(dataset.data)}</h3><p>{dataset.images} images ({_e(dataset.layout)} layout), "
        f"{dataset.objects} objects, {len(dataset.unreadable)} unreadable.</p>"
    ]
    both = "fp32" in dataset.precisions and "int8" in dataset.precisions
    header = ["", *(f"{n.upper()}" for n in names), *(["INT8 − FP32"] if both else [])]
    overall = []
    for metric, label in (("map50", "mAP50"), ("map50_95", "mAP50-95")):
        values = [getattr(dataset.precisions[n], metric) for n in names]
        delta = (
            [_delta_pt(getattr(dataset.precisions["fp32"], metric), getattr(dataset.precisions["int8"], metric))]
            if both
            else []
        )
        overall.append([label, *(_num(v) for v in values), *delta])
    out.append(_table(header, overall))
    classes = next(iter(dataset.precisions.values())).classes
    per_class = []
    for k, c in enumerate(classes):
        values = [dataset.precisions[n].classes[k].ap50_95 for n in names]
        delta = (
            [_delta_pt(dataset.precisions["fp32"].classes[k].ap50_95, dataset.precisions["int8"].classes[k].ap50_95)]
            if both
            else []
        )
        per_class.append([_e(c.name), str(c.objects), *(_num(v) for v in values), *delta])
    out.append("<p>AP50-95 per class:</p>" + _table(["class", "objects", *header[1:]], per_class))
    chart_series = [n for n in names if n in SERIES_CLASSES]
    out.append(
        _key(chart_series)
        + bar_chart(
            [(c.name, [dataset.precisions[n].classes[k].ap50_95 for n in chart_series]) for k, c in enumerate(classes)],
            chart_series,
            1.0,
        )
    )
    if dataset.agreement_f1 is not None:
        out.append(
            f"<p>INT8 agreement with FP32: F1 {_num(dataset.agreement_f1)}, mean IoU "
            f"{_num(dataset.agreement_mean_iou)}.</p>"
        )
    if dataset.disagreements:
        out.append(
            "<p>Frames that disagree most:</p>"
            + _table(
                ["image", "F1", "only in INT8", "only in FP32"],
                [
                    [f"<code>{_e(d.image)}</code>", _num(d.f1), str(d.only_int8), str(d.only_fp32)]
                    for d in dataset.disagreements
                ],
            )
        )
    if dataset.unreadable:
        out.append(
            "<p>Unreadable images:</p>"
            + _table(
                ["image", "reason"], [[f"<code>{_e(u.image)}</code>", _e(u.reason)] for u in dataset.unreadable], 2
            )
        )
    return "".join(out)


def _kept_float(excluded: Mapping[str, str], auto: Mapping[str, Any] | None) -> str:
    out = ["<h2 id=float>Layers kept float</h2>"]
    gains: dict[str, float | None] = {}
    if auto:
        for entry in auto.get("excluded", ()) or ():
            if isinstance(entry, Mapping) and "node" in entry:
                gain = entry.get("agreement_gain_alone")
                gains[str(entry["node"])] = float(gain) if isinstance(gain, (int, float)) else None
        known = {"target", "agreement_before", "agreement_after", "excluded"}
        out.append(
            f"<p><code>--auto-exclude</code>: INT8's agreement with FP32 on the calibration frames "
            f"{_num(auto.get('agreement_before'))} with every layer quantized, "
            f"{_num(auto.get('agreement_after'))} with the {len(gains)} layers below kept float "
            f"(target {_num(auto.get('target'))}).</p>"
        )
        extra = [
            [_e(k.replace("_", " ")), f"<code>{_e(json.dumps(v))}</code>"] for k, v in auto.items() if k not in known
        ]
        if extra:
            out.append(_table(["", ""], extra, numeric_from=2))
        if gains:
            measured = [(n, [g]) for n, g in gains.items()]
            top = max((abs(g) for g in gains.values() if g is not None), default=0.0)
            out.append(
                "<p>Agreement each layer gained when kept float alone (measured one layer at a time, before "
                "choosing; negative: INT8 agreed better with it quantized):</p>"
                + bar_chart(measured, ("gain",), top, "{:+.4f}", signed=True)
            )
    if not excluded:
        out.append("<p>None: every quantizable node is INT8.</p>")
        return "".join(out)
    reasons = Counter(excluded.values())
    out.append(
        f"<p>{len(excluded)} nodes, for {len(reasons)} reasons:</p>"
        + _table(["why", "nodes"], [[_e(r), str(n)] for r, n in reasons.most_common()], numeric_from=1)
    )
    # measured layers first (most gain first), then the other layers, the head's post-processing ops last
    ordered = sorted(
        excluded.items(),
        key=lambda item: (item[0] not in gains, -(gains.get(item[0]) or 0.0), "post-processing" in item[1]),
    )
    out.append(
        _table(
            ["node", "why", "agreement gain alone"],
            [
                [f"<code>{_e(n)}</code>", _e(why), _num(gains[n]) if gains.get(n) is not None else "not measured"]
                for n, why in ordered
            ],
            numeric_from=2,
        )
    )
    return "".join(out)


def _choice(choice: Mapping[str, Any]) -> str:
    """What method ``auto`` chose and why: each candidate's agreement with FP32 against the target."""
    out = [f"<h2 id=choice>How the ranges were chosen</h2><p>Method <b>{_e(choice.get('chosen', '?'))}</b>"]
    if choice.get("reason"):
        out.append(f": {_e(choice['reason'])}")
    out.append(
        f". Target agreement {_num(choice.get('target'))}, measured on {_num(choice.get('frames'))} "
        "calibration frames with every layer quantized.</p>"
    )
    agreement = choice.get("agreement")
    if isinstance(agreement, Mapping) and agreement:
        rows = [(str(m), [float(v) if isinstance(v, (int, float)) else None]) for m, v in agreement.items()]
        out.append(_table(["candidate", "agreement with FP32"], [[_e(m), _num(v[0])] for m, v in rows]))
    rest = {
        k: v
        for k, v in choice.items()
        if k not in ("chosen", "reason", "target", "frames", "agreement") and v is not None
    }
    if rest:
        out.append(
            _table(
                ["", ""],
                [[_e(k.replace("_", " ")), f"<code>{_e(json.dumps(v))}</code>"] for k, v in rest.items()],
                numeric_from=2,
            )
        )
    return "".join(out)


def _tensors(report: CalibrationReport, chosen: str | None = None) -> str:
    out = [
        f"<h2 id=tensors>Calibrated tensors ({len(report.tensors)})</h2>",
        "<p>Histogram of |x| over the calibration frames (log scale, at most 64 bins from 0 to the largest |x|); "
        "the red line is the cut (amax: values beyond it saturate in INT8), the shaded part what it clips, the "
        "thin grey line the largest |x| seen.</p>",
    ]
    shares: dict[str, float] = {}
    cards = []
    for name, tensor in report.tensors.items():
        method = str(getattr(tensor, "method", None) or chosen or report.method)
        summary = report.histograms.get(name)
        if summary is not None:
            share = share_above(summary, tensor.amax)
            if share is not None:
                shares[name] = share
            top = len(summary.counts) * summary.bin_width
            plot = (
                histogram_svg(summary, tensor.amax, tensor.max_abs)
                + f'<div class="ax"><span>0</span><span>{top:.3g}</span></div>'
            )
        else:
            share, plot = None, '<div class="m">no histogram kept</div>'
        clipped = f" · ≈{share * 100:.3g}% above the cut" if share is not None else ""
        sign = " · never negative" if tensor.nonnegative else ""
        ratio = tensor.amax / tensor.max_abs if tensor.max_abs else 1.0
        cards.append(
            f'<div class="t"><div class="n">{_e(name)}</div>{plot}<div class="m">{_e(method)} · cut '
            f"{tensor.amax:.4g} · max |x| {tensor.max_abs:.4g} (cut at {ratio:.0%}){clipped}{sign}</div></div>"
        )
    worst = sorted(shares.items(), key=lambda item: -item[1])[:MOST_CLIPPED]
    if worst and worst[0][1] > 0:
        out.append(
            "<p>Most clipped:</p>"
            + _table(
                ["tensor", "≈ share above the cut", "cut / max |x|"],
                [
                    [
                        f"<code>{_e(n)}</code>",
                        f"{s * 100:.3g}%",
                        f"{report.tensors[n].amax / report.tensors[n].max_abs:.3f}"
                        if report.tensors[n].max_abs
                        else "–",
                    ]
                    for n, s in worst
                    if s > 0
                ],
            )
        )
    methods = Counter(str(getattr(t, "method", None) or chosen or report.method) for t in report.tensors.values())
    out.append("<p>Methods: " + ", ".join(f"{_e(m)} ({n} tensors)" for m, n in methods.most_common()) + ".</p>")
    out.append('<div class="grid">' + "".join(cards) + "</div>")
    return "".join(out)


def _other(data: Mapping[str, Any], handled: set[str]) -> str:
    rest = {
        k: v for k, v in data.items() if k not in handled and not (v is None or isinstance(v, (str, int, float, bool)))
    }
    if not rest:
        return ""
    return "<h2 id=other>More from the report</h2>" + "".join(
        f"<h3>{_e(k.replace('_', ' '))}</h3><pre>{_e(json.dumps(v, indent=2))}</pre>" for k, v in rest.items()
    )


def render_calibration_html(report: CalibrationReport, dataset: DatasetEvaluation | None = None) -> str:
    """The report as one HTML page (see the module); ``dataset`` adds the evaluation on the user's data."""
    data = report.as_dict()
    evaluation = data.get("evaluation")
    choice = data.get("method_choice")
    choice = choice if isinstance(choice, Mapping) else None
    auto = report.auto_exclude
    if auto is None and choice is not None and isinstance(choice.get("auto_exclude"), Mapping):
        auto = choice["auto_exclude"]  # no candidate met the target: layers were kept float to reach it
    body = [
        f"<h1>INT8 calibration of {_e(report.model)}</h1>",
        f'<p class="sub">{_e(report.method)} on {report.frames_used} frames in {report.seconds} s · '
        f"written by trtserve {_e(__version__)} · "
        '<a href="#summary">summary</a> · <a href="#accuracy">FP32 against INT8</a> · '
        '<a href="#float">kept float</a> · <a href="#tensors">tensors</a></p>',
        _summary(report, data),
        _accuracy(evaluation if isinstance(evaluation, Mapping) else None, dataset),
        _choice(choice) if choice is not None else "",
        _kept_float(report.excluded, auto),
        _tensors(report, str(choice["chosen"]) if choice is not None and choice.get("chosen") else None),
        _other(
            data, {"tensors", "excluded", "auto_exclude", "artifacts", "evaluation", "method_choice", "weighted_layers"}
        ),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>INT8 calibration of {_e(report.model)}</title><style>{_STYLE}</style></head>\n<body>"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_calibration_html(path: Path, report: CalibrationReport, dataset: DatasetEvaluation | None = None) -> int:
    """Write :func:`render_calibration_html` to ``path`` atomically; returns its size in bytes."""
    from calibrators.files import atomic_write_bytes

    page = render_calibration_html(report, dataset).encode("utf-8")
    atomic_write_bytes(path, page)
    return len(page)
