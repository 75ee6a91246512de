"""SQL implementations of the service ports. Every method runs in its own short
transaction; nothing holds a connection between calls."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import RowMapping, String, insert, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backup_repository.db.tables import GrantedAccess
from backup_repository.domain.errors import DependencyUnavailable
from backup_repository.services.ports import SessionRecord

logger = logging.getLogger(__name__)

_SESSION_COLUMNS: Final = (
    GrantedAccess.id,
    GrantedAccess.user_name,
    GrantedAccess.access_key_name,
    GrantedAccess.requester_ip,
    GrantedAccess.description,
    GrantedAccess.expires_at,
    GrantedAccess.deactivated,
    GrantedAccess.created_at,
    GrantedAccess.updated_at,
    GrantedAccess.single_use_collection,
)


class SqlSessionRepository:
    """Issued tokens in the ``granted_accesses`` table.

    Rows with ``deleted_at`` set (soft-deleted, as the reference project does) are treated
    as if they did not exist.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, session: SessionRecord) -> None:
        """Store a new session. ``created_at`` and ``updated_at`` default to now (UTC).

        Raises :class:`ValueError` for naive datetimes or values longer than their column
        (checked here so that SQLite, which does not enforce lengths, behaves like
        PostgreSQL), and SQLAlchemy's ``IntegrityError`` when the id already exists.
        """
        _check_session(session)
        now = _utcnow()
        created_at = session.created_at or now
        values: dict[str, Any] = {
            "id": session.id,
            "user_name": session.user,
            "access_key_name": session.access_key_name,
            "requester_ip": session.requester_ip,
            "description": session.description,
            "expires_at": session.expires_at,
            "deactivated": session.deactivated,
            "created_at": created_at,
            "updated_at": session.updated_at or created_at,
            "single_use_collection": session.single_use_collection,
        }
        async with transaction(self._engine) as connection:
            await connection.execute(insert(GrantedAccess).values(**values))

    async def get(self, session_id: str) -> SessionRecord | None:
        if not _storable(session_id):
            return None
        statement = select(*_SESSION_COLUMNS).where(
            GrantedAccess.id == session_id, GrantedAccess.deleted_at.is_(None)
        )
        async with transaction(self._engine) as connection:
            row = (await connection.execute(statement)).mappings().one_or_none()
        return None if row is None else _to_record(row)

    async def list_for_user(self, user: str) -> list[SessionRecord]:
        """Sessions of ``user``, newest first (ties broken by id, so the order is stable)."""
        if not _storable(user):
            return []
        statement = (
            select(*_SESSION_COLUMNS)
            .where(GrantedAccess.user_name == user, GrantedAccess.deleted_at.is_(None))
            .order_by(GrantedAccess.created_at.desc(), GrantedAccess.id.desc())
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [_to_record(row) for row in rows]

    async def deactivate(self, session_id: str) -> bool:
        """Mark a session revoked. True when it exists (also when it was revoked before)."""
        if not _storable(session_id):
            return False
        statement = (
            update(GrantedAccess)
            .where(GrantedAccess.id == session_id, GrantedAccess.deleted_at.is_(None))
            .values(deactivated=True, updated_at=_utcnow())
        )
        async with transaction(self._engine) as connection:
            result = await connection.execute(statement)
        return result.rowcount > 0


class SqlDatabaseHealth:
    """The readiness check of the database (the reference's ``DbValidator``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def ping(self) -> None:
        """Run ``SELECT 1``; raise whatever the driver raises when that fails."""
        async with self._engine.connect() as connection:
            value = (await connection.execute(text("SELECT 1"))).scalar_one()
        if value != 1:
            raise RuntimeError(f"database answered {value!r} to SELECT 1")


DATABASE_UNAVAILABLE = "database is unavailable, try again later"


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean the database cannot be reached (as opposed to a bad
    statement): connection refused or lost, pool exhausted, database gone."""
    if isinstance(exc, OSError | TimeoutError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    # asyncpg errors without a more specific mapping (e.g. the database was dropped)
    # arrive as the DBAPIError base class itself.
    return isinstance(exc, sa_exc.DBAPIError) and (
        exc.connection_invalidated or type(exc) is sa_exc.DBAPIError
    )


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A short transaction; an unreachable database becomes ``DependencyUnavailable`` (503)
    instead of an unexplained server error."""
    try:
        async with engine.begin() as connection:
            yield connection
    except Exception as exc:
        if is_unavailable(exc):
            logger.warning("database unavailable: %s", exc)
            raise DependencyUnavailable(DATABASE_UNAVAILABLE) from exc
        raise


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _storable(value: str) -> bool:
    """PostgreSQL text cannot hold NUL and refuses a statement carrying one, an error that
    would pass for an outage (503). No stored row can match such a value (user names are
    validated, session ids are hex), so lookups answer "nothing" without asking."""
    return "\x00" not in value


def _check_session(session: SessionRecord) -> None:
    for name in ("expires_at", "created_at", "updated_at"):
        value: datetime | None = getattr(session, name)
        if value is not None and value.utcoffset() is None:
            raise ValueError(f"session {name} must be a timezone-aware datetime")
    for name, limit in _TEXT_LIMITS.items():
        length = len(getattr(session, name) or "")
        if length > limit:
            raise ValueError(f"session {name} is {length} characters long, at most {limit}")


def _text_limits() -> dict[str, int]:
    """Longest value of each text field of SessionRecord, read from the table's columns."""
    columns = GrantedAccess.__table__.c
    limits: dict[str, int] = {}
    for field, column in (
        ("id", "id"),
        ("user", "user_name"),
        ("access_key_name", "access_key_name"),
        ("requester_ip", "requester_ip"),
        ("description", "description"),
        ("single_use_collection", "single_use_collection"),
    ):
        column_type = columns[column].type
        if not isinstance(column_type, String) or column_type.length is None:
            raise TypeError(f"column {column} is not a bounded String")
        limits[field] = column_type.length
    return limits


_TEXT_LIMITS: Final = _text_limits()


def _to_record(row: RowMapping) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        user=row["user_name"],
        access_key_name=row["access_key_name"],
        requester_ip=row["requester_ip"],
        description=row["description"],
        expires_at=row["expires_at"],
        deactivated=row["deactivated"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        single_use_collection=row["single_use_collection"],
    )
