"""The webhook sender against real HTTP receivers on loopback: the signed request, how
each answer is classified, and the reference receivers of docs/notifications.md (Python
and shell) accepting it and refusing tampered or replayed requests."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from backup_repository.domain.notification_channels import (
    Channel,
    ChannelType,
    DeliveryError,
    EventType,
    NotificationEvent,
    WebhookTarget,
)
from backup_repository.notify import ChannelSender, build_sender
from backup_repository.notify.payload import SCHEMA
from notify_receivers import Recorder, doc_block, make_certificate, recorder, server_context
from support import require_service

SECRET = "whsec-test-0123456789"
EVENT = NotificationEvent(
    id="evt-0001",
    type=EventType.MISSING,
    condition="missing",
    collection="db-prod",
    occurred_at=datetime(2026, 12, 5, 6, 15, tzinfo=UTC),
    summary="No backup of db-prod arrived in the window that closed at 06:00 UTC.",
    facts={"windowClosedAt": "2026-12-05T06:00:00Z", "lastVersion": 41},
)


def channel(url: str, *, secret: str = SECRET, timeout: float = 5.0, ca_file: str = "") -> Channel:
    return Channel(
        name="hook",
        type=ChannelType.WEBHOOK,
        webhook=WebhookTarget(
            url=url, signing_secret=secret, timeout=timedelta(seconds=timeout), ca_file=ca_file
        ),
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Recorder]:
    with recorder() as server:
        yield server


@pytest.fixture(scope="module")
def tls_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, str]]:
    made = make_certificate(tmp_path_factory.mktemp("webhook-tls"))
    if made is None:
        require_service("openssl", "openssl is not installed: no certificate for TLS")
    cert, key = made
    with recorder(server_context(cert, key)) as server:
        yield server, str(cert)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """The Python receiver of docs/notifications.md, executed."""
    namespace: dict[str, Any] = {"__name__": "docs_receiver"}
    exec(compile(doc_block("the Python receiver"), "docs/notifications.md", "exec"), namespace)  # noqa: S102
    return namespace


@pytest.fixture(scope="module")
def reference_server(reference: dict[str, Any]) -> Iterator[str]:
    handler = type("Handler", (reference["Receiver"],), {"secret": SECRET.encode()})
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def sender() -> AsyncIterator[ChannelSender]:
    async with httpx.AsyncClient() as http:
        built = build_sender(http=http, server_name="backups.test", base_url="https://backups.test")
        yield built
        await built.aclose()


async def test_delivers_a_signed_request(receiver: Recorder, sender: ChannelSender) -> None:
    receiver.clear()
    before = int(time.time())
    await sender.send(channel(receiver.url("/hook")), EVENT)
    (request,) = receiver.taken()
    assert request.method == "POST"
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Backup-Repository-Event"] == "evt-0001"
    stamp = int(request.headers["X-Backup-Repository-Timestamp"])
    assert before <= stamp <= int(time.time())
    expected = hmac.new(
        SECRET.encode(), f"{stamp}.".encode() + request.body, hashlib.sha256
    ).hexdigest()
    assert request.headers["X-Backup-Repository-Signature"] == f"sha256={expected}"
    document = json.loads(request.body)
    assert document == {
        "schema": SCHEMA,
        "id": "evt-0001",
        "type": "missing",
        "condition": "missing",
        "collection": "db-prod",
        "occurredAt": "2026-12-05T06:15:00Z",
        "summary": EVENT.summary,
        "facts": {"windowClosedAt": "2026-12-05T06:00:00Z", "lastVersion": 41},
        "reminder": False,
        "server": {"name": "backups.test", "url": "https://backups.test"},
    }


@pytest.mark.parametrize(
    ("path", "permanent", "retry_after", "words"),
    [
        ("/status/500", False, None, "answered 500"),
        ("/status/503?retry=7", False, timedelta(seconds=7), "answered 503"),
        ("/status/429?retry=30", False, timedelta(seconds=30), "answered 429"),
        ("/status/408", False, None, "answered 408"),
        ("/status/404", True, None, "refused"),
        ("/status/400", True, None, "refused"),
        ("/status/410", True, None, "refused"),
        ("/redirect", True, None, "redirect"),
    ],
)
async def test_answers_are_classified(
    receiver: Recorder,
    sender: ChannelSender,
    path: str,
    permanent: bool,
    retry_after: timedelta | None,
    words: str,
) -> None:
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(receiver.url(path)), EVENT)
    assert caught.value.permanent is permanent
    assert caught.value.retry_after == retry_after
    assert words in caught.value.reason
    port = receiver.server_address[1]
    # The message names the host, never the URL's path (it may carry a token).
    assert f"http://127.0.0.1:{port}" in caught.value.reason
    assert "/status" not in caught.value.reason


async def test_a_redirect_is_not_followed(receiver: Recorder, sender: ChannelSender) -> None:
    receiver.clear()
    with pytest.raises(DeliveryError):
        await sender.send(channel(receiver.url("/redirect")), EVENT)
    assert [r.path for r in receiver.taken()] == ["/redirect"]


async def test_connection_refused_is_retryable(sender: ChannelSender) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(f"http://127.0.0.1:{port}/secret-token-path"), EVENT)
    assert not caught.value.permanent
    assert "could not be reached" in caught.value.reason
    assert "secret-token-path" not in caught.value.reason


async def test_a_slow_receiver_times_out(receiver: Recorder, sender: ChannelSender) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(receiver.url("/slow/2"), timeout=0.3), EVENT)
    assert time.monotonic() - started < 1.5
    assert not caught.value.permanent
    assert "did not answer within 0.3s" in caught.value.reason


async def test_a_url_that_is_not_http_is_permanent(sender: ChannelSender) -> None:
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel("ftp://127.0.0.1/hook"), EVENT)
    assert caught.value.permanent


async def test_the_reference_receiver_accepts_a_delivery(
    reference_server: str, sender: ChannelSender
) -> None:
    await sender.send(channel(reference_server), EVENT)


async def test_the_reference_receiver_refuses_a_wrong_secret(
    reference_server: str, sender: ChannelSender
) -> None:
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(reference_server, secret="another-secret"), EVENT)
    assert caught.value.permanent
    assert "401" in caught.value.reason


async def test_the_reference_receiver_refuses_an_old_timestamp(reference_server: str) -> None:
    """A request signed ten minutes ago (a replay) is refused, signature or not."""
    async with httpx.AsyncClient() as http:
        stale = build_sender(
            http=http,
            server_name="backups.test",
            clock=lambda: datetime.now(UTC) - timedelta(minutes=10),
        )
        with pytest.raises(DeliveryError) as caught:
            await stale.send(channel(reference_server), EVENT)
    assert caught.value.permanent


async def test_the_reference_check_refuses_tampering(
    receiver: Recorder, sender: ChannelSender, reference: dict[str, Any]
) -> None:
    receiver.clear()
    await sender.send(channel(receiver.url("/captured")), EVENT)
    (request,) = receiver.taken()
    verify = reference["verify_signature"]
    stamp = request.headers["X-Backup-Repository-Timestamp"]
    signed = request.headers["X-Backup-Repository-Signature"]
    assert verify(SECRET.encode(), stamp, signed, request.body)
    tampered = request.body.replace(b"db-prod", b"db-test")
    assert not verify(SECRET.encode(), stamp, signed, tampered)
    assert not verify(SECRET.encode(), str(int(stamp) + 1), signed, request.body)
    assert not verify(b"wrong", stamp, signed, request.body)
    assert not verify(SECRET.encode(), stamp, signed, request.body, now=int(stamp) + 301)
    assert verify(SECRET.encode(), stamp, signed, request.body, now=int(stamp) + 299)
    assert not verify(SECRET.encode(), "", signed, request.body)
    # A receiver started without its secret accepts nothing, not an empty-key HMAC.
    empty = "sha256=" + hmac.new(b"", f"{stamp}.".encode() + request.body, "sha256").hexdigest()
    assert not verify(b"", stamp, empty, request.body)


async def test_the_shell_check(receiver: Recorder, sender: ChannelSender, tmp_path: Path) -> None:
    """The openssl script of docs/notifications.md against a captured request."""
    receiver.clear()
    await sender.send(channel(receiver.url("/captured")), EVENT)
    (request,) = receiver.taken()
    script = doc_block("the shell check")

    def run(body: bytes, stamp: str, signed: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "body.json").write_bytes(body)
        env = {
            **os.environ,
            "TIMESTAMP": stamp,
            "SIGNATURE": signed,
            "WEBHOOK_SECRET": SECRET,
        }
        return subprocess.run(
            ["bash", "-eu", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    stamp = request.headers["X-Backup-Repository-Timestamp"]
    signed = request.headers["X-Backup-Repository-Signature"]
    good = run(request.body, stamp, signed)
    assert (good.returncode, good.stdout.strip()) == (0, "verified"), good.stderr
    tampered = run(request.body.replace(b"db-prod", b"db-test"), stamp, signed)
    assert tampered.returncode == 1
    assert "bad signature" in tampered.stderr
    old = str(int(stamp) - 600)
    replay = run(request.body, old, signed)
    assert replay.returncode == 1
    assert "too old" in replay.stderr


async def test_https_with_the_channels_ca_file(
    tls_receiver: tuple[Recorder, str], sender: ChannelSender
) -> None:
    server, ca_file = tls_receiver
    server.clear()
    url = server.url("/tls-hook")
    assert url.startswith("https://")
    await sender.send(channel(url, ca_file=ca_file), EVENT)
    assert [r.path for r in server.taken()] == ["/tls-hook"]


async def test_https_with_an_unknown_certificate(
    tls_receiver: tuple[Recorder, str], sender: ChannelSender
) -> None:
    """Without the CA file the throw-away certificate is not trusted: nothing is sent."""
    server, _ca_file = tls_receiver
    server.clear()
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(server.url("/tls-hook")), EVENT)
    assert not caught.value.permanent
    assert "certificate verify failed" in caught.value.reason
    assert server.taken() == []


async def test_an_unreadable_ca_file_is_permanent(
    tls_receiver: tuple[Recorder, str], sender: ChannelSender, tmp_path: Path
) -> None:
    server, _ca_file = tls_receiver
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel(server.url("/"), ca_file=str(missing)), EVENT)
    assert caught.value.permanent
    assert "caFile" in caught.value.reason
