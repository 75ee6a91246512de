"""Notification states, the outbox and the facts the conditions are judged from
(``notification_states``, ``notification_outbox``; the audit log and the versions are
read). Every call runs in its own short transaction."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import RowMapping, and_, delete, func, insert, or_, select, update

from backup_repository.db.dialects import insert_on_conflict
from backup_repository.db.engine import AsyncConnection, AsyncEngine
from backup_repository.db.owners import server_owner
from backup_repository.db.repositories import transaction
from backup_repository.db.tables import (
    audit_events,
    backup_versions,
    notification_outbox,
    notification_states,
)
from backup_repository.domain.notification_channels import EventType, NotificationEvent
from backup_repository.domain.notifications import Condition, StoredState, VersionFacts
from backup_repository.services.ports import OutboxEntry, OutboxItem, StateWrite

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
STATUSES: Final = (PENDING, DELIVERED, FAILED)
_MAX_ERROR: Final = 1024


def _text(value: str, limit: int) -> str:
    return value.replace("\x00", "")[:limit]


# -- events as JSON ------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_to_json(event: NotificationEvent) -> str:
    return json.dumps(
        {
            "id": event.id,
            "type": event.type.value,
            "condition": event.condition,
            "collection": event.collection,
            "occurredAt": _iso(event.occurred_at),
            "summary": event.summary,
            "facts": dict(event.facts),
            "reminder": event.reminder,
        },
        sort_keys=True,
    )


def event_from_json(text: str) -> NotificationEvent:
    data = json.loads(text)
    return NotificationEvent(
        id=str(data["id"]),
        type=EventType(data["type"]),
        condition=str(data["condition"]),
        collection=str(data["collection"]),
        occurred_at=datetime.fromisoformat(str(data["occurredAt"])).astimezone(UTC),
        summary=str(data["summary"]),
        facts=dict(data.get("facts") or {}),
        reminder=bool(data.get("reminder", False)),
    )


# -- states --------------------------------------------------------------------------------


def _to_state(row: RowMapping) -> StoredState:
    try:
        facts = json.loads(row["facts"] or "{}")
    except ValueError:
        facts = {}
    return StoredState(
        collection=row["collection_id"],
        condition=Condition(row["condition"]),
        failing=bool(row["failing"]),
        since=row["since"],
        last_announced_at=row["last_announced_at"],
        last_event_id=row["last_event_id"],
        facts=facts if isinstance(facts, dict) else {},
        revision=int(row["revision"]),
        created_at=row["created_at"],
    )


class SqlNotificationStateRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def states(self, collection_id: str | None = None) -> list[StoredState]:
        statement = select(notification_states)
        if collection_id is not None:
            statement = statement.where(notification_states.c.collection_id == collection_id)
        statement = statement.order_by(
            notification_states.c.collection_id, notification_states.c.condition
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).mappings().all()
        known = {c.value for c in Condition}
        return [_to_state(r) for r in rows if r["condition"] in known]

    async def apply(
        self, expected: StoredState | None, write: StateWrite, outbox: Sequence[OutboxItem]
    ) -> bool:
        facts = json.dumps(dict(write.facts), sort_keys=True, default=str)
        values: dict[str, Any] = {
            "failing": write.failing,
            "since": write.since,
            "facts": facts,
            "updated_at": write.at,
        }
        if write.event_id is not None:
            values["last_event_id"] = write.event_id
            values["last_announced_at"] = write.announced_at or write.at
        try:
            async with transaction(self._engine) as connection:
                await self._write(connection, expected, write, values, outbox)
        except _Lost:
            return False
        return True

    async def _write(
        self,
        connection: AsyncConnection,
        expected: StoredState | None,
        write: StateWrite,
        values: dict[str, Any],
        outbox: Sequence[OutboxItem],
    ) -> None:
        if expected is None:
            row = {
                "collection_id": write.collection,
                "condition": write.condition,
                "last_event_id": None,
                "last_announced_at": None,
                **values,
                "revision": 1,
                "created_at": write.at,
            }
            keys = ["collection_id", "condition"]
            statement = (
                insert_on_conflict(connection.dialect.name, notification_states)
                .values(**row)
                .on_conflict_do_nothing(index_elements=keys)
            )
            result = await connection.execute(statement)
        else:
            # Compare-and-set: of evaluators racing on one state exactly one update
            # finds the revision it read (PostgreSQL re-checks the condition after the
            # first writer commits; SQLite has one writer at a time).
            result = await connection.execute(
                update(notification_states)
                .where(
                    notification_states.c.collection_id == write.collection,
                    notification_states.c.condition == write.condition,
                    notification_states.c.revision == expected.revision,
                )
                .values(**values, revision=expected.revision + 1)
            )
        if result.rowcount != 1:
            raise _Lost
        for item in outbox:
            await connection.execute(insert(notification_outbox).values(**_outbox_row(item)))


class _Lost(Exception):
    """Another evaluator changed the state first: roll the transaction back."""


def _outbox_row(item: OutboxItem) -> dict[str, Any]:
    return {
        "event_id": item.event.id,
        "channel": _text(item.channel, 255),
        "collection_id": _text(item.event.collection, 255),
        "event": event_to_json(item.event),
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": item.created_at,
        "created_at": item.created_at,
        "delivered_at": None,
        "last_error": "",
        "claimed_by": None,
        "claimed_until": None,
    }


# -- the outbox ----------------------------------------------------------------------------


def _to_entry(row: RowMapping) -> OutboxEntry:
    return OutboxEntry(
        id=int(row["id"]),
        channel=row["channel"],
        event=event_from_json(row["event"]),
        status=row["status"],
        attempts=int(row["attempts"]),
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        delivered_at=row["delivered_at"],
        last_error=row["last_error"] or "",
        claimed_by=row["claimed_by"],
        claimed_until=row["claimed_until"],
    )


class SqlOutboxRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def enqueue(self, items: Sequence[OutboxItem]) -> None:
        """Queue events without a state change (tests and tools)."""
        async with transaction(self._engine) as connection:
            for item in items:
                await connection.execute(insert(notification_outbox).values(**_outbox_row(item)))

    async def claim(
        self, claimer: str, due: datetime, now: datetime, until: datetime, limit: int
    ) -> list[OutboxEntry]:
        table = notification_outbox
        claimable = and_(
            table.c.status == PENDING,
            table.c.next_attempt_at <= due,
            or_(table.c.claimed_until.is_(None), table.c.claimed_until < now),
        )
        async with transaction(self._engine) as connection:
            query = (
                select(table.c.id).where(claimable).order_by(table.c.next_attempt_at, table.c.id)
            )
            query = query.limit(limit)
            if connection.dialect.name == "postgresql":
                # Replicas claiming at once skip each other's rows instead of waiting.
                query = query.with_for_update(skip_locked=True)
            # One statement: on SQLite it takes the write lock at once (a read followed by
            # a write in one transaction could not wait for another writer). The condition
            # is repeated so that a row claimed by someone else meanwhile is not taken.
            statement = (
                update(table)
                .where(table.c.id.in_(query.scalar_subquery()), claimable)
                .values(claimed_by=claimer, claimed_until=until)
                .returning(*table.c)
            )
            rows = (await connection.execute(statement)).mappings().all()
        entries = [_to_entry(r) for r in rows]
        return sorted(entries, key=lambda e: (e.next_attempt_at, e.id))

    async def _finish(self, entry_id: int, claimer: str, values: Mapping[str, Any]) -> bool:
        table = notification_outbox
        async with transaction(self._engine) as connection:
            result = await connection.execute(
                update(table)
                .where(
                    table.c.id == entry_id, table.c.claimed_by == claimer, table.c.status == PENDING
                )
                .values(
                    **values,
                    attempts=table.c.attempts + 1,
                    claimed_by=None,
                    claimed_until=None,
                )
            )
        return bool(result.rowcount == 1)

    async def mark_delivered(self, entry_id: int, claimer: str, now: datetime) -> bool:
        return await self._finish(
            entry_id, claimer, {"status": DELIVERED, "delivered_at": now, "last_error": ""}
        )

    async def mark_retry(
        self, entry_id: int, claimer: str, next_attempt_at: datetime, error: str
    ) -> bool:
        return await self._finish(
            entry_id,
            claimer,
            {"next_attempt_at": next_attempt_at, "last_error": _text(error, _MAX_ERROR)},
        )

    async def mark_failed(self, entry_id: int, claimer: str, now: datetime, error: str) -> bool:
        return await self._finish(
            entry_id,
            claimer,
            {"status": FAILED, "next_attempt_at": now, "last_error": _text(error, _MAX_ERROR)},
        )

    async def page(
        self, status: str | None, limit: int, before_id: int | None = None
    ) -> list[OutboxEntry]:
        table = notification_outbox
        statement = select(table)
        if status is not None:
            statement = statement.where(table.c.status == status)
        if before_id is not None:
            statement = statement.where(table.c.id < before_id)
        statement = statement.order_by(table.c.id.desc()).limit(limit)
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [_to_entry(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        table = notification_outbox
        statement = select(table.c.status, func.count()).group_by(table.c.status)
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({str(r[0]): int(r[1]) for r in rows})
        return counts

    async def purge(self, older_than: datetime, batch: int) -> int:
        table = notification_outbox
        doomed = (
            select(table.c.id)
            .where(table.c.status.in_([DELIVERED, FAILED]), table.c.created_at < older_than)
            .limit(batch)
        )
        # One statement (on SQLite it takes the write lock at once).
        statement = delete(table).where(table.c.id.in_(doomed.scalar_subquery()))
        async with transaction(self._engine) as connection:
            result = await connection.execute(statement)
        return int(result.rowcount or 0)

    async def release_server_claims(self, tag: str | None) -> int:
        table = notification_outbox
        async with transaction(self._engine) as connection:
            result = await connection.execute(
                update(table)
                .where(table.c.status == PENDING, server_owner(table.c.claimed_by, tag))
                .values(claimed_by=None, claimed_until=None)
            )
        return int(result.rowcount or 0)


# -- facts ---------------------------------------------------------------------------------


class SqlNotificationFacts:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def recent_versions(self, collection_id: str, count: int) -> list[VersionFacts]:
        statement = (
            select(
                backup_versions.c.version_number,
                backup_versions.c.filesize,
                backup_versions.c.created_at,
            )
            .where(backup_versions.c.collection_id == collection_id)
            .order_by(backup_versions.c.version_number.desc())
            .limit(max(1, count))
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return [VersionFacts(int(r[0]), int(r[1]), r[2]) for r in reversed(rows)]

    async def counted_refusals(
        self, collection_id: str, since: datetime, reasons: Sequence[str]
    ) -> int:
        statement = select(func.count()).where(
            audit_events.c.collection_id == collection_id,
            audit_events.c.action == "upload",
            audit_events.c.outcome == "failure",
            audit_events.c.reason.in_(list(reasons)),
            audit_events.c.at >= since,
        )
        async with transaction(self._engine) as connection:
            return int((await connection.execute(statement)).scalar_one())
