"""What notifications say (notify/payload.py) and the pure helpers of the senders: the
webhook document and signature, email texts and headers, Apprise messages, Retry-After,
and what error messages may show of a URL."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from backup_repository.domain.notification_channels import (
    EmailTarget,
    EventType,
    NotificationEvent,
    SmtpSecurity,
)
from backup_repository.notify.apprise import scheme_of, scrub, url_parts
from backup_repository.notify.email import build_message, message_id
from backup_repository.notify.payload import (
    SCHEMA,
    ServerInfo,
    apprise_message,
    html_text,
    plain_text,
    signature,
    subject,
    timestamp,
    webhook_body,
    webhook_document,
)
from backup_repository.notify.webhook import retry_after, where

SERVER = ServerInfo(name="backups.example.org", url="https://backups.example.org")
EVENT = NotificationEvent(
    id="evt-42",
    type=EventType.LIMITS,
    condition="usage",
    collection="db-prod",
    occurred_at=datetime(2026, 12, 5, 10, 0, 0, 123456, tzinfo=UTC),
    summary="db-prod uses 92% of its maxCollectionSize.",
    facts={"usedBytes": 920, "limitBytes": 1000, "ratio": 0.92, "names": ["a", "b"]},
)


def test_webhook_document_has_every_field_of_v1() -> None:
    assert webhook_document(EVENT, SERVER) == {
        "schema": SCHEMA,
        "id": "evt-42",
        "type": "limits",
        "condition": "usage",
        "collection": "db-prod",
        "occurredAt": "2026-12-05T10:00:00Z",
        "summary": EVENT.summary,
        "facts": {"usedBytes": 920, "limitBytes": 1000, "ratio": 0.92, "names": ["a", "b"]},
        "reminder": False,
        "server": {"name": "backups.example.org", "url": "https://backups.example.org"},
    }
    assert SCHEMA == "backup-repository.notification/v1"


def test_webhook_body_is_compact_utf8_and_null_url_when_unknown() -> None:
    event = NotificationEvent(
        id="e",
        type=EventType.TEST,
        condition="test",
        collection="",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        summary="Grüße",
        facts={"when": datetime(2026, 1, 1, tzinfo=UTC)},
    )
    body = webhook_body(event, ServerInfo(name="s"))
    assert "Grüße".encode() in body
    assert b": " not in body
    document = json.loads(body)
    assert document["server"] == {"name": "s", "url": None}
    assert document["facts"] == {"when": "2026-01-01 00:00:00+00:00"}


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"k3y", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert signature("k3y", 1_700_000_000, body) == f"sha256={expected}"
    assert signature("k3y", 1_700_000_001, body) != signature("k3y", 1_700_000_000, body)


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 12, 5, 10, 0, 59, 999999, tzinfo=UTC), "2026-12-05T10:00:59Z"),
        (datetime(2026, 12, 5, 12, 0, tzinfo=timezone(timedelta(hours=2))), "2026-12-05T10:00:00Z"),
        (datetime(2026, 12, 5, 10, 0), "2026-12-05T10:00:00Z"),
    ],
)
def test_timestamps_are_utc_seconds(moment: datetime, text: str) -> None:
    assert timestamp(moment) == text


def test_subject_is_one_line() -> None:
    assert subject(EVENT, SERVER) == "[backups.example.org] db-prod: close to its limits"
    nasty = NotificationEvent(
        id="x",
        type=EventType.MISSING,
        condition="missing",
        collection="a\r\nBcc: evil@example.org",
        occurred_at=EVENT.occurred_at,
        summary="s",
    )
    assert "\n" not in subject(nasty, SERVER)
    assert "\r" not in subject(nasty, SERVER)


def test_reminders_and_recoveries_say_so() -> None:
    reminder = NotificationEvent(**{**EVENT.__dict__, "reminder": True})
    assert subject(reminder, SERVER).startswith("[backups.example.org] Reminder: db-prod")
    assert "still ongoing" in plain_text(reminder, SERVER)
    recovered = NotificationEvent(**{**EVENT.__dict__, "type": EventType.RECOVERED})
    assert subject(recovered, SERVER).endswith("db-prod: back to normal (usage)")


def test_plain_text_holds_summary_facts_and_details() -> None:
    text = plain_text(EVENT, SERVER)
    assert text.startswith(EVENT.summary + "\n\n")
    assert "usedBytes: 920\n" in text
    assert 'names: ["a", "b"]\n' in text
    assert "Event id: evt-42\n" in text
    assert "Server: backups.example.org https://backups.example.org\n" in text


def test_html_escapes_everything_it_shows() -> None:
    event = NotificationEvent(
        id="<id>",
        type=EventType.INTEGRITY,
        condition="integrity",
        collection="<b>db</b>",
        occurred_at=EVENT.occurred_at,
        summary='<img src=x onerror="alert(1)">',
        facts={"<k>": "<v> & 'q'"},
    )
    text = html_text(event, SERVER)
    assert "<img" not in text
    assert "<b>db" not in text
    assert "<k>" not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert "&lt;v&gt; &amp; &#x27;q&#x27;" in text
    assert "&lt;id&gt;" in text


@pytest.mark.parametrize(
    ("event_type", "level"),
    [
        (EventType.MISSING, "failure"),
        (EventType.INTEGRITY, "failure"),
        (EventType.SUSPICIOUS, "warning"),
        (EventType.LIMITS, "warning"),
        (EventType.RECOVERED, "success"),
        (EventType.TEST, "info"),
    ],
)
def test_apprise_levels(event_type: EventType, level: str) -> None:
    event = NotificationEvent(**{**EVENT.__dict__, "type": event_type})
    assert apprise_message(event, SERVER).level == level


def test_apprise_message() -> None:
    message = apprise_message(EVENT, SERVER)
    assert message.title == "db-prod: close to its limits"
    assert message.body.splitlines()[0] == EVENT.summary
    assert "ratio: 0.92" in message.body
    assert "evt-42" in message.body


@pytest.mark.parametrize(
    ("event_id", "sender", "expected"),
    [
        ("evt-1", "Backups <backups@example.org>", "<evt-1@example.org>"),
        ("evt-1", "not an address", "<evt-1@backups.example.org>"),
        ("a b<c>", "x@example.org", f"<{hashlib.sha256(b'a b<c>').hexdigest()}@example.org>"),
        ("a..b", "x@example.org", f"<{hashlib.sha256(b'a..b').hexdigest()}@example.org>"),
    ],
)
def test_message_id_is_derived_from_the_event(event_id: str, sender: str, expected: str) -> None:
    assert message_id(event_id, sender, SERVER) == expected


def test_email_headers() -> None:
    target = EmailTarget(
        host="smtp.example.org",
        port=587,
        security=SmtpSecurity.STARTTLS,
        sender="backups@example.org",
        recipients=("a@example.org", "b@example.org"),
    )
    now = datetime(2026, 12, 5, 11, 0, tzinfo=UTC)
    message = build_message(target, EVENT, SERVER, now)
    assert message["To"] == "a@example.org, b@example.org"
    assert message["Date"] == "Sat, 05 Dec 2026 11:00:00 +0000"
    assert message["X-Backup-Repository-Event"] == "evt-42"
    assert message["Message-ID"] == "<evt-42@example.org>"
    assert [part.get_content_type() for part in message.iter_parts()] == [
        "text/plain",
        "text/html",
    ]


NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "delay"),
    [
        (None, None),
        ("", None),
        ("120", timedelta(seconds=120)),
        ("Sat, 05 Dec 2026 10:01:30 GMT", timedelta(seconds=90)),
        ("Sat, 05 Dec 2026 09:00:00 GMT", timedelta(0)),
        ("999999999", timedelta(hours=24)),
        ("soon", None),
    ],
)
def test_retry_after(header: str | None, delay: timedelta | None) -> None:
    assert retry_after(header, NOW) == delay


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.org/T000/B000/XXXX?token=abc", "https://hooks.example.org"),
        ("http://user:pw@127.0.0.1:8080/x", "http://127.0.0.1:8080"),
        ("http://[::1]:9000/hook", "http://[::1]:9000"),
    ],
)
def test_where_shows_no_path_or_credentials(url: str, shown: str) -> None:
    assert where(url) == shown


def test_scrub_removes_every_part_of_the_urls() -> None:
    urls = ["tgram://123456789:AAHsecretbottoken/-100200300", "ntfy://user:pa%24%24@host/topic9"]
    parts = url_parts(urls[0]) | url_parts(urls[1])
    assert {"AAHsecretbottoken", "-100200300", "topic9", "pa$$", "pa%24%24", "user"} <= parts
    text = "Failed for chat -100200300 with AAHsecretbottoken on topic9 (pa$$), error=400."
    cleaned = scrub(text, urls)
    for secret in ("AAHsecretbottoken", "-100200300", "topic9", "pa$$"):
        assert secret not in cleaned
    assert "error=400" in cleaned


def test_scheme_of() -> None:
    assert scheme_of("tgram://token/chat") == "tgram"
    assert scheme_of("token-without-scheme") == "?"
    assert scheme_of("we ird://x") == "?"


def test_the_documented_schema_is_the_one_sent() -> None:
    """docs/notifications.md shows a body with exactly the fields sent, and its table
    describes each of them."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "notifications.md").read_text()
    section = text.split("### The body, schema `backup-repository.notification/v1`", 1)[1]
    match = re.search(r"```json\n(.*?)\n```", section, re.DOTALL)
    assert match is not None
    example = json.loads(match.group(1))
    sent = webhook_document(EVENT, SERVER)
    assert list(example) == list(sent)
    assert example["schema"] == SCHEMA
    described = set(re.findall(r"^\| `(\w+)` \|", section.split("### Checking", 1)[0], re.M))
    assert described == set(sent)
