"""The channel examples of docs/notifications.md ("Channels") through the real loader, and
``backup-repository notify-test`` as a process on a configuration folder holding them
(their URLs pointed at a receiver on loopback)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from backup_repository.cli.server import main
from backup_repository.config.documents import SourceFile
from backup_repository.config.loader import load_files
from backup_repository.domain.notification_channels import ChannelType, SmtpSecurity
from notify_receivers import Recorder, doc_block, recorder
from support import server_command

DOC_KEY = "4f1c9e0a7d2b8c63e5a1f0d9b7c4e2a81f3d6b9c0e7a5d2f8b1c4e6a9d0f3b72"


def example(kind: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(doc_block(f"channel example: {kind}")) if d]


def load(documents: list[dict[str, Any]]) -> Any:
    text = yaml.safe_dump_all(documents, sort_keys=False)
    return load_files([SourceFile("notifications.yaml", text)]).snapshot


@pytest.fixture(scope="module")
def receiver() -> Iterator[Recorder]:
    with recorder() as server:
        yield server


def test_the_webhook_example() -> None:
    snapshot = load(example("webhook"))
    assert snapshot.problems == ()
    channel = snapshot.channels["ops-webhook"]
    assert channel.type is ChannelType.WEBHOOK
    assert channel.webhook is not None
    assert channel.webhook.url == "https://hooks.example.org/backup-repository"
    assert channel.webhook.signing_secret == DOC_KEY
    assert channel.webhook.timeout == timedelta(seconds=10)
    assert "db-prod" in snapshot.collections


def test_the_email_example() -> None:
    snapshot = load(example("email"))
    assert snapshot.problems == ()
    channel = snapshot.channels["ops-mail"]
    assert channel.type is ChannelType.EMAIL
    assert channel.email is not None
    assert (channel.email.host, channel.email.port) == ("smtp.example.org", 587)
    assert channel.email.security is SmtpSecurity.STARTTLS
    assert channel.email.sender == "Backup Repository <backups@example.org>"
    assert channel.email.recipients == ("ops@example.org", "Alice <alice@example.org>")
    assert channel.email.username == "backups@example.org"
    assert channel.email.password == "the SMTP account's password"
    assert channel.all_collections is not None
    assert {str(e) for e in channel.all_collections} == {"missing", "integrity", "recovered"}


def test_the_apprise_example() -> None:
    snapshot = load(example("apprise"))
    assert snapshot.problems == ()
    channel = snapshot.channels["ops-chat"]
    assert channel.type is ChannelType.APPRISE
    assert channel.apprise is not None
    assert channel.apprise.urls == (
        "ntfy://ntfy.example.org/backups-7f3a9c",
        "matrixs://bot:bot-password@matrix.example.org/#backups:example.org",
    )


def test_notify_test_delivers_the_webhook_example(receiver: Recorder, tmp_path: Path) -> None:
    """The documented webhook channel, pointed at a receiver here, through the real
    command; the documented Python receiver accepts what arrives."""
    documents = example("webhook")
    documents[0]["spec"]["webhook"]["url"] = receiver.url("/backup-repository")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "notifications.yaml").write_text(yaml.safe_dump_all(documents))
    receiver.clear()
    done = subprocess.run(
        [
            *server_command("notify-test", "--channel", "ops-webhook"),
            "--config-local-path",
            str(tmp_path / "config"),
            "--server-name",
            "backups.test",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("delivered to ops-webhook (webhook): test event test-")
    (request,) = receiver.taken()
    namespace: dict[str, Any] = {"__name__": "docs_receiver"}
    exec(compile(doc_block("the Python receiver"), "docs/notifications.md", "exec"), namespace)  # noqa: S102
    assert namespace["verify_signature"](
        DOC_KEY.encode(),
        request.headers["X-Backup-Repository-Timestamp"],
        request.headers["X-Backup-Repository-Signature"],
        request.body,
    )
    document = json.loads(request.body)
    assert (document["type"], document["server"]["name"]) == ("test", "backups.test")


def test_notify_test_delivers_the_apprise_example(receiver: Recorder, tmp_path: Path) -> None:
    documents = example("apprise")
    port = receiver.server_address[1]
    secret = documents[1]
    secret["stringData"]["apprise-urls"] = (
        f"json://127.0.0.1:{port}/first\njson://127.0.0.1:{port}/second\n"
    )
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "notifications.yaml").write_text(yaml.safe_dump_all(documents))
    receiver.clear()
    result = CliRunner().invoke(
        main,
        ["notify-test", "-c", "ops-chat", "--config-local-path", str(tmp_path / "config")],
    )
    assert result.exit_code == 0, result.output
    assert sorted(r.path for r in receiver.taken()) == ["/first", "/second"]
