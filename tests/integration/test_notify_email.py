"""The email sender against real SMTP servers on loopback (aiosmtpd): no encryption,
STARTTLS and implicit TLS with a throw-away certificate made by ``openssl``, a login, the
two parts of the message, and how refusals are classified."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from backup_repository.domain.notification_channels import (
    Channel,
    ChannelType,
    DeliveryError,
    EmailTarget,
    EventType,
    NotificationEvent,
    SmtpSecurity,
)
from backup_repository.notify import ChannelSender, build_sender
from notify_receivers import make_certificate, server_context
from support import free_port, require_service

USERNAME = "notifier"
PASSWORD = "smtp-pass-Zq9"
NOW = datetime(2026, 12, 5, 10, 30, tzinfo=UTC)
EVENT = NotificationEvent(
    id="evt-mail-1",
    type=EventType.SUSPICIOUS,
    condition="shrunk",
    collection="db-prod",
    occurred_at=datetime(2026, 12, 5, 4, 0, tzinfo=UTC),
    summary="Version 43 of db-prod is 12 MiB, less than half the usual 80 MiB.",
    facts={"version": 43, "note": "<script>alert(1)</script> & more"},
)


@dataclass
class Mailbox:
    """What an aiosmtpd server received."""

    messages: list[tuple[str, list[str], bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("reject"):
            return "550 5.1.1 no such mailbox"
        if address.startswith("busy"):
            return "451 4.3.0 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(
                (
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.content,
                    session.authenticated,
                )
            )
        return "250 Message accepted"

    def take(self) -> list[tuple[str, list[str], bytes, bool]]:
        with self.lock:
            taken, self.messages = self.messages, []
        return taken


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, data: Any
) -> AuthResult:
    ok = (
        isinstance(data, LoginPassword)
        and data.login == USERNAME.encode()
        and data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


@dataclass(frozen=True)
class Servers:
    plain: int
    starttls: int
    tls: int
    ca_file: str
    mailbox: Mailbox


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = make_certificate(tmp_path_factory.mktemp("smtp-tls"))
    if made is None:
        require_service("openssl", "openssl is not installed: no certificate for TLS")
    return made


@pytest.fixture(scope="module")
def servers(certificate: tuple[Path, Path]) -> Iterator[Servers]:
    cert, key = certificate
    context = server_context(cert, key)
    mailbox = Mailbox()
    controllers = [
        # No encryption; a login is possible (a relay on a private network).
        Controller(
            mailbox,
            hostname="127.0.0.1",
            port=free_port(),
            authenticator=authenticator,
            auth_require_tls=False,
        ),
        # STARTTLS required, then a login.
        Controller(
            mailbox,
            hostname="127.0.0.1",
            port=free_port(),
            tls_context=context,
            require_starttls=True,
            authenticator=authenticator,
            auth_required=True,
        ),
        # Implicit TLS (aiosmtpd counts only STARTTLS as TLS for its auth_require_tls).
        Controller(
            mailbox,
            hostname="127.0.0.1",
            port=free_port(),
            ssl_context=context,
            authenticator=authenticator,
            auth_require_tls=False,
        ),
    ]
    for controller in controllers:
        controller.start()
    try:
        yield Servers(
            plain=controllers[0].port,
            starttls=controllers[1].port,
            tls=controllers[2].port,
            ca_file=str(cert),
            mailbox=mailbox,
        )
    finally:
        for controller in controllers:
            controller.stop()


def target(port: int, security: SmtpSecurity, **changes: Any) -> Channel:
    email = EmailTarget(
        host="127.0.0.1",
        port=port,
        security=security,
        sender="Backup Repository <backups@example.org>",
        recipients=("ops@example.org", "Alice <alice@example.org>"),
        timeout=timedelta(seconds=5),
    )
    return Channel(name="mail", type=ChannelType.EMAIL, email=replace(email, **changes))


@pytest.fixture
async def sender() -> AsyncIterator[ChannelSender]:
    async with httpx.AsyncClient() as http:
        built = build_sender(http=http, server_name="backups.test", clock=lambda: NOW)
        yield built
        await built.aclose()


def parse(content: bytes) -> EmailMessage:
    message = message_from_bytes(content, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def test_plain_smtp_delivers_both_parts(servers: Servers, sender: ChannelSender) -> None:
    servers.mailbox.take()
    await sender.send(target(servers.plain, SmtpSecurity.NONE), EVENT)
    ((mail_from, rcpt_tos, content, authenticated),) = servers.mailbox.take()
    assert mail_from == "backups@example.org"
    assert rcpt_tos == ["ops@example.org", "alice@example.org"]
    assert not authenticated
    message = parse(content)
    assert message["Subject"] == "[backups.test] db-prod: suspicious backup"
    assert message["From"] == "Backup Repository <backups@example.org>"
    assert message["To"] == "ops@example.org, Alice <alice@example.org>"
    assert message["Message-ID"] == "<evt-mail-1@example.org>"
    assert message["Date"] == "Sat, 05 Dec 2026 10:30:00 +0000"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    plain_body = text.get_content()
    html_body = html.get_content()
    assert EVENT.summary in plain_body
    assert "note: <script>alert(1)</script> & more" in plain_body
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html_body
    assert "<script>" not in html_body


async def test_starttls_with_a_login(servers: Servers, sender: ChannelSender) -> None:
    servers.mailbox.take()
    channel = target(
        servers.starttls,
        SmtpSecurity.STARTTLS,
        username=USERNAME,
        password=PASSWORD,
        ca_file=servers.ca_file,
    )
    await sender.send(channel, EVENT)
    ((_from, _to, content, authenticated),) = servers.mailbox.take()
    assert authenticated
    assert parse(content)["Message-ID"] == "<evt-mail-1@example.org>"


async def test_implicit_tls_with_a_login(servers: Servers, sender: ChannelSender) -> None:
    servers.mailbox.take()
    channel = target(
        servers.tls, SmtpSecurity.TLS, username=USERNAME, password=PASSWORD, ca_file=servers.ca_file
    )
    await sender.send(channel, EVENT)
    ((_from, _to, _content, authenticated),) = servers.mailbox.take()
    assert authenticated


async def test_a_wrong_password_is_permanent(servers: Servers, sender: ChannelSender) -> None:
    channel = target(
        servers.starttls,
        SmtpSecurity.STARTTLS,
        username=USERNAME,
        password="not-the-password",
        ca_file=servers.ca_file,
    )
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel, EVENT)
    assert caught.value.permanent
    assert "refused the login of notifier (535" in caught.value.reason
    assert "not-the-password" not in caught.value.reason
    assert servers.mailbox.take() == []


async def test_an_unknown_certificate_is_refused(servers: Servers, sender: ChannelSender) -> None:
    """Without the CA file the throw-away certificate is not trusted: nothing is sent."""
    channel = target(servers.tls, SmtpSecurity.TLS, username=USERNAME, password=PASSWORD)
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel, EVENT)
    assert "certificate verify failed" in caught.value.reason
    assert "must be trusted" in caught.value.reason
    assert servers.mailbox.take() == []


async def test_starttls_required_by_the_server(servers: Servers, sender: ChannelSender) -> None:
    """A channel without encryption against a server that demands STARTTLS: refused with
    a 5xx, permanent."""
    channel = target(servers.starttls, SmtpSecurity.NONE)
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel, EVENT)
    assert caught.value.permanent
    assert "530" in caught.value.reason


async def test_a_refused_recipient_is_permanent(servers: Servers, sender: ChannelSender) -> None:
    channel = target(servers.plain, SmtpSecurity.NONE, recipients=("reject@example.org",))
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel, EVENT)
    assert caught.value.permanent
    assert "reject@example.org (550 5.1.1 no such mailbox)" in caught.value.reason


async def test_a_busy_recipient_is_retryable(servers: Servers, sender: ChannelSender) -> None:
    channel = target(servers.plain, SmtpSecurity.NONE, recipients=("busy@example.org",))
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel, EVENT)
    assert not caught.value.permanent
    assert "451" in caught.value.reason


async def test_some_recipients_refused(servers: Servers, sender: ChannelSender) -> None:
    """Delivered to one, refused for the other: not sent again (the first has it)."""
    servers.mailbox.take()
    channel = target(
        servers.plain, SmtpSecurity.NONE, recipients=("ops@example.org", "reject@example.org")
    )
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel, EVENT)
    assert caught.value.permanent
    assert "for 1 of 2 recipients" in caught.value.reason
    assert [rcpt for _f, rcpt, _c, _a in servers.mailbox.take()] == [["ops@example.org"]]


async def test_connection_refused_is_retryable(sender: ChannelSender) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DeliveryError) as caught:
        await sender.send(target(port, SmtpSecurity.NONE), EVENT)
    assert not caught.value.permanent
    assert "could not be reached" in caught.value.reason


async def test_a_silent_server_times_out(sender: ChannelSender) -> None:
    """A server that accepts the connection and never greets."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            await sender.send(
                target(port, SmtpSecurity.NONE, timeout=timedelta(seconds=0.3)), EVENT
            )
    assert time.monotonic() - started < 2
    assert not caught.value.permanent
    assert "did not answer within 0.3s" in caught.value.reason


async def test_a_header_injection_is_refused(sender: ChannelSender) -> None:
    channel = target(1, SmtpSecurity.NONE, recipients=("ops@example.org\r\nBcc: evil@example.org",))
    with pytest.raises(DeliveryError) as caught:
        await sender.send(channel, EVENT)
    assert caught.value.permanent
