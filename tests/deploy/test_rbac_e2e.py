"""The deployment's Role is enough for the server, and the examples work on it.

The real server process runs with ``--provider kubernetes`` against the fake Kubernetes API
of ``k8s_fake`` (real HTTP, the official client), holding the objects of
``deploy/kubernetes/examples``. Every request the server makes is then checked against the
rules of ``deploy/kubernetes/role.yaml`` as Kubernetes' RBAC would: a request no rule
allows would be refused with 403 in a cluster. (The fake does not enforce RBAC itself.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from deploy_support import EXAMPLES_DIR, KUSTOMIZE_DIR, load_file

from k8s_fake import FakeKubernetesApi, RecordedRequest
from support import start_server, wait_until

pytestmark = pytest.mark.e2e

NAMESPACE = "backup-repository"
RESOURCE_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/[^/]+)"
    r"/namespaces/(?P<namespace>[^/]+)/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?$"
)


def rbac_attributes(request: RecordedRequest) -> tuple[str, str, str, str] | None:
    """(namespace, API group, resource, verb) of a resource request, as the API server's
    authorizer sees it; None for discovery and other non-resource URLs."""
    match = RESOURCE_PATH.match(request.path)
    if match is None:
        return None
    if request.query.get("watch") in {"true", "1"}:
        verb = "watch"
    elif match["name"]:
        verb = "get"
    else:
        verb = "list"
    group = "" if match["core"] else match["group"]
    return match["namespace"], group, match["resource"], verb


def allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in rules
    )


def test_role_allows_every_request_the_server_makes(tmp_path: Path) -> None:
    (role,) = load_file(KUSTOMIZE_DIR / "role.yaml")
    with FakeKubernetesApi(NAMESPACE) as api:
        loaded = api.load_yaml_files(EXAMPLES_DIR)
        assert loaded == 5
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        server = start_server(
            tmp_path,
            tmp_path / "no-config-folder",
            extra_args=["--provider", "kubernetes", "--kubeconfig", str(kubeconfig)],
            env={"BR_NAMESPACE": NAMESPACE},
        )
        try:
            ready = wait_until(
                lambda: (r := httpx.get(server.url + "/ready")).status_code == 200 and r,
                timeout=20,
            )
            checks = {c["name"]: c for c in ready.json()["data"]["health"]}
            assert checks["ConfigurationProviderValidator"]["message"] == (
                "2 users, 1 collection and 0 notification channels loaded"
            )
            # bob's hash in the example Secret is the password "test"; alice may only log in
            # from her restrictByIP networks, which loopback is not.
            login = httpx.post(
                server.url + "/api/stable/auth/login",
                json={"username": "bob", "password": "test"},
            )
            assert login.status_code == 200, login.text
            token = login.json()["data"]["token"]
            listing = httpx.get(
                server.url + "/api/stable/repository/collection/db-prod/version",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert listing.status_code == 200, listing.text  # bob's accessControl entry
            refused = httpx.post(
                server.url + "/api/stable/auth/login",
                json={"username": "alice", "password": "admin"},
            )
            assert refused.status_code == 401
        finally:
            server.stop()
        requests = list(api.requests)

    seen = set()
    for request in requests:
        attributes = rbac_attributes(request)
        if attributes is None:
            assert "/namespaces/" not in request.path, request.path
            continue
        namespace, group, resource, verb = attributes
        assert namespace == NAMESPACE, "the Role only covers its own namespace"
        assert allowed(role["rules"], group, resource, verb), attributes
        seen.add((group, resource, verb))
    # The server did list and watch every kind (else this test proves little).
    for group, resource in [
        ("backups.riotkit.org", "backupusers"),
        ("backups.riotkit.org", "backupcollections"),
        ("backups.riotkit.org", "notificationchannels"),
        ("", "secrets"),
    ]:
        assert (group, resource, "list") in seen
        assert (group, resource, "watch") in seen


def test_rbac_attributes_follow_the_api_servers_rules() -> None:
    def attributes(path: str, **query: str) -> tuple[str, str, str, str] | None:
        return rbac_attributes(RecordedRequest("GET", path, query, ""))

    assert attributes("/api/v1/namespaces/ns/secrets") == ("ns", "", "secrets", "list")
    assert attributes("/api/v1/namespaces/ns/secrets/a") == ("ns", "", "secrets", "get")
    assert attributes(
        "/apis/backups.riotkit.org/v1alpha1/namespaces/ns/backupusers", watch="true"
    ) == (
        "ns",
        "backups.riotkit.org",
        "backupusers",
        "watch",
    )
    assert attributes("/apis/backups.riotkit.org/v1alpha1") is None
    assert attributes("/version") is None
    rules = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    assert allowed(rules, "", "secrets", "get")
    assert not allowed(rules, "", "secrets", "watch")
    assert not allowed(rules, "apps", "secrets", "get")
