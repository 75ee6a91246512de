"""The senders: how one :class:`NotificationEvent` reaches one :class:`Channel`.

:func:`build_sender` makes the one object the notification service talks to (the
``NotificationSender`` port); it dispatches on the channel's type to the webhook
(``webhook.py``), email (``email.py``) and Apprise (``apprise.py``) senders. What a
message says is in ``payload.py``. The composition root passes in what they need: an
``httpx.AsyncClient``, the server's name and public URL, and a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from backup_repository.domain.notification_channels import (
    Channel,
    ChannelType,
    DeliveryError,
    NotificationEvent,
)
from backup_repository.notify.apprise import AppriseSender
from backup_repository.notify.email import EmailSender
from backup_repository.notify.payload import ServerInfo
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
        http: httpx.AsyncClient,
        server: ServerInfo,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.server = server
        self._webhook = WebhookSender(http, server, clock)
        self._email = EmailSender(server, clock)
        self._apprise = AppriseSender(server)

    async def send(self, channel: Channel, event: NotificationEvent) -> None:
        if channel.type is ChannelType.WEBHOOK and channel.webhook is not None:
            await self._webhook.send(channel.webhook, event)
            return
        if channel.type is ChannelType.EMAIL and channel.email is not None:
            await self._email.send(channel.email, event)
            return
        if channel.type is ChannelType.APPRISE and channel.apprise is not None:
            await self._apprise.send(channel.apprise, event)
            return
        raise DeliveryError(
            f"channel {channel.name} of type {channel.type} has no {channel.type} settings; "
            "check its spec",
            permanent=True,
        )

    async def aclose(self) -> None:
        await self._webhook.aclose()


def build_sender(
    *,
    http: httpx.AsyncClient,
    server_name: str,
    base_url: str = "",
    clock: Callable[[], datetime] = _now,
) -> ChannelSender:
    """The sender of every channel type. ``server_name`` says which deployment a message
    comes from, ``base_url`` is the server's public URL ("" when not known)."""
    return ChannelSender(http, ServerInfo(name=server_name, url=base_url), clock)
