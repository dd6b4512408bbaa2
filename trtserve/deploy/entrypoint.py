"""Helpers for the containers and manifests in docker/ and k8s/ (``python -m trtserve.deploy``).

``check-config FILE``  validate a server configuration the way ``trtserve serve`` reads it (file, then
                       ``TRTSERVE_*`` variables) and print what the entrypoint needs: the models and the precision.
                       A bad file exits 2 with ``trtserve: error: <file>: <key>: ...``, before any engine build.
``prometheusrule FILE`` wrap the Prometheus alert rules in FILE (``monitoring/alerts.yml``) in a Prometheus
                       Operator ``PrometheusRule`` and print it, so the cluster gets the same groups.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from trtserve.errors import ConfigError, TrtserveError

PROMETHEUSRULE_NAME = "trtserve"
GENERATED_HEADER = ("# Generated from monitoring/alerts.yml by\n"
                    "#   python -m trtserve.deploy prometheusrule monitoring/alerts.yml > {out}\n"
                    "# Do not edit: tests/deploy checks that it wraps the same groups.\n")


def resolved_settings(config_file: Path | None) -> dict[str, Any]:
    """The models and precision ``trtserve serve --config config_file`` would use (flags aside)."""
    from trtserve.serving.settings import load_server_settings

    settings = load_server_settings(config_file)
    return {"models": list(settings.models), "precision": settings.precision,
            "grace_period_s": settings.grace_period_s, "grpc_port": settings.grpc_port}


def prometheus_rule(alerts: Path) -> dict[str, Any]:
    """A ``monitoring.coreos.com/v1`` PrometheusRule holding the rule groups of a Prometheus rule file."""
    try:
        document = yaml.safe_load(alerts.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{alerts}: cannot read the alert rules: {exc.strerror}") from None
    groups = document.get("groups") if isinstance(document, dict) else None
    if not isinstance(groups, list) or not groups:
        raise ConfigError(f"{alerts}: groups: expected a non-empty list of rule groups (Prometheus rule file)")
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": PROMETHEUSRULE_NAME,
                         "labels": {"app.kubernetes.io/name": "trtserve", "app.kubernetes.io/component": "alerts"}},
            "spec": {"groups": groups}}


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as ``|`` blocks, so the generated rule reads like its source."""


_BlockDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 2) or args[0] not in ("check-config", "prometheusrule"):
        sys.stderr.write("usage: python -m trtserve.deploy check-config [FILE] | prometheusrule ALERTS_YML\n")
        return 2
    try:
        if args[0] == "check-config":
            s = resolved_settings(Path(args[1]) if len(args) == 2 else None)
            sys.stdout.write(f"models={','.join(s['models'])}\nprecision={s['precision']}\n")
        else:
            if len(args) != 2:
                sys.stderr.write("usage: python -m trtserve.deploy prometheusrule ALERTS_YML\n")
                return 2
            out = "k8s/components/prometheus-operator/prometheusrule.yaml"
            sys.stdout.write(GENERATED_HEADER.format(out=out))
            sys.stdout.write(yaml.dump(prometheus_rule(Path(args[1])), Dumper=_BlockDumper, sort_keys=False))
    except TrtserveError as exc:
        sys.stderr.write(f"trtserve: error: {exc}\n")
        return 2
    return 0

