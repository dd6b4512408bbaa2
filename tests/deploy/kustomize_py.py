"""A small kustomize-compatible renderer for the features k8s/ uses, for machines without kustomize.

Why it exists: CI runs on a fresh machine that may lack ``kubectl``/``kustomize`` (Debian's only kustomize is the
one inside kubernetes-client 1.20, kustomize v2.0.3, which knows neither ``components`` nor ``patches``), and no
PyPI package ships a usable binary. ``test_renderer_matches_kustomize`` checks that it renders exactly what the real
kustomize renders wherever one is installed.

Supported, with kustomize's semantics: ``resources`` (files and kustomization folders), ``components``,
``configMapGenerator`` with ``files`` (content-hash name suffix, computed as kustomize does), ``images``
(``newName``/``newTag``/``digest``), ``patches`` holding RFC 6902 JSON patches with a ``target``, ``labels`` (with
``includeSelectors`` / ``includeTemplates``, on the kinds k8s/ uses), and the rewrite of ConfigMap references in pod
templates to the hashed name. Anything else in a kustomization is an error.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "configMapGenerator", "images", "patches",
                       "labels"}
_WORKLOADS = {"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"}
# where kustomize's labels transformer puts selector labels (its commonLabels field specs), for these kinds
_SELECTOR_PATHS = {"Service": [("spec", "selector")],
                   "PodDisruptionBudget": [("spec", "selector", "matchLabels")],
                   "NetworkPolicy": [("spec", "podSelector", "matchLabels")]}


class KustomizeError(Exception):
    pass


def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _go_json(value: Any) -> str:
    """json.Marshal of Go: sorted keys, no spaces, <, >, & and U+2028/9 escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def configmap_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix for a generated ConfigMap (api/hasher): sha256 of its JSON, 10 chars re-encoded.

    kustomize hashes the generated object before it has a name, so the name in the hashed JSON is empty
    (checked against kustomize v5.5.0 by test_renderer_matches_kustomize).
    """
    digest = hashlib.sha256(_go_json({"data": data, "kind": "ConfigMap", "name": ""}).encode()).hexdigest()
    return digest[:10].translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, leaf = _pointer(op["path"])
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if leaf == "-" else int(leaf)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[index]
            else:
                raise KustomizeError(f"unsupported JSON patch op {kind!r}")
        else:
            if kind in ("add", "replace"):
                if kind == "replace" and leaf not in node:
                    raise KustomizeError(f"replace of missing path {op['path']}")
                node[leaf] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[leaf]
            else:
                raise KustomizeError(f"unsupported JSON patch op {kind!r}")


def _matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    checks = {"kind": doc["kind"], "name": doc["metadata"]["name"], "group": group, "version": version}
    return all(checks[k] == v for k, v in target.items() if k in checks)


def _containers(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += [c for c in value if isinstance(c, dict)]
            else:
                found += _containers(value)
    elif isinstance(node, list):
        for item in node:
            found += _containers(item)
    return found


def _set_images(docs: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    for container in (c for d in docs for c in _containers(d)):
        image = container.get("image", "")
        name = image.split("@")[0]
        if ":" in name.rsplit("/", 1)[-1]:
            name = name.rsplit(":", 1)[0]
        for rule in images:
            if rule["name"] != name:
                continue
            new = rule.get("newName", name)
            if "digest" in rule:
                container["image"] = f"{new}@{rule['digest']}"
            elif "newTag" in rule:
                container["image"] = f"{new}:{rule['newTag']}"
            else:
                container["image"] = new + image[len(name):]


def _set(node: dict[str, Any], path: tuple[str, ...], pairs: dict[str, str], create: bool) -> None:
    for key in path:
        if key not in node:
            if not create:
                return
            node[key] = {}
        node = node[key]
    node.update(pairs)


def _apply_labels(docs: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        unknown = set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
        if unknown:
            raise KustomizeError(f"labels: fields this renderer does not implement: {sorted(unknown)}")
        pairs = {str(k): str(v) for k, v in entry["pairs"].items()}
        selectors = bool(entry.get("includeSelectors", False))
        templates = selectors or bool(entry.get("includeTemplates", False))
        for doc in docs:
            _set(doc, ("metadata", "labels"), pairs, create=True)
            kind = doc["kind"]
            if kind in _WORKLOADS and templates:
                _set(doc, ("spec", "template", "metadata", "labels"), pairs, create=True)
            if not selectors:
                continue
            if kind in _WORKLOADS:
                _set(doc, ("spec", "selector", "matchLabels"), pairs, create=True)
                for spread in doc["spec"]["template"].get("spec", {}).get("topologySpreadConstraints", []):
                    _set(spread, ("labelSelector", "matchLabels"), pairs, create=False)
            for path in _SELECTOR_PATHS.get(kind, []):
                _set(doc, path, pairs, create=False)


def _rename_configmaps(docs: list[dict[str, Any]], names: dict[str, str]) -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("configMap", "configMapRef", "configMapKeyRef"):
                ref = node.get(key)
                if isinstance(ref, dict) and ref.get("name") in names:
                    ref["name"] = names[ref["name"]]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for doc in docs:
        if doc["kind"] != "ConfigMap":
            walk(doc.get("spec"))


def _build(root: Path, renames: dict[str, str], component: bool = False) -> list[dict[str, Any]]:
    kfile = root / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{root}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    unknown = set(k) - _KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: fields this renderer does not implement: {sorted(unknown)}")
    if component and "labels" in k:  # kustomize applies a component's labels to its parent's objects too
        raise KustomizeError(f"{kfile}: labels in a Component are not implemented by this renderer")
    expected_kind = "Component" if component else "Kustomization"
    if k.get("kind", "Kustomization") != expected_kind:
        raise KustomizeError(f"{kfile}: kind {k.get('kind')!r} where {expected_kind} was expected")
    docs: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = (root / entry).resolve()
        docs += _build(path, renames) if path.is_dir() else _load_docs(path)
    for entry in k.get("components", []):
        docs += _build((root / entry).resolve(), renames, component=True)
    for gen in k.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for item in gen.get("files", []):
            key, _, rel = item.rpartition("=")
            data[key or Path(rel).name] = (root / rel).read_text(encoding="utf-8")
        hashed = f"{gen['name']}-{configmap_hash(data)}"
        renames[gen["name"]] = hashed
        options = gen.get("options", {})
        if set(options) - {"labels"}:
            raise KustomizeError(f"{kfile}: configMapGenerator options other than labels are not implemented")
        metadata: dict[str, Any] = {"name": hashed}
        if options.get("labels"):
            metadata["labels"] = {str(k): str(v) for k, v in options["labels"].items()}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    for patch in k.get("patches", []):
        ops = yaml.safe_load((root / patch["path"]).read_text(encoding="utf-8"))
        if not isinstance(ops, list):
            raise KustomizeError(f"{patch['path']}: only JSON 6902 patches (a list of operations) are supported")
        targets = [d for d in docs if _matches(d, patch.get("target", {}))]
        if not targets:
            raise KustomizeError(f"{patch['path']}: the target {patch.get('target')} matches no resource")
        for doc in targets:
            _json_patch(doc, ops)
    _apply_labels(docs, k.get("labels", []))
    _set_images(docs, k.get("images", []))
    return docs


def build(root: Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build root`` prints, in no particular order."""
    renames: dict[str, str] = {}
    docs = _build(Path(root).resolve(), renames)
    _rename_configmaps(docs, renames)
    return docs
