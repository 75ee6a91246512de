"""Paging of session listings (``GET /api/stable/auth/token``): pages, their limits and
the opaque cursor that names where the next page starts (docs/api.md)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from backup_repository.domain.errors import InvalidInput
from backup_repository.services.ports import SessionCursor, SessionRecord

# Session listings (GET /api/stable/auth/token): sessions per page, by default and at
# most; and without paging parameters (the reference's answer), the newest this many.
DEFAULT_SESSION_LIMIT: Final = 100
MAX_SESSION_LIMIT: Final = 500
UNPAGED_LIMIT: Final = 1000
MAX_SESSION_CURSOR: Final = 128
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SessionPage:
    """Which page of a session listing: at most ``limit`` sessions after the one
    ``cursor`` names (from the newest when None)."""

    limit: int = DEFAULT_SESSION_LIMIT
    cursor: str | None = None


@dataclass(frozen=True)
class SessionListing:
    sessions: Sequence[SessionRecord]
    # Pass back as ``cursor`` for the next (older) page; None when this page is the last.
    next_cursor: str | None


def cursor_of(session: SessionRecord) -> SessionCursor:
    if session.created_at is None:
        raise ValueError(f"session {session.id[:12]} has no creation time")
    return SessionCursor(session.created_at, session.id)


def encode_session_cursor(cursor: SessionCursor) -> str:
    """The ``nextCursor`` of a session listing: opaque to clients (base64url of the
    creation time in microseconds and the session id)."""
    micros = (cursor.created_at - _EPOCH) // timedelta(microseconds=1)
    raw = f"{micros}:{cursor.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_session_cursor(cursor: str | None) -> SessionCursor | None:
    """The position a cursor names; :class:`InvalidInput` for anything that is not one."""
    if cursor is None:
        return None
    bad = InvalidInput("cursor: not a cursor of this endpoint (pass nextCursor as given)")
    if not cursor or len(cursor) > MAX_SESSION_CURSOR or not cursor.isascii():
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    micros, sep, session_id = raw.partition(":")
    if not sep or not micros.isdigit() or len(micros) > 18 or not session_id:
        raise bad
    if len(session_id) > 64 or not session_id.isprintable():
        raise bad
    try:
        created_at = _EPOCH + timedelta(microseconds=int(micros))
    except OverflowError:
        raise bad from None
    return SessionCursor(created_at, session_id)
