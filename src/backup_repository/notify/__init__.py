"""The senders: how one :class:`NotificationEvent` reaches one :class:`Channel`.

:func:`build_sender` makes the one object the notification service talks to (the
``NotificationSender`` port); it dispatches on the channel's type to the webhook
(``webhook.py``), email (``email.py``) and Apprise (``apprise.py``) senders. What a
message says is in ``payload.py``. The composition root passes in what they need: the
server's name and public URL, a clock, and optionally an ``httpx.AsyncClient`` for
webhooks (without one the webhook sender makes its own, at its first delivery).

Each sender's module, and the library under it (httpx, smtplib, Apprise), is imported
when a channel of its type is first used: a server without such channels never loads
them (Apprise and httpx alone are about 10 MiB of resident memory).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from backup_repository.domain.notification_channels import (
    Channel,
    ChannelType,
    DeliveryError,
    NotificationEvent,
)
from backup_repository.notify.apprise_log import quiet_apprise_logging
from backup_repository.notify.payload import ServerInfo

if TYPE_CHECKING:
    import httpx

    from backup_repository.notify.apprise import AppriseSender
    from backup_repository.notify.email import EmailSender
    from backup_repository.notify.webhook import WebhookSender

__all__ = ["ChannelSender", "ServerInfo", "build_sender"]


def _now() -> datetime:
    return datetime.now(UTC)


class ChannelSender:
    """Implements ``services.ports.NotificationSender``: ``send`` delivers one event to one
    channel or raises :class:`DeliveryError`. Call :meth:`aclose` when done (it closes what
    the senders opened themselves, never the client passed in)."""

    def __init__(
        self,
        http: httpx.AsyncClient | None,
        server: ServerInfo,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.server = server
        self._http = http
        self._clock = clock
        # Made at the first delivery to a channel of their type (see the module's doc).
        self._webhook: WebhookSender | None = None
        self._email: EmailSender | None = None
        self._apprise: AppriseSender | None = None

    async def send(self, channel: Channel, event: NotificationEvent) -> None:
        if channel.type is ChannelType.WEBHOOK and channel.webhook is not None:
            await (await self._webhook_sender()).send(channel.webhook, event)
            return
        if channel.type is ChannelType.EMAIL and channel.email is not None:
            await (await self._email_sender()).send(channel.email, event)
            return
        if channel.type is ChannelType.APPRISE and channel.apprise is not None:
            await (await self._apprise_sender()).send(channel.apprise, event)
            return
        raise DeliveryError(
            f"channel {channel.name} of type {channel.type} has no {channel.type} settings; "
            "check its spec",
            permanent=True,
        )

    async def aclose(self) -> None:
        if self._webhook is not None:
            await self._webhook.aclose()

    async def _webhook_sender(self) -> WebhookSender:
        if self._webhook is None:
            await _import_off_the_loop("backup_repository.notify.webhook")
            from backup_repository.notify.webhook import WebhookSender

            if self._webhook is None:
                self._webhook = WebhookSender(self._http, self.server, self._clock)
        return self._webhook

    async def _email_sender(self) -> EmailSender:
        if self._email is None:
            await _import_off_the_loop("backup_repository.notify.email")
            from backup_repository.notify.email import EmailSender

            if self._email is None:
                self._email = EmailSender(self.server, self._clock)
        return self._email

    async def _apprise_sender(self) -> AppriseSender:
        if self._apprise is None:
            # Before Apprise's import, which logs already.
            quiet_apprise_logging()
            await _import_off_the_loop("backup_repository.notify.apprise")
            from backup_repository.notify.apprise import AppriseSender

            if self._apprise is None:
                self._apprise = AppriseSender(self.server)
        return self._apprise


async def _import_off_the_loop(module: str) -> None:
    """Import ``module`` in a worker thread: a first import of httpx or Apprise takes tenths
    of a second of CPU, which must not stall every request served by the event loop."""
    if module not in sys.modules:
        await asyncio.to_thread(importlib.import_module, module)


def build_sender(
    *,
    http: httpx.AsyncClient | None = None,
    server_name: str,
    base_url: str = "",
    clock: Callable[[], datetime] = _now,
) -> ChannelSender:
    """The sender of every channel type. ``server_name`` says which deployment a message
    comes from, ``base_url`` is the server's public URL ("" when not known). ``http`` is
    the client for webhooks (the caller closes it); without it the sender makes one when
    a webhook is first delivered and :meth:`ChannelSender.aclose` closes it."""
    return ChannelSender(http, ServerInfo(name=server_name, url=base_url), clock)
