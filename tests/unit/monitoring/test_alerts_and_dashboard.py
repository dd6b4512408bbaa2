"""The shipped alert rules and Grafana dashboard: valid for promtool, and only metric names trtserve exports."""

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.core import HistogramMetricFamily

from trtserve.monitoring.metrics import Metrics

from ...conftest import ROOT, require_tool

MONITORING = ROOT / "monitoring"
NAME = re.compile(r"\b(trtserve_[a-z0-9_]+|process_[a-z0-9_]+|grpc_server_[a-z0-9_]+)")
# every series a dashboard query reads, followed by its selector
SERIES = re.compile(r"\b(trtserve_[a-z0-9_]+|process_[a-z0-9_]+|up)(\{[^}]*\})?")
SELECTS_TARGET = ('job=~"$job"', 'namespace=~"$namespace"', 'pod=~"$pod"')
README = ROOT / "README.md"


def promtool() -> str:
    return require_tool("promtool", "prometheus")


def exported_names() -> set[str]:
    """Every series name trtserve can export, with the suffixes Prometheus adds."""
    metrics = Metrics()
    names = {"trtserve_gpu_utilization_ratio", "trtserve_gpu_memory_used_bytes", "trtserve_gpu_memory_total_bytes"}
    for family in metrics.registry.collect():
        if isinstance(family, HistogramMetricFamily) or family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            names |= {f"{family.name}_total"}
        else:
            names.add(family.name)
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana" / "trtserve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"].removeprefix("label_values(").rsplit(",", 1)[0] for v in dashboard["templating"]["list"]
              if v["type"] == "query"]
    return exprs


def grafana_to_promql(expr: str) -> str:
    for variable in ("$model", "$job", "$namespace", "$pod"):
        expr = expr.replace(variable, ".*")
    return expr.replace("$__rate_interval", "1m")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MONITORING / "grafana" / "trtserve.json").read_text())
    return data


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [r for g in rules["groups"] for r in g["rules"]]


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(MONITORING / "alerts.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run([tool, "test", "rules", "alerts.test.yml"], cwd=MONITORING, capture_output=True,
                           text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel query (as a recording rule, Grafana's variables substituted)."""
    exprs = [grafana_to_promql(e) for e in dashboard_expressions()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": e}
                                                        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_queries_only_use_exported_metric_names(source: str) -> None:
    exprs = alert_expressions() if source == "alerts" else dashboard_expressions()
    used = {n for e in exprs for n in NAME.findall(e)}
    unknown = sorted(used - exported_names())
    assert used and not unknown, f"{source} query metrics trtserve does not export: {unknown}"


def test_every_dashboard_query_selects_job_namespace_and_pod() -> None:
    """$job, $namespace and $pod narrow every panel alike; a query that forgets one shows other pods' series."""
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    assert {"datasource", "job", "namespace", "pod", "model"} <= variables
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            found = SERIES.findall(target["expr"])
            assert found, (panel["title"], target["expr"])
            for name, selector in found:
                missing = [m for m in SELECTS_TARGET if m not in selector]
                assert not missing, (panel["title"], name, missing)


def test_dashboard_says_whether_it_is_up() -> None:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    assert any("trtserve_model_ready{" in e for e in exprs)
    assert any("trtserve_build_info{" in e for e in exprs)
    assert any(e.startswith("sum(up{") for e in exprs)
    up_row = next(i for i, p in enumerate(dashboard()["panels"]) if p["type"] == "row")
    assert dashboard()["panels"][up_row]["title"] == "Is it up?"  # read top-down: first


def _panel(title_start: str) -> dict[str, Any]:
    (panel,) = [p for p in dashboard()["panels"] if p["title"].startswith(title_start)]
    return panel


def _alert_threshold(name: str) -> float:
    (rule,) = [r for r in alert_rules() if r.get("alert") == name]
    found = re.search(r"[<>]\s*([0-9.]+)\s*(?:\n|and|$)", rule["expr"])
    assert found, rule["expr"]
    return float(found.group(1))


def test_threshold_lines_sit_at_the_alerts_levels() -> None:
    for title, alert in (("Agreement F1", "TrtserveDriftAgreementLow"),
                         ("End-to-end latency", "TrtserveP99LatencyHigh")):
        defaults = _panel(title)["fieldConfig"]["defaults"]
        assert defaults["custom"]["thresholdsStyle"]["mode"].startswith("line"), title
        steps = [s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None]
        assert steps == [_alert_threshold(alert)], (title, steps)


def test_cores_and_bytes_are_on_separate_axes() -> None:
    for panel in (p for p in dashboard()["panels"] if p["type"] == "timeseries"):
        units = {panel["fieldConfig"]["defaults"].get("unit")}
        overrides = [{p["id"]: p["value"] for p in o["properties"]} for o in panel["fieldConfig"]["overrides"]]
        units |= {o["unit"] for o in overrides if "unit" in o}
        if len(units) == 1:
            continue
        # a panel mixing units gives each its own axis
        default_side = panel["fieldConfig"]["defaults"].get("custom", {}).get("axisPlacement", "auto")
        sides = {o.get("custom.axisPlacement") for o in overrides if "unit" in o}
        assert default_side not in sides and None not in sides, panel["title"]
    cpu = _panel("Process CPU")
    (memory,) = cpu["fieldConfig"]["overrides"]
    (memory_target,) = [t for t in cpu["targets"] if t["refId"] == memory["matcher"]["options"]]
    assert memory_target["expr"].startswith("process_resident_memory_bytes")
    assert {"id": "unit", "value": "bytes"} in memory["properties"]
    assert cpu["fieldConfig"]["defaults"]["custom"]["axisLabel"] == "cores"


def test_every_alert_has_a_runbook_section_in_the_readme() -> None:
    anchors = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
               for line in README.read_text().splitlines() if line.startswith("#")}
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base.endswith("/README.md") and anchor == rule["alert"].lower(), url
        assert anchor in anchors, f"README.md has no section {rule['alert']} for {url}"


def test_error_rate_alert_counts_server_faults_only() -> None:
    (rule,) = [r for r in alert_rules() if r.get("alert") == "TrtserveErrorRateHigh"]
    numerator = rule["expr"].split("/")[0]
    codes = set(re.search(r'code=~"([^"]+)"', numerator).group(1).split("|"))  # type: ignore[union-attr]
    assert codes == {"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNAVAILABLE"}
    assert rule["labels"]["severity"] == "critical"
