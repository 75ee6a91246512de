"""Chat and push channels (ntfy, Gotify, Matrix, Slack, Discord, Telegram, ...) through
Apprise: one URL per service, 100+ services, maintained upstream, so no hand-written
client per service here.

Apprise is synchronous: a delivery runs in a worker thread, bounded by the channel's
timeout (Apprise's own call deadline, and the same bound around the thread). Apprise
cannot tell a permanent failure from a passing one, so every failed delivery is
retryable, except a URL Apprise does not understand.

Apprise URLs carry the services' tokens (often in the host or path: ``ntfy://<topic>``,
``tgram://<bot token>/<chat>``), and Apprise names them in its log lines (``Sent ntfy
notification to '<url>'`` at INFO). So Apprise never writes to the server's log: its
logger is kept at WARNING and does not propagate (set before Apprise is first imported,
``notify/apprise_log.py``); what it reports about a failed delivery
reaches the :class:`DeliveryError`'s reason, with every part of the channel's URLs
replaced by ``[REDACTED]``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

import apprise

from backup_repository.domain.notification_channels import (
    AppriseTarget,
    DeliveryError,
    NotificationEvent,
)
from backup_repository.logs import REDACTED, redact_text
from backup_repository.notify.apprise_log import quiet_apprise_logging
from backup_repository.notify.payload import AppriseMessage, ServerInfo, apprise_message

# Time left to Apprise to give up by itself after its own deadline passed.
_GRACE_SECONDS: Final = 2.0
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}")
# Parts of a URL shorter than this, or short numbers (ports), are not redacted.
_MIN_SECRET: Final = 4


def url_parts(url: str) -> set[str]:
    """The parts of an Apprise URL that may be secret: user, password, host, path segments
    and query values (raw and decoded)."""
    parts: set[str] = set()
    try:
        split = urlsplit(url)
        pieces = re.split(r"[:@]", split.netloc)
        pieces += split.path.split("/")
        pieces += [value for _key, value in parse_qsl(split.query, keep_blank_values=False)]
        pieces += re.split(r"[/:@?&=#,]+", split.fragment)
    except ValueError:
        pieces = re.split(r"[/:@?&=#,]+", url.split("://", 1)[-1])
    for piece in pieces:
        for candidate in (piece, unquote(piece)):
            if len(candidate) < _MIN_SECRET or (candidate.isdigit() and len(candidate) < 6):
                continue
            parts.add(candidate)
    return parts


def scrub(text: str, urls: Sequence[str]) -> str:
    """``text`` with every part of ``urls`` that may be secret replaced, and the log
    redaction's patterns (URL passwords, tokens) applied."""
    secrets = set().union(*(url_parts(url) for url in urls)) if urls else set()
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return redact_text(text)


def scheme_of(url: str) -> str:
    """The scheme of an Apprise URL, safe to show (``tgram``), or ``?``."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    return scheme if _SCHEME.fullmatch(scheme) else "?"


class AppriseSender:
    def __init__(self, server: ServerInfo) -> None:
        self._server = server
        quiet_apprise_logging()

    async def send(self, target: AppriseTarget, event: NotificationEvent) -> None:
        if not target.urls:
            raise DeliveryError(
                "the channel has no Apprise URLs; add at least one to its Secret",
                permanent=True,
            )
        message = apprise_message(event, self._server)
        seconds = target.timeout.total_seconds()
        try:
            async with asyncio.timeout(seconds + _GRACE_SECONDS):
                await asyncio.to_thread(_notify, target.urls, message, seconds)
        except TimeoutError:
            raise DeliveryError(
                f"the Apprise services did not answer within {seconds:g}s"
            ) from None


def _notify(urls: Sequence[str], message: AppriseMessage, seconds: float) -> None:
    """One synchronous Apprise call to every URL (in a worker thread)."""
    # Nothing on disk: no persistent store (some services cache logins there), no plugin
    # folders.
    asset = apprise.AppriseAsset(
        app_id="Backup Repository", app_desc="Backup Repository", storage_mode="memory"
    )
    client = apprise.Apprise(asset=asset)
    for number, url in enumerate(urls, 1):
        if not client.add(url):
            raise DeliveryError(
                f"Apprise URL {number} of the channel (scheme {scheme_of(url)}) is not one "
                "Apprise can use; check it against Apprise's list of services",
                permanent=True,
            )
    result = client.notify(
        body=message.body,
        title=message.title,
        notify_type=message.level,
        body_format=apprise.NotifyFormat.TEXT,
        timeout=seconds,
    )
    try:
        if result:
            return
        services = list(result)
        failures = []
        for service in services:
            if service:
                continue
            said = [
                entry.message
                for entry in service.logs()
                if entry.level in ("WARNING", "ERROR", "CRITICAL")
            ]
            if service.status == apprise.AppriseResultStatus.TIMEOUT:
                said.append(f"no answer within {seconds:g}s")
            failures.append(f"{service.name}: {' '.join(said) or 'failed'}")
        if not failures:
            failures = [entry.message for entry in result.call_logs()] or [
                f"Apprise reported {result.status.name.lower()}"
            ]
        reason = f"{len(failures)} of {len(services) or len(urls)} Apprise services failed: "
        raise DeliveryError(scrub(reason + "; ".join(failures), urls))
    finally:
        result.close()
