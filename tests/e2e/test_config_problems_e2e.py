"""A configuration with a broken file, through the real server: ``/ready`` stays 200 and
reports the configuration check as degraded, naming the file that could not be parsed and
the objects that refer into it; the log says the same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support import ServerProcess, start_server, user_doc, wait_until, write_config

pytestmark = pytest.mark.e2e

BROKEN_SECRETS = """\
apiVersion: v1
kind: Secret
metadata:
  name: passwords
data:
  alice: "not-shown-in-any-problem"
   bob: "indented one space too far"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("config-problems")
    config = root / "config"
    alice = user_doc("alice", "alice-pass", [])
    alice["spec"]["passwordFromRef"] = {"name": "passwords", "entry": "alice"}
    write_config(config, [user_doc("admin", "admin-pass", ["systemAdmin"]), alice])
    (config / "secrets.yaml").write_text(BROKEN_SECRETS)
    process = start_server(root / "work", config)
    try:
        yield process
    finally:
        process.stop()


def configuration_check(server: ServerProcess) -> tuple[int, dict[str, Any], dict[str, Any]]:
    response = httpx.get(server.url + "/ready", timeout=10)
    body = response.json()
    (check,) = [c for c in body["data"]["health"] if c["name"] == "ConfigurationProviderValidator"]
    return response.status_code, body, check


def test_ready_is_degraded_and_names_the_broken_file(server: ServerProcess) -> None:
    status, body, check = configuration_check(server)

    assert status == 200
    assert body["status"] is True
    assert body["data"]["state"] == "degraded"
    assert check["status"] is True
    assert check["statusText"] == "ConfigurationProviderValidator=true"
    assert check["state"] == "degraded"
    assert check["message"] == (
        "1 user, 0 collections and 0 notification channels loaded; 2 problems "
        "(1 file could not be read, 1 object refused); see problems"
    )
    first, second = check["problems"]
    assert first["source"] == "secrets.yaml"
    assert first["message"].startswith(
        "invalid YAML at line 7, column 4: did not find expected key"
    )
    assert first["message"].endswith(
        "line 7 reads: bob: (value not shown: the file holds a Secret)"
    )
    assert (second["source"], second["kind"], second["name"], second["field"]) == (
        "objects.yaml",
        "BackupUser",
        "alice",
        "spec.passwordFromRef",
    )
    assert "secrets.yaml could not be read" in second["message"]
    assert check["details"][0].startswith("secrets.yaml: document: invalid YAML at line 7")
    assert "not-shown-in-any-problem" not in str(body)
    assert "not-shown-in-any-problem" not in server.log()
    assert "2 problems (1 file could not be read, 1 object refused)" in server.log()


def test_fixing_the_file_makes_ready_ok_again(server: ServerProcess) -> None:
    config = Path(server.args[server.args.index("--config-local-path") + 1])
    fixed = yaml.safe_load(BROKEN_SECRETS.replace("   bob", "  bob"))
    fixed["data"]["alice"] = user_doc("alice", "alice-pass", [])["spec"]["password"]
    (config / "secrets.yaml").write_text(yaml.safe_dump(fixed))

    def ok() -> bool:
        return configuration_check(server)[2]["state"] == "ok"

    wait_until(ok, timeout=10)
    status, body, check = configuration_check(server)
    assert status == 200
    assert body["data"]["state"] == "ok"
    assert "problems" not in check
    login = httpx.post(
        server.url + "/api/stable/auth/login",
        json={"username": "alice", "password": "alice-pass"},
        timeout=10,
    )
    assert login.status_code == 200, login.text


def test_a_notification_channel_added_on_disk_is_counted(server: ServerProcess) -> None:
    config = Path(server.args[server.args.index("--config-local-path") + 1])
    (config / "channels.yaml").write_text(
        """\
apiVersion: v1
kind: Secret
metadata: {name: notification-secrets}
data: {webhook-key: e2e-signing-key}
---
apiVersion: backups.riotkit.org/v1alpha1
kind: NotificationChannel
metadata: {name: ops-webhook}
spec:
  type: webhook
  webhook:
    url: https://hooks.example.org/backups
    signingSecretRef: {name: notification-secrets, entry: webhook-key}
"""
    )

    def counted() -> bool:
        return "and 1 notification channel loaded" in configuration_check(server)[2]["message"]

    wait_until(counted, timeout=10)
    assert "e2e-signing-key" not in server.log()
