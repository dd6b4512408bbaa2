"""The rendered kustomize overlays: valid Kubernetes objects and the properties a platform engineer relies on."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from tests.deploy import kustomize_py
from tests.deploy.conftest import EXAMPLES, K8S, OVERLAYS, ROOT, real_kustomize, render_with
from trtserve.deploy.entrypoint import resolved_settings
from trtserve.serving.server import ServerSettings

# Oldest Kubernetes minor these manifests support (native gRPC probes are GA since 1.27); the schemas come
# with kubernetes-validate, offline.
KUBERNETES_VERSION = "1.27.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # no JSON schema in kubernetes-validate: checked structurally
DEFAULT_METRICS_PORT = 8002  # the server's metrics port when its configuration does not name one
# the recommended labels (kubernetes.io/docs/concepts/overview/working-with-objects/common-labels)
RECOMMENDED_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                      "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"}
SELECTOR_LABELS = {"app.kubernetes.io/name": "trtserve", "app.kubernetes.io/instance": "trtserve"}


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment", "trtserve")["spec"]["template"]["spec"]
    return spec


def all_containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = pod_spec(docs)
    return [*spec.get("initContainers", []), *spec["containers"]]


def server_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(one(docs, "ConfigMap")["data"]["server.yaml"])
    return data


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_default_overlays_need_no_crd(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """What `kubectl apply -k k8s/overlays/<overlay>` sends: every object is of a built-in Kubernetes 1.27 kind and
    validates strictly against its schema, so a cluster without the Prometheus Operator (or any other CRD) takes it."""
    kinds = set()
    for doc in rendered[overlay]:
        kinds.add(doc["kind"])
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # SchemaNotFoundError for a CRD's kind
    assert kinds == {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler"}


@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_validate_and_add_the_opt_in_components(examples: dict[str, list[dict[str, Any]]],
                                                        example: str) -> None:
    kinds = set()
    for doc in examples[example]:
        kinds.add(doc["kind"])
        if doc["kind"] in CRD_KINDS:  # the same check refuses them: they need the Operator's CRDs
            with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert CRD_KINDS | {"NetworkPolicy", "Deployment"} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_replicas_where_the_hpa_owns_the_count(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        owned = one(docs, target["kind"], target["name"])
        assert "replicas" not in owned["spec"], f"{target['name']}: every apply would reset the HPA's scale"


def _all_rendered(rendered: dict[str, list[dict[str, Any]]],
                  examples: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {**rendered, **{f"examples/{k}": v for k, v in examples.items()}}


def test_every_object_has_the_recommended_labels(rendered: dict[str, list[dict[str, Any]]],
                                                 examples: dict[str, list[dict[str, Any]]]) -> None:
    found = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert found is not None
    version = found.group(1)
    for name, docs in _all_rendered(rendered, examples).items():
        for doc in docs:
            labels = doc["metadata"].get("labels", {})
            where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
            assert RECOMMENDED_LABELS <= set(labels), (where, sorted(RECOMMENDED_LABELS - set(labels)))
            assert labels["app.kubernetes.io/version"] == version, where
            assert SELECTOR_LABELS.items() <= labels.items(), where
            assert labels["app.kubernetes.io/part-of"] == "trtserve", where
        template = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert RECOMMENDED_LABELS <= set(template), name
        images = {c["image"].rsplit(":", 1)[1] for c in all_containers(docs)}
        assert all(tag.startswith(version + "-") for tag in images), (name, images)


def test_selectors_are_minimal_and_immutable_safe(rendered: dict[str, list[dict[str, Any]]],
                                                  examples: dict[str, list[dict[str, Any]]]) -> None:
    """Selectors hold name and instance only: a Deployment's selector cannot change after creation, so a label that
    changes between releases (version) or is not the same on every pod must never be in one."""
    for name, docs in _all_rendered(rendered, examples).items():
        deployment = one(docs, "Deployment")
        template = deployment["spec"]["template"]["metadata"]["labels"]
        selectors = [deployment["spec"]["selector"]["matchLabels"],
                     *[s["labelSelector"]["matchLabels"] for s in pod_spec(docs)["topologySpreadConstraints"]],
                     one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                     *[d["spec"]["selector"] for d in docs if d["kind"] == "Service"],
                     *[d["spec"]["podSelector"]["matchLabels"] for d in docs if d["kind"] == "NetworkPolicy"]]
        for selector in selectors:
            assert selector == SELECTOR_LABELS, (name, selector)
            assert selector.items() <= template.items(), name


def test_schema_validation_catches_a_misspelled_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = one(rendered["cpu"], "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"grpc": {"port": 8001}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_native_grpc_probes_on_the_grpc_port(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    server = pod_spec(docs)["containers"][0]
    port = server_config(docs)["grpc_port"]
    assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in server["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == port, probe
        assert server[probe]["grpc"].get("service", "") == "", probe
    startup = server["startupProbe"]
    # long enough for a model load, and on accelerators for an engine build done in the server container
    assert startup["periodSeconds"] * startup["failureThreshold"] >= (1800 if overlay == "jetson" else 900)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_requests_and_limits(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for container in all_containers(rendered[overlay]):
        resources = container["resources"]
        for key in ("cpu", "memory"):
            assert key in resources["requests"] and key in resources["limits"], (container["name"], key)
        gpus = resources["limits"].get("nvidia.com/gpu")
        assert gpus == (1 if overlay == "gpu" else None), container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_tags_pinned(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for container in all_containers(rendered[overlay]):
        image = container["image"]
        if "@sha256:" in image:
            continue
        repo_tail = image.rsplit("/", 1)[-1]
        assert ":" in repo_tail, f"{image}: untagged"
        assert repo_tail.rsplit(":", 1)[1] != "latest", f"{image}: latest"
    tags = {c["image"].rsplit(":", 1)[1] for c in all_containers(rendered[overlay])}
    assert len(tags) == 1 and next(iter(tags)).endswith({"cpu": "-cpu", "gpu": "-gpu", "jetson": "-jetson-r36.4.0"}
                                                         [overlay])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_non_root_read_only_no_escalation(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    spec = pod_spec(rendered[overlay])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    mounts_needed = {"/tmp", "/var/lib/trtserve"}
    for container in all_containers(rendered[overlay]):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc.get("privileged", False) is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert mounts_needed <= writable, container["name"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    cache = volumes["engine-cache"]
    assert ("hostPath" in cache) if overlay == "jetson" else ("emptyDir" in cache)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_engine_build_init_container_on_accelerators(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    spec = pod_spec(rendered[overlay])
    inits = spec.get("initContainers", [])
    if overlay == "cpu":
        assert inits == []  # ONNX Runtime runs the ONNX models as they are
        return
    (init,) = inits
    assert init["args"] == ["prepare"]
    assert init["image"] == spec["containers"][0]["image"]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["TRTSERVE_MODEL_REPOSITORY"] == "/var/lib/trtserve/engines"
    assert {m["name"] for m in init["volumeMounts"]} >= {"engine-cache", "config"}
    if overlay == "jetson":
        assert spec["runtimeClassName"] == "nvidia"
        assert spec["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    else:
        assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_config_in_the_configmap_is_valid(rendered: dict[str, list[dict[str, Any]]], overlay: str,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cm = one(rendered[overlay], "ConfigMap")
    for name in list(os.environ):
        if name.startswith("TRTSERVE_"):
            monkeypatch.delenv(name)
    path = tmp_path / "server.yaml"
    path.write_text(cm["data"]["server.yaml"])
    settings = resolved_settings(path)  # raises ConfigError on a bad key, as the pod would at start
    assert settings["models"] == ["shapes"]
    volume = next(v for v in pod_spec(rendered[overlay])["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    assert {i["key"] for i in volume["configMap"]["items"]} == set(cm["data"])


@pytest.mark.parametrize("example", EXAMPLES)
def test_servicemonitor_scrapes_the_servers_metrics_port(examples: dict[str, list[dict[str, Any]]],
                                                         example: str) -> None:
    docs = examples[example]
    config = server_config(docs)
    metrics_port = config.get("metrics_port", getattr(ServerSettings(), "metrics_port", DEFAULT_METRICS_PORT))
    server = pod_spec(docs)["containers"][0]
    assert {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"} in server["ports"]
    service = one(docs, "Service", "trtserve")
    (metrics,) = [p for p in service["spec"]["ports"] if p["targetPort"] == "metrics"]
    monitor = one(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == metrics["name"]
    assert endpoint["path"] == "/metrics"
    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    assert selector["matchLabels"].items() <= service["metadata"]["labels"].items()
    # the headless Service must not match, or every pod would be scraped twice
    headless = one(docs, "Service", "trtserve-grpc")
    assert headless["spec"]["clusterIP"] == "None"
    assert not selector["matchLabels"].items() <= headless["metadata"]["labels"].items()
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_annotated_for_a_prometheus_without_the_operator(rendered: dict[str, list[dict[str, Any]]],
                                                                  overlay: str) -> None:
    docs = rendered[overlay]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    port = server_config(docs).get("metrics_port", DEFAULT_METRICS_PORT)
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                           "prometheus.io/path": "/metrics"}


@pytest.mark.parametrize("example", EXAMPLES)
def test_network_policy_admits_only_grpc_and_the_metrics_scrape(examples: dict[str, list[dict[str, Any]]],
                                                                example: str) -> None:
    docs = examples[example]
    policy = one(docs, "NetworkPolicy")
    template = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= template.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # ingress is default-deny for the selected pods
    ports = {p["name"]: p["containerPort"] for p in pod_spec(docs)["containers"][0]["ports"]}
    rules = policy["spec"]["ingress"]
    admitted = {p["port"]: rule["from"] for rule in rules for p in rule["ports"]}
    assert all(p["protocol"] == "TCP" for rule in rules for p in rule["ports"])
    assert set(admitted) == set(ports.values())  # the container's ports (grpc, metrics, http), nothing else
    (scraper,) = admitted[ports["metrics"]]
    assert scraper["namespaceSelector"]["matchLabels"] and scraper["podSelector"]["matchLabels"]  # not everyone


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    spec = pod_spec(docs)
    grace_period_s = server_config(docs)["grace_period_s"]
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # preStop, then server.stop(grace) and the pipelines' drain (each up to grace_period_s), then a margin
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + 2 * grace_period_s


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topology_spread_and_disruption_budget(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    labels = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    spreads = pod_spec(docs)["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spreads} >= {"kubernetes.io/hostname"}
    assert all(s["labelSelector"]["matchLabels"] == labels for s in spreads)
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert "minAvailable" not in pdb["spec"]  # a single replica must not block node drains


def adapter_rule() -> dict[str, Any]:
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert values["rules"]["default"] is False
    return dict(rule)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_metric_is_the_adapter_rules_output(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    hpa = one(rendered[overlay], "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "trtserve"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    rule = adapter_rule()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}  # a per-pod metric


def test_adapter_rule_weights_queue_time_by_frames_over_all_models() -> None:
    rule = adapter_rule()
    query = " ".join(rule["metricsQuery"].split())
    numerator, denominator = query.split(" / ")
    assert numerator.startswith("sum by (<<.GroupBy>>)") and "trtserve_stage_duration_seconds_sum" in numerator
    assert "trtserve_stage_duration_seconds_count" in denominator and "sum by (<<.GroupBy>>)" in denominator
    assert 'stage="queue"' in numerator and 'stage="queue"' in denominator
    assert "avg(" not in query  # an average of per-model ratios is what under-reports (values.yaml)
    assert rule["seriesQuery"].startswith("trtserve_stage_duration_seconds_count{")


def test_prometheusrule_wraps_the_alert_rule_groups() -> None:
    rule = yaml.safe_load((K8S / "components" / "prometheus-operator" / "prometheusrule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    alerts = ROOT / "monitoring" / "alerts.yml"
    if not alerts.is_file():
        pytest.skip("monitoring/alerts.yml (the metrics issue) is not in this tree; nothing to compare yet")
    from trtserve.deploy.entrypoint import prometheus_rule

    assert rule["spec"]["groups"] == prometheus_rule(alerts)["spec"]["groups"], (
        "k8s/components/prometheus-operator/prometheusrule.yaml is stale: regenerate it with "
        "python -m trtserve.deploy prometheusrule monitoring/alerts.yml > "
        "k8s/components/prometheus-operator/prometheusrule.yaml")


def test_prometheusrule_generator(tmp_path: Path) -> None:
    from trtserve.deploy.entrypoint import prometheus_rule
    from trtserve.errors import TrtserveError

    groups = [{"name": "trtserve", "rules": [{"alert": "X", "expr": "up == 0", "for": "5m"}]}]
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump({"groups": groups}))
    rule = prometheus_rule(tmp_path / "alerts.yml")
    assert rule["spec"]["groups"] == groups and rule["metadata"]["name"] == "trtserve"
    (tmp_path / "empty.yml").write_text("groups: []\n")
    with pytest.raises(TrtserveError, match="groups"):
        prometheus_rule(tmp_path / "empty.yml")


@pytest.mark.parametrize("overlay", [*(f"overlays/{o}" for o in OVERLAYS), *(f"examples/{e}" for e in EXAMPLES)])
def test_renderer_matches_kustomize(overlay: str) -> None:
    found = real_kustomize()
    if found is None:
        pytest.skip("no kustomize v4+ here (kustomize or kubectl kustomize): the Python renderer is used alone")

    def key(d: dict[str, Any]) -> tuple[str, str, str]:
        return d["apiVersion"], d["kind"], d["metadata"]["name"]

    real = {key(d): d for d in render_with(found[0])(K8S / overlay)}
    mine = {key(d): d for d in kustomize_py.build(K8S / overlay)}
    assert mine == real, f"the Python renderer departs from {found[1]}"


def test_model_config_in_the_configmap_loads_and_tracks_the_repository(tmp_path: Path) -> None:
    import shutil

    from trtserve.repository import ModelRepository

    shipped = yaml.safe_load((ROOT / "engines" / "shapes" / "model.yaml").read_text())
    override_text = (K8S / "base" / "models" / "shapes.yaml").read_text()
    override = yaml.safe_load(override_text)
    # only the tunables may differ; artifacts, input and classes must follow engines/shapes/model.yaml
    assert {k: v for k, v in override.items() if k != "head"} == {k: v for k, v in shipped.items() if k != "head"}
    assert override["head"]["type"] == shipped["head"]["type"]
    shutil.copytree(ROOT / "engines" / "shapes", tmp_path / "shapes")
    (tmp_path / "shapes" / "model.yaml").write_text(override_text)
    config = ModelRepository(tmp_path).get("shapes")
    assert config.head.score_threshold == override["head"]["score_threshold"]
