"""The shipped alert rules and Grafana dashboard: valid for promtool, and only metric names trtserve exports."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.core import HistogramMetricFamily

from trtserve.monitoring.metrics import Metrics

from ...conftest import ROOT, require_tool

MONITORING = ROOT / "monitoring"
NAME = re.compile(r"\b(trtserve_[a-z0-9_]+|process_[a-z0-9_]+)")


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
    exprs += [v["query"].removeprefix("label_values(").split(",")[0] for v in dashboard["templating"]["list"]
              if v["type"] == "query"]
    return exprs


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
    exprs = [e.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$job", ".*")
             for e in dashboard_expressions()]
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
