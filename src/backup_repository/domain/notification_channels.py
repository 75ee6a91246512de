"""Notification channels and subscriptions as the domain sees them (no I/O).

A ``NotificationChannel`` object of the configuration becomes a :class:`Channel` with its
secrets already read from their Secrets; a collection's ``spec.notifications`` becomes its
:class:`NotificationPolicy`. Secret values never appear in ``repr`` (so never in a log line
or a traceback).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


class EventType(StrEnum):
    """What a notification is about; a subscription chooses among these."""

    MISSING = "missing"  # a window closed (or the maximum age passed) with no new version
    SUSPICIOUS = "suspicious"  # a version much smaller than usual, or repeated refusals
    LIMITS = "limits"  # usage over the threshold, or a version accepted into extra space
    INTEGRITY = "integrity"  # a scrub found a corrupt or missing version
    RECOVERED = "recovered"  # the condition behind one of the above cleared
    TEST = "test"  # a test message sent by an administrator (never subscribed to)


# Every event type a subscription may list (``test`` is sent on request only).
SUBSCRIBABLE: frozenset[EventType] = frozenset(
    {
        EventType.MISSING,
        EventType.SUSPICIOUS,
        EventType.LIMITS,
        EventType.INTEGRITY,
        EventType.RECOVERED,
    }
)


class ChannelType(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"
    APPRISE = "apprise"


class SmtpSecurity(StrEnum):
    TLS = "tls"  # implicit TLS (usually port 465)
    STARTTLS = "starttls"  # plain connection upgraded with STARTTLS (usually port 587)
    NONE = "none"  # no encryption (a relay on the same host or network only)


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    # The HMAC-SHA256 key of the signature header, read from its Secret.
    signing_secret: str = field(repr=False)
    timeout: timedelta = timedelta(seconds=10)
    # A PEM file of the certificate authorities to trust for an https URL (a private CA);
    # empty: the system's trust store.
    ca_file: str = ""


@dataclass(frozen=True)
class EmailTarget:
    host: str
    port: int
    security: SmtpSecurity
    sender: str
    recipients: tuple[str, ...]
    username: str = ""
    password: str = field(default="", repr=False)
    timeout: timedelta = timedelta(seconds=30)
    # A PEM file of the certificate authorities to trust for TLS and STARTTLS (a private
    # CA); empty: the system's trust store. Certificates are always verified.
    ca_file: str = ""


@dataclass(frozen=True)
class AppriseTarget:
    # Apprise URLs carry the services' tokens, so they come from a Secret.
    urls: tuple[str, ...] = field(repr=False)
    # The longest one delivery (to every URL) may take.
    timeout: timedelta = timedelta(seconds=30)


@dataclass(frozen=True)
class Channel:
    """A place notifications go to. Exactly one of ``webhook``, ``email`` and ``apprise``
    is set, the one ``type`` names."""

    name: str
    type: ChannelType
    description: str = ""
    webhook: WebhookTarget | None = None
    email: EmailTarget | None = None
    apprise: AppriseTarget | None = None
    # A default subscription: when not None, every collection is subscribed to this
    # channel for these events (in addition to the collections' own subscriptions).
    all_collections: frozenset[EventType] | None = None


@dataclass(frozen=True)
class Subscription:
    channel: str
    events: frozenset[EventType] = SUBSCRIBABLE


@dataclass(frozen=True)
class NotificationPolicy:
    """A collection's subscriptions and the thresholds its conditions are judged by."""

    subscriptions: tuple[Subscription, ...] = ()
    # "missing": how long after a window closes (or after max_age, without windows) a
    # backup may still arrive before it is announced as missing.
    grace_period: timedelta = timedelta(minutes=15)
    # "missing" for a collection without windows: the newest version is older than this.
    # None: such a collection is never judged missing.
    max_age: timedelta | None = None
    # "suspicious": a new version smaller than ratio x the median of the previous
    # ``size_sample`` versions (needs at least 3 of them).
    shrink_ratio: float = 0.5
    size_sample: int = 5
    # "suspicious": this many refused uploads within ``refusal_period``.
    refusal_threshold: int = 3
    refusal_period: timedelta = timedelta(hours=24)
    # "limits": usage of maxCollectionSize at or above this fraction.
    usage_threshold: float = 0.9
    # An ongoing condition is announced again after this long; None: never repeated.
    reminder_interval: timedelta | None = timedelta(hours=24)


def subscribers(
    collection: str,
    policy: NotificationPolicy,
    channels: Mapping[str, Channel] | None,
    event: EventType,
    condition: EventType | None = None,
) -> tuple[str, ...]:
    """The names of the channels an event of ``collection`` goes to, sorted.

    ``condition`` is the condition a ``recovered`` event clears: such an event goes to the
    channels that subscribe to ``recovered`` *and* to that condition. Channels that are
    not (or no longer) configured are left out. ``collection`` is unused today; it is here
    so that per-collection default subscriptions can be added without changing callers.
    """
    del collection
    known = channels or {}

    def wants(events: frozenset[EventType]) -> bool:
        if event not in events:
            return False
        return event is not EventType.RECOVERED or condition is None or condition in events

    names = {s.channel for s in policy.subscriptions if s.channel in known and wants(s.events)}
    names |= {
        name
        for name, channel in known.items()
        if channel.all_collections is not None and wants(channel.all_collections)
    }
    return tuple(sorted(names))


@dataclass(frozen=True)
class NotificationEvent:
    """One announcement: what every channel receives (the webhook's JSON is built from it).

    ``id`` is stable: a redelivery of the same event carries the same id, so receivers can
    drop duplicates. ``condition`` names the condition the event is about (``missing``,
    ``shrunk``, ``refusals``, ``usage``, ``extra-space``, ``integrity``; ``test`` for a test
    message); for a ``recovered`` event it is the condition that cleared. ``facts`` holds
    the figures behind the summary (JSON values only). ``reminder`` is true when an ongoing
    condition is announced again.
    """

    id: str
    type: EventType
    condition: str
    collection: str
    occurred_at: datetime
    summary: str
    facts: Mapping[str, object] = field(default_factory=dict)
    reminder: bool = False


class DeliveryError(Exception):
    """A channel could not take an event. ``permanent`` when trying again cannot help (the
    receiver refused the message itself, say with a 4xx other than 408 or 429, or the
    channel is misconfigured); the message never contains a secret. ``retry_after`` is how
    long the receiver asked to wait before trying again (a ``Retry-After`` header), when it
    said so."""

    def __init__(
        self, reason: str, *, permanent: bool = False, retry_after: timedelta | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.retry_after = retry_after
