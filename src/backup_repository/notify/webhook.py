"""Webhook channels: one signed JSON POST per event.

The request carries ``X-Backup-Repository-Event`` (the event id), ``-Timestamp`` (unix
seconds) and ``-Signature`` (``sha256=`` + hex HMAC-SHA256 of ``<timestamp>.<body>`` with
the channel's signing secret); see docs/notifications.md for a receiver. A 2xx answer is a
delivery; 408, 429, 5xx, time-outs and network errors may pass (retryable); any other
answer, a redirect included (redirects are never followed: the signed body would go to a
host nobody configured), is permanent.

Webhook URLs often carry a token in their path, so messages and logs name only the
scheme, host and port; the secret, the signature and the body are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import urlsplit

import httpx

from backup_repository import __version__
from backup_repository.domain.notification_channels import (
    DeliveryError,
    NotificationEvent,
    WebhookTarget,
)
from backup_repository.notify.payload import ServerInfo, signature, webhook_body

logger = logging.getLogger(__name__)

EVENT_HEADER: Final = "X-Backup-Repository-Event"
TIMESTAMP_HEADER: Final = "X-Backup-Repository-Timestamp"
SIGNATURE_HEADER: Final = "X-Backup-Repository-Signature"
USER_AGENT: Final = f"backup-repository/{__version__} (notifications)"
# Statuses worth trying again: the receiver is overloaded, restarting or slow.
_RETRYABLE_4XX: Final = frozenset({408, 425, 429})
# The longest Retry-After taken at its word.
_MAX_RETRY_AFTER: Final = timedelta(hours=24)


def where(url: str) -> str:
    """The part of a URL a message may show: ``https://host:port`` (no path, no query, no
    user info: they may carry a token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an unparsable URL"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}"


def retry_after(value: str | None, now: datetime) -> timedelta | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as a delay; None when absent or
    unreadable. Capped at a day; a date in the past is no delay."""
    if not value:
        return None
    value = value.strip()
    delay: timedelta
    if value.isdigit():
        delay = timedelta(seconds=int(value))
    else:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delay = max(moment - now, timedelta(0))
    return min(delay, _MAX_RETRY_AFTER)


class WebhookSender:
    """Delivers events to webhook channels through ``http`` (the default trust store; when
    None, a client of its own made at the first delivery), or through a client of its own
    per CA file for channels that name one (made again when the file changes, as a mounted
    ConfigMap does when it is updated)."""

    def __init__(
        self,
        http: httpx.AsyncClient | None,
        server: ServerInfo,
        clock: Callable[[], datetime],
    ) -> None:
        self._http = http
        # The default client when none was passed in (closed by aclose).
        self._own_http: httpx.AsyncClient | None = None
        self._server = server
        self._clock = clock
        # Per CA file: the client made from it, and the file's identity at the time (a
        # changed file, such as a ConfigMap updated in place, gets a new client).
        self._ca_clients: dict[str, tuple[tuple[int, int, int] | None, httpx.AsyncClient]] = {}
        # Clients of CA files that changed since; deliveries may still be using them.
        self._retired: list[httpx.AsyncClient] = []

    async def aclose(self) -> None:
        """Close the clients made here (never the one passed in)."""
        clients, self._ca_clients = self._ca_clients, {}
        retired, self._retired = self._retired, []
        own, self._own_http = self._own_http, None
        for client in [*(client for _stamp, client in clients.values()), *retired]:
            await client.aclose()
        if own is not None:
            await own.aclose()

    def _client(self, target: WebhookTarget) -> httpx.AsyncClient:
        if not target.ca_file:
            if self._http is not None:
                return self._http
            if self._own_http is None:
                self._own_http = httpx.AsyncClient()
            return self._own_http
        stamp = _file_stamp(target.ca_file)
        known = self._ca_clients.get(target.ca_file)
        if known is not None and known[0] == stamp:
            return known[1]
        try:
            context = ssl.create_default_context(cafile=target.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise DeliveryError(
                f"the CA file {target.ca_file} cannot be used ({exc}); check the channel's caFile",
                permanent=True,
            ) from None
        client = httpx.AsyncClient(verify=context, follow_redirects=False)
        if known is not None:
            self._retired.append(known[1])
        self._ca_clients[target.ca_file] = (stamp, client)
        return client

    async def send(self, target: WebhookTarget, event: NotificationEvent) -> None:
        body = webhook_body(event, self._server)
        now = self._clock()
        unix = int(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: event.id,
            TIMESTAMP_HEADER: str(unix),
            SIGNATURE_HEADER: signature(target.signing_secret, unix, body),
        }
        seconds = target.timeout.total_seconds()
        place = where(target.url)
        client = self._client(target)
        try:
            async with asyncio.timeout(seconds):
                response = await client.post(
                    target.url,
                    content=body,
                    headers=headers,
                    timeout=httpx.Timeout(seconds),
                    follow_redirects=False,
                )
        except (TimeoutError, httpx.TimeoutException):
            raise DeliveryError(f"{place} did not answer within {seconds:g}s") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            raise DeliveryError(
                f"the webhook URL ({place}) is not an http:// or https:// URL; "
                "check the channel's url",
                permanent=True,
            ) from None
        except httpx.TransportError as exc:
            raise DeliveryError(f"{place} could not be reached: {_cause(exc)}") from None
        status = response.status_code
        logger.debug(
            "webhook answered",
            extra={"event_id": event.id, "receiver": place, "status": status},
        )
        if 200 <= status < 300:
            return
        answer = f"{place} answered {status} {response.reason_phrase}".rstrip()
        if 300 <= status < 400:
            raise DeliveryError(
                f"{answer}: a redirect, which is never followed; configure the URL it points to",
                permanent=True,
            )
        if status in _RETRYABLE_4XX or status >= 500:
            raise DeliveryError(
                answer,
                retry_after=retry_after(response.headers.get("Retry-After"), now),
            )
        raise DeliveryError(f"{answer}: the receiver refused the event", permanent=True)


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    """What tells one version of a file from the next (inode, modification time, size),
    following symbolic links; None when it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _cause(exc: BaseException) -> str:
    """The innermost readable reason of a transport error (``Connection refused``,
    ``certificate verify failed``), never a URL."""
    seen: BaseException | None = exc
    text = ""
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verify failed ({seen.verify_message})"
        if isinstance(seen, OSError) and seen.errno:
            text = os.strerror(seen.errno)
        elif isinstance(seen, OSError) and seen.strerror:
            text = seen.strerror
        elif not text and str(seen) and "://" not in str(seen):
            text = str(seen)
        seen = seen.__cause__ or seen.__context__
    return text or type(exc).__name__
