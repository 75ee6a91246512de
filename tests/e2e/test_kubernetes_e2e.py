"""The real server process with ``--provider kubernetes``: users and collections come from
the fake Kubernetes API of ``k8s_fake``, and ``/ready`` follows the API's state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from k8s_fake import FakeKubernetesApi
from support import start_server, user_doc, wait_until

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NAMESPACE = "backup-repository"
LOGIN = "/api/stable/auth/login"
# Health secret of the fixtures' collection and the encoded hash of the password "admin".
SECRET_VALUES = (
    "8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918",
    "JGFyZ29uMmlkJHY9MTkkbT02NTUzNix0PTEscD00JHpuVy9IT2Y4Q3RkdStvNSttYlR2REE9PSRaZlVp",
)


def login(url: str, username: str, password: str) -> int:
    response = httpx.post(url + LOGIN, json={"username": username, "password": password})
    return response.status_code


def provider_check(url: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(url + "/ready")
    checks = {c["name"]: c for c in response.json()["data"]["health"]}
    return response.status_code, checks["ConfigurationProviderValidator"]


def test_server_follows_the_kubernetes_api(tmp_path: Path) -> None:
    with FakeKubernetesApi(NAMESPACE) as api:
        api.load_yaml_files(FIXTURES / "reference-layout")
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        server = start_server(
            tmp_path,
            tmp_path / "no-config-folder",
            extra_args=[
                "--provider",
                "kubernetes",
                "--kubeconfig",
                str(kubeconfig),
                "--namespace",
                NAMESPACE,
            ],
        )
        try:
            # (admin of the fixtures may only log in from another address)
            assert login(server.url, "some-user", "admin") == 200
            assert login(server.url, "some-user$uploader", "test") == 200
            status, check = provider_check(server.url)
            assert status == 200
            assert check["status"] is True
            assert check["message"] == "3 users, 1 collection and 0 notification channels loaded"

            api.put(user_doc("added-live", "live-pass", []))
            wait_until(lambda: login(server.url, "added-live", "live-pass") == 200, timeout=5)

            # The CRD goes away: unready, naming the check and the reason.
            api.uninstall("backupusers")
            wait_until(lambda: provider_check(server.url)[0] == 500, timeout=10)
            status, check = provider_check(server.url)
            assert check["status"] is False
            assert check["statusText"] == "ConfigurationProviderValidator=false"
            assert check["message"].startswith("configuration provider is not usable: ")
            assert "CustomResourceDefinition backupusers.backups.riotkit.org" in check["message"]
            # The objects last read stay in use meanwhile.
            assert login(server.url, "unprivileged", "admin") == 200

            api.install("backupusers")
            wait_until(lambda: provider_check(server.url)[0] == 200, timeout=10)

            # The API goes down and comes back.
            api.stop()
            wait_until(lambda: provider_check(server.url)[0] == 500, timeout=10)
            status, check = provider_check(server.url)
            assert (
                "configuration provider is not usable: the Kubernetes API at" in (check["message"])
            )
            assert "is not reachable" in check["message"]
            api.start()
            wait_until(lambda: provider_check(server.url)[0] == 200, timeout=10)
            assert login(server.url, "added-live", "live-pass") == 200
        finally:
            assert server.stop() == 0

    log = server.log()
    assert "configuration loaded from Kubernetes namespace backup-repository" in log
    for value in SECRET_VALUES:
        assert value not in log
    assert api.token not in log
    assert {r.authorization for r in api.requests} == {f"Bearer {api.token}"}
