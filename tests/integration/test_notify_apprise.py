"""The Apprise sender against a real HTTP receiver on loopback (Apprise's ``json://`` and
``ntfy://`` services): the message received, failures classified, and no URL token in
any log line or error."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from backup_repository.domain.notification_channels import (
    AppriseTarget,
    Channel,
    ChannelType,
    DeliveryError,
    EventType,
    NotificationEvent,
)
from backup_repository.notify import ChannelSender, build_sender
from notify_receivers import Recorder, recorder

TOPIC = "backups-topic-s3cr3t"
EVENT = NotificationEvent(
    id="evt-apprise-1",
    type=EventType.INTEGRITY,
    condition="integrity",
    collection="db-prod",
    occurred_at=datetime(2026, 12, 5, 3, 0, tzinfo=UTC),
    summary="Version 12 of db-prod is corrupt: its SHA-256 no longer matches.",
    facts={"version": 12},
)


def channel(*urls: str, timeout: float = 5.0) -> Channel:
    return Channel(
        name="chat",
        type=ChannelType.APPRISE,
        apprise=AppriseTarget(urls=urls, timeout=timedelta(seconds=timeout)),
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


def base(receiver: Recorder) -> str:
    return f"127.0.0.1:{receiver.server_address[1]}"


async def test_json_service_receives_the_message(receiver: Recorder, sender: ChannelSender) -> None:
    receiver.clear()
    await sender.send(channel(f"json://{base(receiver)}/apprise-hook"), EVENT)
    (request,) = receiver.taken()
    assert request.path == "/apprise-hook"
    document = json.loads(request.body)
    assert document["title"] == "db-prod: integrity problem"
    assert document["type"] == "failure"
    assert document["message"].startswith(EVENT.summary)
    assert "version: 12" in document["message"]
    assert "evt-apprise-1" in document["message"]


async def test_ntfy_service_without_a_token_in_the_logs(
    receiver: Recorder, sender: ChannelSender, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.clear()
    caplog.set_level(logging.DEBUG)
    await sender.send(channel(f"ntfy://{base(receiver)}/{TOPIC}"), EVENT)
    (request,) = receiver.taken()
    document = json.loads(request.body)
    assert document["topic"] == TOPIC
    assert document["title"] == "db-prod: integrity problem"
    # Apprise logs "Sent ntfy notification to '<url>'" at INFO: none of it reaches us.
    assert TOPIC not in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("apprise")]


async def test_every_url_is_notified(receiver: Recorder, sender: ChannelSender) -> None:
    receiver.clear()
    await sender.send(
        channel(f"json://{base(receiver)}/first", f"json://{base(receiver)}/second"), EVENT
    )
    assert sorted(r.path for r in receiver.taken()) == ["/first", "/second"]


@pytest.mark.parametrize("status", [404, 503])
async def test_a_refusal_is_retryable_and_names_no_token(
    receiver: Recorder, sender: ChannelSender, status: int
) -> None:
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(f"json://{base(receiver)}/status/{status}?x={TOPIC}"), EVENT)
    assert not caught.value.permanent
    assert f"error={status}" in caught.value.reason
    assert "1 of 1 Apprise services failed" in caught.value.reason
    assert TOPIC not in caught.value.reason


async def test_a_failed_ntfy_topic_is_redacted(receiver: Recorder, sender: ChannelSender) -> None:
    """Apprise names the topic in its failure message; the reason does not."""
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(f"ntfy://{base(receiver)}/status-500-{TOPIC}"), EVENT)
    assert not caught.value.permanent
    assert "error=500" in caught.value.reason
    assert TOPIC not in caught.value.reason


async def test_connection_refused_is_retryable(sender: ChannelSender) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(f"json://127.0.0.1:{port}/{TOPIC}"), EVENT)
    assert not caught.value.permanent
    assert "Connection error" in caught.value.reason
    assert TOPIC not in caught.value.reason


async def test_a_slow_service_times_out(receiver: Recorder, sender: ChannelSender) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(f"json://{base(receiver)}/slow/3", timeout=0.5), EVENT)
    assert time.monotonic() - started < 2.8
    assert not caught.value.permanent


async def test_an_unknown_url_is_permanent(sender: ChannelSender) -> None:
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(f"nosuchservice://{TOPIC}"), EVENT)
    assert caught.value.permanent
    assert "scheme nosuchservice" in caught.value.reason
    assert TOPIC not in caught.value.reason


async def test_no_urls_is_permanent(sender: ChannelSender) -> None:
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(), EVENT)
    assert caught.value.permanent


# A fresh interpreter whose root logger keeps every record at DEBUG, as a server started
# with --log-level=debug: the sender's first Apprise delivery imports Apprise, which logs
# at its import (the locale it picked) and during the delivery.
FIRST_DELIVERY = textwrap.dedent(
    """
    import asyncio, json, logging, sys

    names = []

    class Keep(logging.Handler):
        def emit(self, record):
            names.append(record.name)

    logging.getLogger().addHandler(Keep())
    logging.getLogger().setLevel(logging.DEBUG)

    from datetime import timedelta

    from backup_repository.domain.notification_channels import (
        AppriseTarget, Channel, ChannelType, EventType, NotificationEvent,
    )
    from backup_repository.notify import build_sender

    async def main():
        sender = build_sender(server_name="backups.test")
        target = AppriseTarget(urls=(sys.argv[1],), timeout=timedelta(seconds=5))
        channel = Channel(name="chat", type=ChannelType.APPRISE, apprise=target)
        event = NotificationEvent(
            id="evt-1", type=EventType.INTEGRITY, condition="integrity",
            collection="db-prod", occurred_at=__import__("datetime").datetime.now(),
            summary="corrupt", facts={},
        )
        try:
            await sender.send(channel, event)
        finally:
            await sender.aclose()

    asyncio.run(main())
    print(json.dumps({"apprise_imported": "apprise" in sys.modules, "names": names}))
    """
)


def test_no_apprise_line_reaches_the_log_from_its_first_import(receiver: Recorder) -> None:
    """Apprise's logger is quieted before Apprise is imported, whatever ran before in the
    process: not even its import-time locale lines reach a server logging at DEBUG."""
    receiver.clear()
    answer = subprocess.run(
        [sys.executable, "-c", FIRST_DELIVERY, f"ntfy://{base(receiver)}/{TOPIC}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    result = json.loads(answer.stdout.strip().splitlines()[-1])
    assert result["apprise_imported"]
    assert len(receiver.taken()) == 1
    assert [name for name in result["names"] if name.startswith("apprise")] == []
