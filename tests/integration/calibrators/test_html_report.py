"""``calibration.report.html``: self-contained (no script, no URL), every model-given string escaped, histograms with
the cut where the report puts it, FP32 against INT8 per class, the layers kept float with their gain, bounded size;
and ``trtserve calibrate`` writing it beside the JSON report."""

from __future__ import annotations

import html
import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibrators.histogram import AbsHistogram, HistogramSummary
from trtserve.calibration.dataset_eval import ClassScores, DatasetEvaluation, FrameDisagreement, PrecisionScores
from trtserve.calibration.html_report import (
    HTML_REPORT_FILE,
    render_calibration_html,
    share_above,
    write_calibration_html,
)
from trtserve.calibration.report import CalibratedTensor, CalibrationArtifacts, CalibrationReport, PrecisionComparison
from trtserve.cli import main
from trtserve.datasets.synthetic import CALIBRATION_SEED, evaluation_set, render_scene, write_coco

from ...conftest import ENGINES

HOSTILE_TENSOR = "<script>alert('t')</script>&amp;\"x\""
HOSTILE_NODE = "<img src=x onerror=alert(1)>&"
HOSTILE_CLASS = "</td><b>cat & dog</b>"
HOSTILE_IMAGE = "frames/<a href='http://example.com'>.png"


class Page(HTMLParser):
    """Every tag, attribute and piece of text of a page (entities decoded, as a browser shows them)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in_style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.text).append(data)


def summary_of(values: np.ndarray) -> tuple[HistogramSummary, float]:
    hist = AbsHistogram()
    hist.update(values)
    return hist.summary(), hist.max_abs


def hand_made_report(tensors: int = 3, excluded: int = 2) -> CalibrationReport:
    rng = np.random.default_rng(1)
    ranges, summaries = {}, {}
    for k in range(tensors):
        name = HOSTILE_TENSOR if k == 0 else f"/layer{k}/Relu_output_0"
        summary, max_abs = summary_of(rng.exponential(1.0 + k % 5, 20_000).astype(np.float32))
        ranges[name] = CalibratedTensor(amax=max_abs / 2, max_abs=max_abs, nonnegative=True)
        summaries[name] = summary
    nodes = {HOSTILE_NODE: "final output conv of the detection head"}
    nodes.update({f"/head/n{k}": "detection head post-processing (Concat)" for k in range(excluded - 1)})
    return CalibrationReport(
        model="m<&>",
        method="entropy",
        frames_used=40,
        frames_skipped=1,
        batches=5,
        seconds=9.5,
        onnx_opset=17,
        tensors=ranges,
        excluded=nodes,
        auto_exclude={
            "target": 0.99,
            "agreement_before": 0.9,
            "agreement_after": 0.995,
            "excluded": [{"node": HOSTILE_NODE, "agreement_gain_alone": 0.0512}],
        },
        artifacts=CalibrationArtifacts("model.int8.onnx", "model.int8.tensorrt.onnx", {"10.3.0": "c.cache"}),
        evaluation=PrecisionComparison(0.9063, 0.7737, 0.9011, 0.7699, 0.9967, 0.9765, 30),
        histograms=summaries,
    )


def dataset_evaluation() -> DatasetEvaluation:
    def scores(ap: tuple[float, float]) -> PrecisionScores:
        return PrecisionScores(
            0.8,
            0.6,
            (
                ClassScores(HOSTILE_CLASS, 12, 0.9, ap[0]),
                ClassScores("ring", 7, 0.8, ap[1]),
                ClassScores("absent", 0, None, None),
            ),
            1.0,
        )

    return DatasetEvaluation(
        "m",
        "data/instances.json",
        "coco",
        20,
        19,
        (),
        {"fp32": scores((0.7, 0.5)), "int8": scores((0.68, 0.51))},
        3.0,
        agreement_f1=0.95,
        agreement_mean_iou=0.9,
        disagreements=(FrameDisagreement(HOSTILE_IMAGE, 0.5, 1, 2),),
    )


def assert_self_contained(page: str, texts: tuple[str, ...] = ()) -> Page:
    """Checks ``page`` references nothing outside itself; ``texts`` may mention URLs (as escaped text)."""
    parsed = Page(page)
    assert not {"script", "link", "img", "iframe", "object", "embed", "base", "form"} & set(parsed.tags)
    for key, value in parsed.attrs:
        assert not key.startswith("on"), (key, value)  # no event handler attribute
        assert key not in ("src", "srcset", "action", "xlink:href"), (key, value)
        if key == "href":
            assert value.startswith("#"), value  # in-page links only
    style = "".join(parsed.styles)
    assert "url(" not in style and "@import" not in style and "@font-face" not in style
    assert "default-src 'none'" in page  # the browser refuses anything external too
    bare = page
    for t in texts:
        bare = bare.replace(html.escape(t, quote=True), "")
    assert not re.search(r"(?i)(https?:|//[a-z])", bare), "an external reference"
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        ET.fromstring(svg)  # every drawing is well-formed
    return parsed


def test_the_page_is_self_contained_and_escapes_every_name_from_the_model() -> None:
    page = render_calibration_html(hand_made_report(), dataset_evaluation())
    assert "<script>" not in page and "<img" not in page and "<b>cat" not in page
    parsed = assert_self_contained(page, (HOSTILE_IMAGE,))
    text = "\n".join(parsed.text)
    for name in (HOSTILE_TENSOR, HOSTILE_NODE, HOSTILE_CLASS, HOSTILE_IMAGE, "m<&>"):
        assert name in text, name  # shown as the text it is


def test_histograms_mark_the_cut_at_amax_and_show_the_method() -> None:
    report = hand_made_report()
    page = render_calibration_html(report)
    cards = re.findall(r'<div class="t">.*?</div></div>', page, re.S)
    assert len(cards) == len(report.tensors)
    for card, (name, tensor) in zip(cards, report.tensors.items()):
        summary = report.histograms[name]
        assert len(summary.counts) <= 64
        cut = float(re.search(r'<rect class="k" fill="[^"]+" x="([\d.]+)"', card).group(1)) + 0.2  # a 0.4-bin wide line
        assert cut == pytest.approx(tensor.amax / summary.bin_width, abs=0.01)
        assert "entropy · cut" in card and f"max |x| {tensor.max_abs:.4g}" in card
        bins = re.search(r'viewBox="0 0 (\d+) 100"', card).group(1)
        assert int(bins) == len(summary.counts)
    assert "entropy (3 tensors)" in page


def test_kept_float_layers_with_their_gain_and_the_precision_comparison() -> None:
    page = render_calibration_html(hand_made_report(excluded=30), dataset_evaluation())
    text = " ".join(Page(page).text)
    assert "30 nodes, for 2 reasons" in text
    assert re.search(r"detection head post-processing \(Concat\)\s*29", text)
    assert "0.0512" in text and "+0.0512" in text  # the measured gain, in the table and on the chart
    assert "with every layer quantized" in text and "0.995" in text and "target 0.99" in text
    assert "29 more rows" not in text and "10 more rows" in text  # long tables are folded after 20 rows
    # the synthetic held-out comparison, and the per-class one on the user's data
    assert re.search(r"mAP50-95\s*0.7737\s*0.7699\s*-0.38 pt", text)
    assert re.search(re.escape(HOSTILE_CLASS) + r"\s*12\s*0.7\s*0.68\s*-2.00 pt", text)
    assert re.search(r"ring\s*7\s*0.5\s*0.51\s*\+1.00 pt", text)
    assert re.search(r"absent\s*0\s*–\s*–\s*–", text)
    assert "F1 0.95, mean IoU 0.9" in text and HOSTILE_IMAGE in text


def test_the_method_auto_chose_and_why_and_the_weighted_layers() -> None:
    from trtserve.calibration.report import LayerCount

    report = hand_made_report()
    choice = {
        "chosen": "percentile",
        "target": 0.95,
        "frames": 64,
        "agreement": {"entropy": 0.9261, "percentile": 0.958},
        "agreement_after": 0.958,
        "reason": "entropy agreed 0.9261 < 0.95; <percentile> met it",
        "auto_exclude": None,
    }
    auto = CalibrationReport(
        **{
            **{f: getattr(report, f) for f in report.__dataclass_fields__},
            "method": "auto",
            "method_choice": choice,
            "weighted_layers": LayerCount(46, 40, 6, 150),
        }
    )
    text = re.sub(r"\s+", " ", " ".join(Page(render_calibration_html(auto)).text))
    assert "Method percentile : entropy agreed 0.9261 < 0.95; <percentile> met it" in text
    assert "entropy 0.9261 percentile 0.958" in text and "Target agreement 0.95" in text
    assert "percentile (3 tensors)" in text  # the ranges written are the chosen method's
    assert "kept float: 6 of 46 weighted layers (+ post-processing)" in text


def test_without_an_evaluation_or_histograms_the_page_says_so() -> None:
    report = hand_made_report()
    bare = CalibrationReport(
        **{
            **{f: getattr(report, f) for f in report.__dataclass_fields__},
            "evaluation": None,
            "auto_exclude": None,
            "histograms": {},
        }
    )
    text = re.sub(r"\s+", " ", " ".join(Page(render_calibration_html(bare)).text))
    assert "Not measured: run trtserve calibrate with --eval-images N or --eval-data DIR" in text
    assert text.count("no histogram kept") == len(report.tensors)


def test_the_size_stays_bounded_for_hundreds_of_tensors(tmp_path: Path) -> None:
    small = write_calibration_html(tmp_path / "small.html", hand_made_report(tensors=50, excluded=100))
    large = write_calibration_html(tmp_path / "large.html", hand_made_report(tensors=550, excluded=100))
    per_tensor = (large - small) / 500
    assert per_tensor < 1500 and large < 1_000_000, (small, large, per_tensor)
    assert (tmp_path / "large.html").stat().st_size == large


def test_summary_merges_bins_exactly_down_to_64() -> None:
    values = np.random.default_rng(0).normal(0, 3, 50_000).astype(np.float32)
    hist = AbsHistogram()
    for chunk in np.split(values, 5):
        hist.update(chunk)
    summary = hist.summary()
    assert hist.counts is not None and len(summary.counts) <= 64 and sum(summary.counts) == hist.counts.sum()
    group = round(summary.bin_width / hist.bin_width)
    assert summary.bin_width == pytest.approx(group * hist.bin_width)
    assert summary.counts[0] == hist.counts[:group].sum()
    assert len(summary.counts) * summary.bin_width >= hist.max_abs
    assert AbsHistogram().summary() == HistogramSummary(0.0, ())
    zeros = AbsHistogram()
    zeros.update(np.zeros(10, np.float32))
    assert zeros.summary() == HistogramSummary(0.0, (10,))


def test_share_above_the_cut() -> None:
    summary = HistogramSummary(1.0, (50, 30, 20))
    assert share_above(summary, 1.0) == pytest.approx(0.5)  # on a bin edge: exact
    assert share_above(summary, 2.5) == pytest.approx(0.1)  # half of the last bin
    assert share_above(summary, 3.0) == 0.0
    assert share_above(HistogramSummary(0.0, ()), 1.0) is None


# ---- the calibrate flow on a copy of the bundled model


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ENGINES / "shapes", root / "shapes", ignore=shutil.ignore_patterns("*.int8*", "calibration*"))
    text = (root / "shapes" / "model.yaml").read_text()
    (root / "shapes" / "model.yaml").write_text(text.split("artifacts:")[0])
    return root


def test_calibrate_writes_the_page_beside_the_json_report(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(16):
        cv2.imwrite(str(frames / f"{i:03d}.png"), render_scene(CALIBRATION_SEED, i).image_bgr)
    annotations = write_coco(list(evaluation_set(6)), tmp_path / "coco")
    code = main(
        [
            "--repository",
            str(repo),
            "calibrate",
            "shapes",
            "--images",
            str(frames),
            "--batch",
            "8",
            "--eval-data",
            str(annotations.parent),
            "--eval-annotations",
            str(annotations),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    model_dir = repo / "shapes"
    page_path = model_dir / HTML_REPORT_FILE
    assert f"report to look at: {page_path}" in out
    report = json.loads((model_dir / "calibration.report.json").read_text())
    page = page_path.read_text(encoding="utf-8")
    parsed = assert_self_contained(page)
    text = "\n".join(parsed.text)
    assert all(name in text for name in report["tensors"])
    assert all(node in text for node in list(report["excluded"])[:20])  # the first rows, before the fold
    assert page.count('<svg class="h"') == len(report["tensors"])  # one histogram per calibrated tensor
    assert "AP50-95 per class" in text and all(c in text for c in ("circle", "cross", "ring"))
    assert "FP32 against INT8" in text and "INT8 agreement with FP32: F1" in text
