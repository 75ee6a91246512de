"""The events the services emit, and whoever listens to them: the audit log
(``services/audit.py``) and the metrics (``http/metrics.py``) are both ``EventSink``s.

The services build an :class:`Event` at each action that matters to an operator (logins,
token refreshes and revocations, uploads accepted or refused and why, downloads, rotation
deletions, integrity results) and hand it to the one sink they were given; the
composition root gives them a :class:`FanOut` of the real listeners. A listener must never
make the action fail: :class:`FanOut` logs a listener's error and goes on.

An action that makes several events at once (an upload that rotates versions out) hands
them over together with :func:`emit_all`, in their order: a listener that can take them
together (:class:`BatchSink`, as the audit log does: one transaction for their rows) gets
them in one call, any other one by one.

An action that ends in a database transaction of its own can write the rows of its events
in it, instead of the audit log writing them in one more: an accepted upload then always
has its rows, and they cost no transaction of their own. The upload asks
:func:`keeps_rows` of its sink (true when a listener keeps rows, :class:`RowKeepingSink`:
the audit log); if so it builds its events before its commit, passes them to it
(``VersionRepository.commit_version``, which writes their rows with the version, in their
order), and once committed hands them over with :func:`emit_kept`: the audit log then only
writes its log lines, every other listener gets them as from :func:`emit_all`. When the
commit fails nothing of them was written, and the refusal is emitted as usual. When only
their rows fail (say the audit table is broken), the commit goes on without them, as an
action is never failed by its audit record, and the error reaches the audit log through
:func:`emit_kept`, which logs the events as not stored.

Events never carry secrets: no passwords, no tokens; sessions are named by the first 12
characters of their id (the SHA-256 of the token), as in the logs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol, cast, runtime_checkable

logger = logging.getLogger(__name__)


class Action(StrEnum):
    LOGIN = "login"
    TOKEN_REFRESH = "token.refresh"  # noqa: S105 (an action name)
    TOKEN_REVOKE = "token.revoke"  # noqa: S105 (an action name)
    UPLOAD = "upload"
    DOWNLOAD = "download"
    ROTATION_DELETE = "rotation.delete"
    # A collection manager protected a version from rotation, or unprotected it, or
    # deleted one (services/versions.py); failures too (reason: why refused).
    VERSION_PROTECT = "version.protect"
    VERSION_UNPROTECT = "version.unprotect"
    VERSION_DELETE = "version.delete"
    VERIFY = "verify"
    # An attempt to deliver a notification to a channel (services/notifications.py); the
    # reason is delivered, retry or failed.
    NOTIFICATION_DELIVERY = "notification.delivery"
    # A test message sent to a channel by an administrator.
    NOTIFICATION_TEST = "notification.test"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class RefusalReason(StrEnum):
    """Why an upload was refused (the ``reason`` of a failed upload event)."""

    AUTH = "auth"  # no valid token, or no right to upload to this collection
    WINDOW = "window"  # outside every backup window
    LOCK = "lock"  # another upload to the collection is running
    QUOTA = "quota"  # over maxOneVersionSize / maxCollectionSize
    OPENPGP = "openpgp"  # not an OpenPGP message
    SIGNATURE = "signature"  # unsigned, or not signed by a trusted uploader (trustedUploaders)
    NOT_FOUND = "not_found"  # no such collection
    INVALID = "invalid"  # malformed request (empty body, bad Content-Length, bad form)
    TIMEOUT = "timeout"  # the client was too slow
    STORAGE = "storage"  # the storage or the database failed
    ABORTED = "aborted"  # the client went away


def short_session(session_id: str) -> str:
    return session_id[:12]


@dataclass(frozen=True)
class Event:
    action: Action
    outcome: Outcome
    user: str = ""  # the user name, without the access key
    access_key: str = ""
    client_ip: str = ""
    collection: str = ""
    version: int | None = None
    size: int | None = None  # bytes uploaded, downloaded or deleted
    reason: str = ""  # a RefusalReason value for uploads; free text otherwise
    session: str = ""  # short_session() of the session acting (or revoked, for revocations)
    detail: str = ""  # a human-readable message (an error text, what was revoked)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class EventSink(Protocol):
    async def emit(self, event: Event) -> None:
        """Record or count the event. Should not raise; :class:`FanOut` guards anyway."""


@runtime_checkable
class BatchSink(EventSink, Protocol):
    async def emit_all(self, events: Sequence[Event]) -> None:
        """Record or count several events of one action, in their order, together."""


async def emit_all(sink: EventSink, events: Sequence[Event]) -> None:
    """Hand ``events`` to ``sink`` in their order: in one call when it takes several
    together, else one by one."""
    # getattr rather than isinstance of the runtime-checkable Protocol: a hundred times
    # cheaper, on the path of every upload.
    batch = getattr(sink, "emit_all", None)
    if batch is not None:
        await batch(events)
        return
    for event in events:
        await sink.emit(event)


@runtime_checkable
class RowKeepingSink(EventSink, Protocol):
    def keeps_rows(self) -> bool:
        """Whether this listener keeps events as rows in the database (the audit log does)."""

    async def emit_kept(self, events: Sequence[Event], failure: Exception | None = None) -> None:
        """Events of one action whose rows the action wrote in its own transaction: as
        :meth:`BatchSink.emit_all`, without writing the rows again. ``failure``: why the
        action could not write them after all (it went on without them)."""


def keeps_rows(sink: EventSink) -> bool:
    """Whether ``sink`` (or a listener it fans out to) keeps events as rows: an action may
    then write the rows of its events in its own transaction (module docstring)."""
    keeps = getattr(sink, "keeps_rows", None)
    return keeps is not None and bool(keeps())


async def emit_kept(
    sink: EventSink, events: Sequence[Event], failure: Exception | None = None
) -> None:
    """Hand over ``events`` whose rows their action wrote, or tried to write and could not
    (``failure``) (module docstring)."""
    if keeps_rows(sink):
        await cast(RowKeepingSink, sink).emit_kept(events, failure)
        return
    await emit_all(sink, events)


class NullSink:
    async def emit(self, event: Event) -> None:
        return None


class FanOut:
    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self._sinks = list(sinks)

    def add(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    async def emit(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                await sink.emit(event)
            except Exception:
                logger.exception("event listener %s failed", type(sink).__name__)

    async def emit_all(self, events: Sequence[Event]) -> None:
        for sink in self._sinks:
            try:
                await emit_all(sink, events)
            except Exception:
                logger.exception("event listener %s failed", type(sink).__name__)

    def keeps_rows(self) -> bool:
        return any(keeps_rows(sink) for sink in self._sinks)

    async def emit_kept(self, events: Sequence[Event], failure: Exception | None = None) -> None:
        for sink in self._sinks:
            try:
                await emit_kept(sink, events, failure)
            except Exception:
                logger.exception("event listener %s failed", type(sink).__name__)
