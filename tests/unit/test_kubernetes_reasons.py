"""The reasons the kubernetes provider gives for an API it cannot read (what /ready shows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import urllib3
import urllib3.connection
from kubernetes.client.exceptions import ApiException

from backup_repository.config.kubernetes import (
    RESOURCES,
    CredentialsError,
    connect,
    describe_failure,
)

USERS, COLLECTIONS, CHANNELS, SECRETS = RESOURCES
HOST = "https://10.0.0.1:443"
NAMESPACE = "backups"


def api_error(status: int, reason: str, message: str | None) -> ApiException:
    body = json.dumps({"kind": "Status", "code": status, "message": message}) if message else ""
    return ApiException(status=status, reason=reason, body=body)


def test_404_names_the_missing_crd() -> None:
    text = describe_failure(api_error(404, "Not Found", "not found"), COLLECTIONS, NAMESPACE, HOST)
    assert text == (
        "the API answers 404 Not Found for "
        "/apis/backups.riotkit.org/v1alpha1/namespaces/backups/backupcollections: the "
        "CustomResourceDefinition backupcollections.backups.riotkit.org (version v1alpha1) "
        "is not installed"
    )
    assert describe_failure(api_error(404, "Not Found", None), SECRETS, NAMESPACE, HOST) == (
        "the API answers 404 Not Found for /api/v1/namespaces/backups/secrets"
    )


def test_403_names_the_rights_needed() -> None:
    text = describe_failure(
        api_error(403, "Forbidden", 'secrets is forbidden: User "x" cannot list'),
        SECRETS,
        NAMESPACE,
        HOST,
    )
    assert text == (
        "access to secrets in namespace backups is forbidden (403: secrets is forbidden: "
        'User "x" cannot list); the service account needs get, list and watch on it'
    )


def test_other_statuses_carry_the_status_message() -> None:
    text = describe_failure(
        api_error(500, "Internal Server Error", "etcdserver: request timed out"),
        USERS,
        NAMESPACE,
        HOST,
    )
    assert text == (
        "/apis/backups.riotkit.org/v1alpha1/namespaces/backups/backupusers answered 500 "
        "Internal Server Error: etcdserver: request timed out"
    )
    bare = describe_failure(api_error(503, "Service Unavailable", None), USERS, NAMESPACE, HOST)
    assert bare.endswith("backupusers answered 503 Service Unavailable")


def test_network_errors_name_the_api_and_the_cause() -> None:
    refused = urllib3.exceptions.NewConnectionError(
        urllib3.connection.HTTPConnection("10.0.0.1", 443),
        "Failed to establish a new connection: [Errno 111] Connection refused",
    )
    assert describe_failure(refused, USERS, NAMESPACE, HOST) == (
        f"the Kubernetes API at {HOST} is not reachable ([Errno 111] Connection refused)"
    )
    timeout = urllib3.exceptions.ReadTimeoutError(
        urllib3.HTTPConnectionPool("10.0.0.1"), "/x", "Read timed out."
    )
    assert "is not reachable" in describe_failure(timeout, USERS, NAMESPACE, HOST)


def test_garbage_and_credentials() -> None:
    assert describe_failure(ValueError("not a list"), USERS, NAMESPACE, HOST).startswith(
        "unexpected answer from /apis/backups.riotkit.org/v1alpha1/namespaces/backups/"
    )
    text = describe_failure(CredentialsError("kubeconfig x does not exist"), USERS, "n", HOST)
    assert text == "no Kubernetes credentials: kubeconfig x does not exist"


def test_connect_refuses_a_broken_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="does not exist"):
        connect(tmp_path / "missing")
    broken = tmp_path / "config"
    broken.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n")
    with pytest.raises(CredentialsError, match=f"kubeconfig {broken} cannot be used"):
        connect(broken)


def test_connect_without_any_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    with pytest.raises(CredentialsError, match="not running in a cluster") as caught:
        connect(None)
    assert "pass --kubeconfig" in str(caught.value)
