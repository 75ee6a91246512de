"""The channel examples of docs/notifications.md ("Channels") through the real loader, and
``backup-repository notify-test`` as a process on a configuration folder holding them
(their URLs pointed at a receiver on loopback); the private CA example delivering over
https to receivers whose certificates only its caFile trusts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from backup_repository.cli.server import main
from backup_repository.config.documents import SourceFile
from backup_repository.config.loader import load_files
from backup_repository.domain.notification_channels import (
    ChannelType,
    DeliveryError,
    EventType,
    NotificationEvent,
    SmtpSecurity,
)
from backup_repository.notify import build_sender
from notify_receivers import (
    Recorder,
    doc_block,
    make_certificate,
    recorder,
    server_context,
)
from support import require_service, server_command

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


def test_the_private_ca_example_loads() -> None:
    documents = example("private CA")
    assert documents[0]["spec"]["webhook"]["caFile"] == "/etc/backup-repository-ca/ca.crt"
    # Nothing at that path here: the channel is refused, naming the field and the file.
    snapshot = load([*documents, example("webhook")[1]])
    assert snapshot.channels == {}
    (problem,) = snapshot.problems
    assert problem.field == "spec.webhook.caFile"
    assert problem.message.startswith("the CA file /etc/backup-repository-ca/ca.crt does not exist")


async def test_the_private_ca_example_delivers_over_https(tmp_path: Path) -> None:
    """The documented channel with a throw-away CA in caFile: a receiver with a certificate
    of that CA gets the signed event; when the file is replaced by another CA (as an
    updated ConfigMap is), the next delivery trusts the new one and no longer the old."""
    first_made = make_certificate(_mkdir(tmp_path / "first"))
    second_made = make_certificate(_mkdir(tmp_path / "second"))
    if first_made is None or second_made is None:
        require_service("openssl", "openssl is not installed: no certificate for TLS")
    ca_folder = _mkdir(tmp_path / "ca")
    ca_file = ca_folder / "internal-ca.crt"
    shutil.copyfile(first_made[0], ca_file)
    event = NotificationEvent(
        id="evt-private-ca",
        type=EventType.MISSING,
        condition="missing",
        collection="db-prod",
        occurred_at=datetime(2026, 12, 5, 6, 15, tzinfo=UTC),
        summary="No backup of db-prod arrived in the window that closed at 06:00 UTC.",
    )

    def channel_to(url: str) -> Any:
        documents = [*example("private CA"), example("webhook")[1]]
        documents[0]["spec"]["webhook"]["url"] = url
        documents[0]["spec"]["webhook"]["caFile"] = str(ca_file)
        snapshot = load(documents)
        assert snapshot.problems == ()
        channel = snapshot.channels["internal-webhook"]
        assert channel.webhook is not None
        assert channel.webhook.ca_file == str(ca_file)
        return channel

    with (
        recorder(server_context(*first_made)) as first,
        recorder(server_context(*second_made)) as second,
    ):
        async with httpx.AsyncClient() as http:
            sender = build_sender(http=http, server_name="backups.test")
            try:
                await sender.send(channel_to(first.url("/hook")), event)
                (request,) = first.taken()
                assert request.path == "/hook"
                assert request.headers["X-Backup-Repository-Event"] == "evt-private-ca"
                assert json.loads(request.body)["collection"] == "db-prod"

                # The system's trust store alone does not know the throw-away CA.
                documents = [*example("private CA"), example("webhook")[1]]
                documents[0]["spec"]["webhook"]["url"] = first.url("/hook")
                del documents[0]["spec"]["webhook"]["caFile"]
                plain = load(documents).channels["internal-webhook"]
                with pytest.raises(DeliveryError, match="certificate verify failed"):
                    await sender.send(plain, event)

                # A new file renamed over the old one, as the kubelet updates a ConfigMap.
                staged = ca_folder / ".new.crt"
                shutil.copyfile(second_made[0], staged)
                os.replace(staged, ca_file)
                await sender.send(channel_to(second.url("/rotated")), event)
                assert [r.path for r in second.taken()] == ["/rotated"]
                with pytest.raises(DeliveryError, match="certificate verify failed"):
                    await sender.send(channel_to(first.url("/hook")), event)
                assert len(first.taken()) == 1
            finally:
                await sender.aclose()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
