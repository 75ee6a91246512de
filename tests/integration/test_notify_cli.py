"""``backup-repository notify-test``: the function the command calls, with a
configuration built in code, and the command itself on a configuration folder."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from backup_repository.cli.notify import notify_channel
from backup_repository.cli.server import main
from backup_repository.domain.notification_channels import (
    Channel,
    ChannelType,
    WebhookTarget,
)
from backup_repository.notify import ChannelSender, build_sender
from backup_repository.services.ports import ConfigProblem, ConfigSnapshot
from notify_receivers import Recorder, recorder
from support import collection_doc, write_config

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def webhook(name: str, url: str) -> Channel:
    return Channel(
        name=name,
        type=ChannelType.WEBHOOK,
        webhook=WebhookTarget(url=url, signing_secret="s3cret", timeout=timedelta(seconds=5)),
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Recorder]:
    with recorder() as server:
        yield server


@pytest.fixture
async def sender() -> AsyncIterator[ChannelSender]:
    async with httpx.AsyncClient() as http:
        built = build_sender(http=http, server_name="backups.test")
        yield built
        await built.aclose()


async def test_a_delivered_test_message(
    receiver: Recorder, sender: ChannelSender, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.clear()
    snapshot = ConfigSnapshot(channels={"ops": webhook("ops", receiver.url("/ops"))})
    code = await notify_channel(snapshot, "ops", sender, "backups.test", clock=lambda: NOW)
    assert code == 0
    (request,) = receiver.taken()
    document = json.loads(request.body)
    assert document["type"] == "test"
    assert document["condition"] == "test"
    assert document["collection"] == ""
    assert document["occurredAt"] == "2026-12-05T12:00:00Z"
    assert document["id"].startswith("test-")
    assert "channel ops" in document["summary"]
    assert capsys.readouterr().out == f"delivered to ops (webhook): test event {document['id']}\n"


async def test_an_undelivered_test_message(
    receiver: Recorder, sender: ChannelSender, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot = ConfigSnapshot(channels={"ops": webhook("ops", receiver.url("/status/404"))})
    assert await notify_channel(snapshot, "ops", sender, "backups.test") == 1
    err = capsys.readouterr().err
    assert err.startswith("not delivered to ops (webhook): ")
    assert "answered 404" in err
    assert "permanent" in err


async def test_an_unknown_channel(
    sender: ChannelSender, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot = ConfigSnapshot(
        channels={"b": webhook("b", "http://127.0.0.1:9/"), "a": webhook("a", "http://x/")}
    )
    assert await notify_channel(snapshot, "ops", sender, "backups.test") == 1
    assert "no NotificationChannel named ops (channels: a, b)" in capsys.readouterr().err


async def test_a_broken_channel_shows_its_problem(
    sender: ChannelSender, capsys: pytest.CaptureFixture[str]
) -> None:
    problem = ConfigProblem(
        source="channels.yaml",
        message="the Secret ops-hook has no key signingSecret",
        kind="NotificationChannel",
        name="ops",
        field="spec.webhook.signingSecretRef",
    )
    snapshot = ConfigSnapshot(problems=(problem,))
    assert await notify_channel(snapshot, "ops", sender, "backups.test") == 1
    assert f"error: configuration: {problem}" in capsys.readouterr().err


def test_the_command_on_a_folder_without_the_channel(tmp_path: Path) -> None:
    write_config(tmp_path / "config", [collection_doc("db")])
    result = CliRunner().invoke(
        main,
        ["notify-test", "--channel", "ops", "--config-local-path", str(tmp_path / "config")],
    )
    assert result.exit_code == 1, result.output
    assert "no NotificationChannel named ops" in result.output


def test_the_command_takes_the_servers_provider_flags_before_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["--config-local-path", str(tmp_path / "missing"), "notify-test", "--channel", "ops"],
    )
    assert result.exit_code == 1, result.output
    assert "the configuration cannot be read" in result.output


def test_the_command_needs_a_channel() -> None:
    result = CliRunner().invoke(main, ["notify-test"])
    assert result.exit_code == 2
    assert "--channel" in result.output
