"""Helpers of the deployment tests: YAML documents, Kubernetes schema validation, CRD schemas.

No cluster is involved. Built-in kinds are validated with ``kubernetes_validate`` (the
Kubernetes OpenAPI schemas, strict mode: unknown fields are errors, as ``kubectl apply``'s
default server-side field validation makes them); objects of our own kinds are validated
against the openAPIV3Schema of our CRDs with ``jsonschema``, with unknown fields refused
for the same reason.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import yaml

from backup_repository.cli import server

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRD_DIR = DEPLOY / "crds"
CHART_DIR = DEPLOY / "helm" / "backup-repository"
KUSTOMIZE_DIR = DEPLOY / "kubernetes"
EXAMPLES_DIR = KUSTOMIZE_DIR / "examples"
FIXTURES = REPO / "tests" / "fixtures"
# The SealedSecret CRD's schema, vendored (its source is in the file's "$comment").
SEALED_SECRET_SCHEMA = Path(__file__).resolve().parent / "sealedsecret.schema.json"
SEALED_SECRET_API_VERSION = "bitnami.com/v1alpha1"

CRD_FILES = {
    "BackupUser": CRD_DIR / "backups.riotkit.org_backupusers.yaml",
    "BackupCollection": CRD_DIR / "backups.riotkit.org_backupcollections.yaml",
    "NotificationChannel": CRD_DIR / "backups.riotkit.org_notificationchannels.yaml",
}
# Kinds of this project the reference project does not have.
OUR_OWN_KINDS = {"NotificationChannel"}
OUR_API_VERSION = "backups.riotkit.org/v1alpha1"

# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest
# release kubernetes-validate ships schemas for at the time of writing.
KUBE_VERSIONS = ("1.25.0", "1.37.0")

# Kinds whose schemas are not part of Kubernetes (OpenShift, Prometheus Operator): checked
# by hand in the tests, since their CRDs cannot be fetched here.
NON_BUILTIN = {
    ("route.openshift.io/v1", "Route"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


def load_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def load_file(path: Path) -> list[dict[str, Any]]:
    return load_documents(path.read_text(encoding="utf-8"))


def yaml_files(folder: Path) -> Iterator[Path]:
    yield from sorted(p for p in folder.rglob("*") if p.suffix in {".yaml", ".yml"})


def validate_builtin(document: dict[str, Any]) -> None:
    """Validate against every Kubernetes version in KUBE_VERSIONS, strictly."""
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{document.get('kind')} {document.get('metadata', {}).get('name')!r} "
                f"is invalid for Kubernetes {version}: {exc.message} at "
                f"{'.'.join(str(p) for p in exc.path)}"
            ) from None


# --- our CRDs ----------------------------------------------------------------------------------


@functools.cache
def crd(kind: str) -> dict[str, Any]:
    """The CRD of ``kind``, read once (callers must not modify it)."""
    (document,) = load_file(CRD_FILES[kind])
    return document


def crd_schema(kind: str) -> dict[str, Any]:
    (version,) = crd(kind)["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _refuse_unknown_fields(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy in which every object with declared properties refuses other fields (what the
    API server does with kubectl's default field validation, instead of pruning them)."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and node.get("type") == "object"
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node.setdefault("additionalProperties", False)
            for key, value in node.items():
                if key == "properties":
                    for child in value.values():
                        walk(child)
                elif key in {"items", "not"}:
                    walk(value)
                elif key in {"anyOf", "oneOf", "allOf"}:
                    for child in value:
                        walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(schema)
    return schema


def crd_errors(document: dict[str, Any]) -> list[str]:
    """Schema errors of one object of our kinds (empty: valid)."""
    kind = document.get("kind")
    if document.get("apiVersion") != OUR_API_VERSION or kind not in CRD_FILES:
        return [f"not one of our kinds: {document.get('apiVersion')} {kind}"]
    validator = jsonschema.Draft7Validator(_refuse_unknown_fields(crd_schema(kind)))
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


@functools.cache
def _sealed_secret_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SEALED_SECRET_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(_refuse_unknown_fields(schema))


def sealed_secret_errors(document: dict[str, Any]) -> list[str]:
    """Schema errors of one SealedSecret (empty: valid), against the vendored CRD schema of
    the sealed-secrets project, with unknown fields refused as for our own kinds."""
    if (document.get("apiVersion"), document.get("kind")) != (
        SEALED_SECRET_API_VERSION,
        "SealedSecret",
    ):
        return [f"not a SealedSecret: {document.get('apiVersion')} {document.get('kind')}"]
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in _sealed_secret_validator().iter_errors(document)
    ]


def structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """The parts of Kubernetes' structural schema rules that can be checked offline: every
    node outside a logical junctor has a type; junctors (anyOf, oneOf, allOf, not) hold no
    type, description, default, nullable or additionalProperties, and name only properties
    declared outside them; ``additionalProperties`` is never used next to ``properties``;
    patterns use no syntax Go's RE2 lacks (look-around, back-references)."""
    problems: list[str] = []

    def check_pattern(node: dict[str, Any], where: str) -> None:
        pattern = node.get("pattern")
        if pattern is None:
            return
        re.compile(pattern)
        if re.search(r"\(\?[=!<]|\\[1-9]", pattern):
            problems.append(f"{where}: pattern {pattern!r} uses syntax RE2 does not support")

    def junctor(node: Any, outer: dict[str, Any], where: str) -> None:
        if not isinstance(node, dict):
            return
        for forbidden in ("type", "description", "default", "nullable", "additionalProperties"):
            if forbidden in node:
                problems.append(f"{where}: {forbidden!r} is not allowed inside a junctor")
        check_pattern(node, where)
        for name, child in node.get("properties", {}).items():
            if name not in outer.get("properties", {}):
                problems.append(f"{where}.{name}: not declared outside the junctor")
            else:
                junctor(child, outer["properties"][name], f"{where}.{name}")
        for key in ("anyOf", "oneOf", "allOf"):
            for index, child in enumerate(node.get(key, [])):
                junctor(child, outer, f"{where}.{key}[{index}]")

    def walk(node: dict[str, Any], where: str) -> None:
        if "type" not in node and not (
            node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ):
            problems.append(f"{where or '<root>'}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{where}: additionalProperties next to properties")
        check_pattern(node, where)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{where}.{name}")
        if "items" in node:
            walk(node["items"], f"{where}[]")
        for key in ("anyOf", "oneOf", "allOf"):
            for index, child in enumerate(node.get(key, [])):
                junctor(child, node, f"{where}.{key}[{index}]")
        if "not" in node:
            junctor(node["not"], node, f"{where}.not")

    walk(schema, path)
    return problems


# --- shared checks of the server's pod (plain manifests and chart) ---------------------------


def check_pod_hardening(pod_spec: dict[str, Any]) -> None:
    """What the issue asks of the server's pod (shared with the chart tests)."""
    (container,) = pod_spec["containers"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] == 65532
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 65532
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["port"] == "http"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be writable: the root is read-only"
    assert "/data" in mounts
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["BR_JWT_SECRET_KEY"]["valueFrom"], "the JWT key is a Secret"
    assert env["BR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def server_env_vars() -> set[str]:
    names: set[str] = set()
    for param in server.main.params:
        if isinstance(param, click.Option) and param.envvar:
            envvar = param.envvar
            names.update([envvar] if isinstance(envvar, str) else envvar)
    return names


def check_env_names(container: dict[str, Any]) -> None:
    """Every BR_* variable set is one the server reads (a typo would be silently ignored)."""
    known = server_env_vars()
    assert "BR_JWT_SECRET_KEY" in known
    for entry in container["env"]:
        if entry["name"].startswith("BR_"):
            assert entry["name"] in known, f"{entry['name']} is no flag's variable"


# --- the server's settings as a container would build them -------------------------------------

SECRET_STAND_IN = "secret-from-a-kubernetes-secret"
# Secrets holding URLs: a value of the right shape.
URL_STAND_INS = {
    "BR_DB_URL": "postgresql://backups:secret@postgres.example:5432/backups",
    "BR_REDIS_URL": "redis://:secret@redis.example:6379/0",
}
POD_NAMESPACE = "backups"


def image_env() -> dict[str, str]:
    """The BR_* defaults the Dockerfile's ENV instructions set."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            found.update(re.findall(r"\b(BR_[A-Z_]+)=(\S*)", line))
    return found


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables, with Secret references and the downward API replaced by
    stand-ins (what the kubelet would put there)."""
    values: dict[str, str] = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom")
        if source is None:
            values[entry["name"]] = str(entry.get("value", ""))
        elif "secretKeyRef" in source:
            values[entry["name"]] = URL_STAND_INS.get(entry["name"], SECRET_STAND_IN)
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            values[entry["name"]] = POD_NAMESPACE
        else:
            raise AssertionError(f"unexpected valueFrom in {entry}")
    return values


def settings_for(environment: dict[str, str], args: list[str] | None = None) -> Any:
    """The server's Settings from exactly these variables (the caller's BR_* removed), as
    `backup-repository` would build them at start-up; raises SettingsError."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("BR_")]:
        del os.environ[key]
    os.environ.update(environment)
    try:
        context = server.main.make_context("backup-repository", list(args or []))
        return server.build_settings(context.params)
    finally:
        os.environ.clear()
        os.environ.update(saved)
