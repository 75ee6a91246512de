"""The audit log in the ``audit_events`` table (the ``AuditRepository`` of
services/audit.py). Rows are only added; every call runs in its own short transaction.

An upload's rows are not written here but in the transaction that records its version
(:func:`insert_steps`, taken by ``SqlVersionRepository.commit_version``): an accepted upload
always has its rows, and they cost no transaction of their own (services/events.py,
``keeps_rows``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import ColumnElement, RowMapping, String, bindparam, insert, select

from backup_repository.db.engine import AsyncEngine
from backup_repository.db.repositories import SingleStatement, transaction
from backup_repository.db.statements import Step, in_one_transaction
from backup_repository.db.tables import audit_events
from backup_repository.services.audit import AuditEntry, AuditFilters
from backup_repository.services.events import Event


def _limits() -> dict[str, int]:
    limits: dict[str, int] = {}
    for column in audit_events.c:
        if isinstance(column.type, String) and column.type.length is not None:
            limits[column.name] = column.type.length
    return limits


_LIMITS: Final = _limits()
# One event's row (a download's, a login's): one statement, on SQLite one trip to the driver.
_ADD: Final = SingleStatement(
    insert(audit_events).values(
        {
            column.key: bindparam(column.key, type_=column.type)
            for column in audit_events.c
            if column.key != "id"
        }
    )
)
# Several events' rows in one INSERT (an upload's: the versions it rotated out and itself),
# the statement for each number of rows built once: one statement, one trip on SQLite.
_MAX_ROWS_AT_ONCE: Final = 8
_ADD_ROWS: dict[int, SingleStatement] = {}


def _add_rows(count: int) -> SingleStatement:
    found = _ADD_ROWS.get(count)
    if found is None:
        table = audit_events
        columns = [column for column in table.c if column.key != "id"]
        found = _ADD_ROWS[count] = SingleStatement(
            insert(table).values(
                [
                    {c.key: bindparam(f"{c.key}_{i}", type_=c.type) for c in columns}
                    for i in range(count)
                ]
            )
        )
    return found


def insert_steps(events: Sequence[Event]) -> list[Step]:
    """The INSERTs of the rows of ``events``, in their order (their ids grow in that order),
    eight rows at most in one INSERT (each number of rows a statement built once): for
    :func:`~db.statements.in_one_transaction`, alone or with other statements."""
    steps: list[Step] = []
    for start in range(0, len(events), _MAX_ROWS_AT_ONCE):
        chunk = events[start : start + _MAX_ROWS_AT_ONCE]
        if len(chunk) == 1:
            steps.append(Step(_ADD, event_values(chunk[0])))
            continue
        params = {
            f"{key}_{i}": value
            for i, event in enumerate(chunk)
            for key, value in event_values(event).items()
        }
        steps.append(Step(_add_rows(len(chunk)), params))
    return steps


def _text(column: str, value: str) -> str:
    """``value`` fit for its column: NUL characters dropped (PostgreSQL refuses them) and
    cut to the column's length (SQLite would not enforce it, PostgreSQL would refuse)."""
    return value.replace("\x00", "")[: _LIMITS[column]]


def event_values(event: Event) -> dict[str, Any]:
    """The row recording ``event``."""
    return {
        "at": event.at,
        "action": _text("action", event.action.value),
        "outcome": _text("outcome", event.outcome.value),
        "user_name": _text("user_name", event.user),
        "access_key_name": _text("access_key_name", event.access_key),
        "client_ip": _text("client_ip", event.client_ip),
        "collection_id": _text("collection_id", event.collection),
        "version_number": event.version,
        "size": event.size,
        "reason": _text("reason", event.reason),
        "session": _text("session", event.session),
        "detail": _text("detail", event.detail),
    }


class SqlAuditRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, event: Event) -> None:
        await _ADD.run(self._engine, event_values(event))

    async def add_all(self, events: Sequence[Event]) -> None:
        if len(events) <= 1:
            for event in events:
                await self.add(event)
            return
        # One transaction, the rows inserted in order (one INSERT per eight of them).
        await in_one_transaction(self._engine, insert_steps(events))

    async def query(
        self, filters: AuditFilters, limit: int, before_id: int | None = None
    ) -> list[AuditEntry]:
        conditions: list[ColumnElement[bool]] = []
        for column, value in (
            (audit_events.c.user_name, filters.user),
            (audit_events.c.collection_id, filters.collection),
        ):
            if value is None:
                continue
            if "\x00" in value:
                # No stored text holds NUL (they are dropped on the way in), and PostgreSQL
                # would refuse the statement.
                return []
            conditions.append(column == value)
        if filters.action is not None:
            conditions.append(audit_events.c.action == filters.action.value)
        if filters.outcome is not None:
            conditions.append(audit_events.c.outcome == filters.outcome.value)
        if filters.since is not None:
            conditions.append(audit_events.c.at >= filters.since)
        if filters.until is not None:
            conditions.append(audit_events.c.at < filters.until)
        if before_id is not None:
            conditions.append(audit_events.c.id < before_id)
        statement = (
            select(audit_events).where(*conditions).order_by(audit_events.c.id.desc())
        ).limit(limit)
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [_to_entry(row) for row in rows]


def _to_entry(row: RowMapping) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=row["at"],
        action=row["action"],
        outcome=row["outcome"],
        user=row["user_name"],
        access_key=row["access_key_name"],
        client_ip=row["client_ip"],
        collection=row["collection_id"],
        version=row["version_number"],
        size=row["size"],
        reason=row["reason"],
        session=row["session"],
        detail=row["detail"],
    )
