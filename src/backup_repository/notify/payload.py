"""What a notification says, for each kind of channel (pure: no I/O).

- :func:`webhook_body`: the webhook's JSON, schema ``backup-repository.notification/v1``
  (documented field by field in docs/notifications.md). Fields are only ever added to a
  version; a change that removes or redefines a field gets a new schema name.
- :func:`signature`: the ``X-Backup-Repository-Signature`` value of a webhook request.
- :func:`subject`, :func:`plain_text`, :func:`html_text`: an email's subject line and its
  two bodies (the HTML one escapes everything it shows).
- :func:`apprise_message`: the title, body and level of a chat or push message.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from backup_repository.domain.notification_channels import EventType, NotificationEvent

SCHEMA: Final = "backup-repository.notification/v1"
SIGNATURE_PREFIX: Final = "sha256="

# What each event type is called in a subject line or a chat title.
_HEADLINES: Final[dict[EventType, str]] = {
    EventType.MISSING: "backup missing",
    EventType.SUSPICIOUS: "suspicious backup",
    EventType.LIMITS: "close to its limits",
    EventType.INTEGRITY: "integrity problem",
    EventType.RECOVERED: "back to normal",
    EventType.TEST: "test message",
}
# Apprise's notification types (``apprise.NotifyType`` values): the colour or icon a
# service shows.
_LEVELS: Final[dict[EventType, str]] = {
    EventType.MISSING: "failure",
    EventType.SUSPICIOUS: "warning",
    EventType.LIMITS: "warning",
    EventType.INTEGRITY: "failure",
    EventType.RECOVERED: "success",
    EventType.TEST: "info",
}


@dataclass(frozen=True)
class ServerInfo:
    """The server a notification comes from: ``name`` says which deployment it is (the
    host name unless configured), ``url`` its public base URL ("" when not known)."""

    name: str
    url: str = ""


@dataclass(frozen=True)
class AppriseMessage:
    title: str
    body: str
    # An ``apprise.NotifyType`` value: info, success, warning or failure.
    level: str


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, to the second (``2026-12-05T10:23:06Z``)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def webhook_document(event: NotificationEvent, server: ServerInfo) -> dict[str, object]:
    """The webhook's JSON object, before encoding."""
    return {
        "schema": SCHEMA,
        "id": event.id,
        "type": str(event.type),
        "condition": event.condition,
        "collection": event.collection,
        "occurredAt": timestamp(event.occurred_at),
        "summary": event.summary,
        "facts": dict(event.facts),
        "reminder": event.reminder,
        "server": {"name": server.name, "url": server.url or None},
    }


def webhook_body(event: NotificationEvent, server: ServerInfo) -> bytes:
    """The exact bytes a webhook request carries (compact UTF-8 JSON); the signature is
    computed over these bytes, so receivers must verify the raw body, not a re-encoding."""
    return json.dumps(
        webhook_document(event, server),
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    ).encode()


def signature(secret: str, unix_seconds: int, body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256, keyed with ``secret``, of
    ``<unix_seconds>.<body>``."""
    mac = hmac.new(secret.encode(), f"{unix_seconds}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def headline(event: NotificationEvent) -> str:
    """``db-prod: backup missing`` (``Reminder:`` in front for a repeated announcement)."""
    what = _HEADLINES.get(event.type, str(event.type))
    if event.type is EventType.RECOVERED and event.condition:
        what = f"{what} ({event.condition})"
    text = f"{event.collection}: {what}" if event.collection else what
    return f"Reminder: {text}" if event.reminder else text


def subject(event: NotificationEvent, server: ServerInfo) -> str:
    """An email's subject: ``[backups.example.org] db-prod: backup missing``. Line breaks
    are replaced, so no value can add a header."""
    return _one_line(f"[{server.name}] {headline(event)}")


def _fact_lines(event: NotificationEvent) -> list[tuple[str, str]]:
    return [(str(key), _show(value)) for key, value in event.facts.items()]


def _show(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _details(event: NotificationEvent, server: ServerInfo) -> list[tuple[str, str]]:
    rows = [
        ("Event", f"{event.type} ({event.condition})" if event.condition else str(event.type)),
        ("Collection", event.collection or "-"),
        ("Occurred at", timestamp(event.occurred_at)),
        ("Server", f"{server.name} {server.url}".strip()),
        ("Event id", event.id),
    ]
    return rows


def plain_text(event: NotificationEvent, server: ServerInfo) -> str:
    """An email's text/plain body: the summary, the facts, then the event's details."""
    lines = [event.summary, ""]
    facts = _fact_lines(event)
    if facts:
        lines += [f"{key}: {value}" for key, value in facts]
        lines.append("")
    lines += [f"{key}: {value}" for key, value in _details(event, server)]
    if event.reminder:
        lines += ["", "This condition was announced before and is still ongoing."]
    return "\n".join(lines) + "\n"


def html_text(event: NotificationEvent, server: ServerInfo) -> str:
    """An email's text/html body: the same as :func:`plain_text`, every value escaped."""
    e = html.escape

    def table(rows: list[tuple[str, str]]) -> str:
        cells = "".join(
            f'<tr><th align="left" style="padding-right:1em">{e(k)}</th><td>{e(v)}</td></tr>'
            for k, v in rows
        )
        return f"<table>{cells}</table>"

    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>',
        e(headline(event)),
        "</title></head><body>",
        f"<p><strong>{e(event.summary)}</strong></p>",
    ]
    facts = _fact_lines(event)
    if facts:
        parts.append(table(facts))
    parts.append('<div style="color:#666">' + table(_details(event, server)) + "</div>")
    if event.reminder:
        parts.append("<p>This condition was announced before and is still ongoing.</p>")
    parts.append("</body></html>")
    return "".join(parts) + "\n"


def apprise_message(event: NotificationEvent, server: ServerInfo) -> AppriseMessage:
    """A chat or push message: a short title, the summary and facts, and a level."""
    lines = [event.summary]
    lines += [f"{key}: {value}" for key, value in _fact_lines(event)]
    lines.append(f"{server.name} · {timestamp(event.occurred_at)} · {event.id}")
    return AppriseMessage(
        title=_one_line(headline(event)),
        body="\n".join(lines),
        level=_LEVELS.get(event.type, "info"),
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
