"""The audit log: every event of :mod:`.events` kept in the database and written as one
structured log line; and the search of it for system administrators.

:class:`AuditLog` is an ``EventSink``. It stores the event first, then logs it once on the
logger ``backup_repository.audit`` with the message ``audit`` and the event's fields as
``extra`` (so a JSON log formatter emits them as keys). When the database cannot take the
row, the line is logged at error level with ``stored`` false and the error: the action
itself is never failed by its audit record.

It keeps rows (``keeps_rows``, services/events.py): an upload writes its events' rows in
the transaction that records its version (so they cost no transaction of their own, and an
accepted upload has them unless they alone failed: then the version is recorded without
them), and hands them over with ``emit_kept``, which only logs their lines (at error level,
``stored`` false, when they failed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from backup_repository.domain import authz
from backup_repository.domain.errors import Forbidden, InvalidInput
from backup_repository.logs import log_fields
from backup_repository.services.auth import AuthContext
from backup_repository.services.events import Action, Event, Outcome

AUDIT_LOGGER: Final = "backup_repository.audit"
NO_PERMISSION_AUDIT: Final = (
    "no permissions to read the audit log (systemAdmin, not a narrowed token)"
)
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 500
# How long recording one event may hold up the action it records.
DEFAULT_WRITE_TIMEOUT_S: Final = 5.0
MAX_ERROR_TEXT: Final = 1024
# Cursors are the decimal id of the last entry of a page; 18 digits always fit a BIGINT.
MAX_CURSOR_DIGITS: Final = 18


@dataclass(frozen=True)
class AuditFilters:
    """What to look for; every given filter must match. ``since`` is inclusive, ``until``
    exclusive; both timezone-aware."""

    user: str | None = None
    collection: str | None = None
    action: Action | None = None
    outcome: Outcome | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class AuditPage:
    """Which page: at most ``limit`` entries recorded before the entry ``cursor`` names
    (from the newest when None)."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    """A recorded event; ``id`` grows with the order of recording. ``action`` and
    ``outcome`` are kept as stored text, so that rows written by a newer release sharing the
    database still read back."""

    id: int
    at: datetime
    action: str
    outcome: str
    user: str
    access_key: str
    client_ip: str
    collection: str
    version: int | None
    size: int | None
    reason: str
    session: str
    detail: str


@dataclass(frozen=True)
class AuditResult:
    entries: Sequence[AuditEntry]
    # Pass back as ``cursor`` for the next (older) page; None when this page is the last.
    next_cursor: str | None


class AuditRepository(Protocol):
    async def add(self, event: Event) -> None:
        """Record one event (texts cut to their column sizes)."""

    async def add_all(self, events: Sequence[Event]) -> None:
        """Record several events in one transaction, in their order."""

    async def query(
        self, filters: AuditFilters, limit: int, before_id: int | None = None
    ) -> list[AuditEntry]:
        """At most ``limit`` entries matching ``filters``, newest first, only those with an
        id below ``before_id`` when given."""


def event_fields(event: Event) -> dict[str, Any]:
    """The event as flat, JSON-friendly fields: the ``extra`` of the audit log line."""
    return {
        "action": event.action.value,
        "outcome": event.outcome.value,
        "user": event.user,
        "access_key": event.access_key,
        "client_ip": event.client_ip,
        "collection": event.collection,
        "version": event.version,
        "size": event.size,
        "reason": event.reason,
        "session": event.session,
        "detail": event.detail,
        "at": event.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }


class AuditLog:
    """The event sink that keeps the audit trail (database and log)."""

    def __init__(
        self,
        repository: AuditRepository,
        logger: logging.Logger | None = None,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT_S,
    ) -> None:
        self._repository = repository
        self._logger = logger or logging.getLogger(AUDIT_LOGGER)
        self._write_timeout = write_timeout

    async def emit(self, event: Event) -> None:
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._repository.add(event)
        except Exception as exc:
            self._failed([event], exc)
            return
        self._stored([event])

    async def emit_all(self, events: Sequence[Event]) -> None:
        """The events of one action (an upload and the versions it rotated out): their rows
        in one transaction, in their order; their lines one by one."""
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._repository.add_all(events)
        except Exception as exc:
            self._failed(events, exc)
            return
        self._stored(events)

    def keeps_rows(self) -> bool:
        return True

    async def emit_kept(self, events: Sequence[Event], failure: Exception | None = None) -> None:
        """Events whose rows their action wrote in its own transaction: their lines (as not
        stored, with the error, when the action could not write them: ``failure``)."""
        if failure is not None:
            self._failed(events, failure)
            return
        self._stored(events)

    def _stored(self, events: Sequence[Event]) -> None:
        for event in events:
            log_fields(
                self._logger, logging.INFO, "audit", (), {**event_fields(event), "stored": True}
            )

    def _failed(self, events: Sequence[Event], exc: Exception) -> None:
        error = describe_error(exc)
        for event in events:
            self._logger.error(
                "audit",
                extra={**event_fields(event), "stored": False, "error": error},
                exc_info=exc,
            )


def describe_error(exc: BaseException) -> str:
    """One line naming the error and what caused it, e.g. ``DependencyUnavailable: database
    is unavailable, try again later (OperationalError: no such table: audit_events)``."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 3:
        seen.add(id(current))
        text = str(current).strip().splitlines()
        parts.append(f"{type(current).__name__}: {text[0]}" if text else type(current).__name__)
        current = current.__cause__ or current.__context__
    described = parts[0] + "".join(f" ({part})" for part in parts[1:])
    return described[:MAX_ERROR_TEXT]


class AuditService:
    def __init__(self, repository: AuditRepository) -> None:
        self._repository = repository

    async def search(self, ctx: AuthContext, filters: AuditFilters, page: AuditPage) -> AuditResult:
        """The entries matching ``filters``, newest first, one page at a time."""
        if not authz.may_read_audit(ctx.principal):
            raise Forbidden(NO_PERMISSION_AUDIT)
        if not 1 <= page.limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
        before = parse_cursor(page.cursor)
        for name, value in (("since", filters.since), ("until", filters.until)):
            if value is not None and value.utcoffset() is None:
                raise InvalidInput(f"{name} must carry a timezone (RFC 3339)")
        if filters.since and filters.until and filters.since >= filters.until:
            return AuditResult((), None)
        rows = await self._repository.query(filters, page.limit + 1, before)
        if len(rows) > page.limit:
            rows = rows[: page.limit]
            return AuditResult(rows, str(rows[-1].id))
        return AuditResult(rows, None)


def parse_cursor(cursor: str | None) -> int | None:
    """The id a cursor names; :class:`InvalidInput` for anything that is not one."""
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= MAX_CURSOR_DIGITS):
        raise InvalidInput("cursor: not a cursor of this endpoint (pass nextCursor as given)")
    return int(cursor)
