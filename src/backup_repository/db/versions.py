"""Versions of collections and the per-collection upload lock (a lease row that works the
same on PostgreSQL and SQLite, holds no connection during an upload, and frees itself when
a replica dies).

An upload's two steps (:meth:`SqlVersionRepository.lock_for_upload`: the purge marks of what
the collection's previous upload rotated out and deleted, the lock taken and the versions
read; :meth:`SqlVersionRepository.commit_version`: the counter advanced and the
lock freed in one statement, the token consumed, the version recorded, the rotated ones
marked deleted and the upload's audit rows written) are statements known in advance, so on
SQLite each runs with :func:`~db.statements.in_one_transaction`, one trip to the driver's
thread. On PostgreSQL the commit is a short transaction, and the lock and the read two
statements in autocommit mode on one connection (they need not commit together)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    Insert,
    RowMapping,
    bindparam,
    false,
    func,
    insert,
    or_,
    select,
    update,
)

from backup_repository.db.audit import insert_steps
from backup_repository.db.dialects import insert_on_conflict
from backup_repository.db.engine import AsyncConnection, AsyncEngine
from backup_repository.db.owners import server_owner
from backup_repository.db.repositories import SingleStatement, transaction
from backup_repository.db.statements import Step, Steps, in_one_transaction, statements
from backup_repository.db.tables import backup_versions, collection_states, granted_accesses
from backup_repository.services.events import Event
from backup_repository.services.ports import (
    LockedCollection,
    LockLost,
    SessionConsumed,
    VersionRecord,
)

# The access key of the uploading session, from its row while it exists (sessions are
# purged --session-retention after they expire).
_UPLOADING_KEY: Final = (
    select(granted_accesses.c.access_key_name)
    .where(granted_accesses.c.id == backup_versions.c.uploaded_by_session_id)
    .scalar_subquery()
    .label("access_key_name")
)
_VERSION_COLUMNS: Final = (
    backup_versions.c.id,
    backup_versions.c.collection_id,
    backup_versions.c.version_number,
    backup_versions.c.filename,
    backup_versions.c.storage_key,
    backup_versions.c.filesize,
    backup_versions.c.sha256,
    backup_versions.c.uploaded_by_session_id,
    backup_versions.c.user_name,
    backup_versions.c.created_at,
    backup_versions.c.updated_at,
    backup_versions.c.deleted_at,
    backup_versions.c.protected,
    backup_versions.c.signer_fingerprint,
    _UPLOADING_KEY,
)

# The statements an upload runs, built once (building a statement and its cache key on
# every call cost more than running it) and run in short transactions that on SQLite go to
# the driver directly (db/statements.py). A write whose effect must be known returns a
# column: a row back means a row changed.
_STATES: Final = collection_states
_VERSIONS: Final = backup_versions
_SESSIONS: Final = granted_accesses


@functools.cache
def _ensure_state(dialect_name: str) -> SingleStatement:
    """The collection's state row, created unlocked when it does not exist yet (built for
    the database named ``dialect_name`` when it is first needed, then kept)."""
    return SingleStatement(
        insert_on_conflict(dialect_name, _STATES)
        .values(collection_id=bindparam("cid"), last_version_number=0, updated_at=bindparam("now"))
        .on_conflict_do_nothing()
    )


_OURS: Final = (
    _STATES.c.collection_id == bindparam("cid"),
    _STATES.c.lock_owner == bindparam("owner"),
)
# Take the lock when it is free (or ours, or its lease ran out): the last number given
# comes back, no row when someone else holds it (or the state row does not exist yet).
_LOCK: Final = SingleStatement(
    update(_STATES)
    .where(
        _STATES.c.collection_id == bindparam("cid"),
        or_(
            _STATES.c.lock_owner.is_(None),
            _STATES.c.lock_owner == bindparam("owner"),
            _STATES.c.lock_expires_at < bindparam("now"),
        ),
    )
    .values(
        lock_owner=bindparam("owner"),
        lock_expires_at=bindparam("expires"),
        updated_at=bindparam("now"),
    )
    .returning(_STATES.c.last_version_number)
)
_RENEW: Final = SingleStatement(
    update(_STATES)
    .where(*_OURS)
    .values(lock_expires_at=bindparam("expires"), updated_at=bindparam("now"))
    .returning(_STATES.c.collection_id)
)
_RELEASE: Final = SingleStatement(
    update(_STATES)
    .where(*_OURS)
    .values(lock_owner=None, lock_expires_at=None, updated_at=bindparam("now"))
)


# Still our lock and the number is the next one: advance the counter (the lock stays with
# its holder), or advance it and free the lock in the same statement (an upload's commit).
def _advance(**also: Any) -> SingleStatement:
    return SingleStatement(
        update(_STATES)
        .where(*_OURS, _STATES.c.last_version_number == bindparam("previous"))
        .values(last_version_number=bindparam("number"), updated_at=bindparam("now"), **also)
        .returning(_STATES.c.collection_id)
    )


_ADVANCE: Final = _advance()
_ADVANCE_AND_RELEASE: Final = _advance(lock_owner=None, lock_expires_at=None)
_CONSUME_SESSION: Final = SingleStatement(
    update(_SESSIONS)
    .where(
        _SESSIONS.c.id == bindparam("session"),
        _SESSIONS.c.deactivated == false(),
        _SESSIONS.c.deleted_at.is_(None),
    )
    .values(deactivated=True, updated_at=bindparam("now"))
    .returning(_SESSIONS.c.id)
)
_VERSION_KEYS: Final = (
    "id",
    "collection_id",
    "version_number",
    "filename",
    "storage_key",
    "filesize",
    "sha256",
    "uploaded_by_session_id",
    "user_name",
    "created_at",
    "updated_at",
    "signer_fingerprint",
    "signature",
)
_INSERT_VERSION: Final = SingleStatement(
    insert(_VERSIONS).values(
        {key: bindparam(key, type_=_VERSIONS.c[key].type) for key in _VERSION_KEYS}
    )
)
_ROTATE: Final = SingleStatement(
    update(_VERSIONS)
    .where(_VERSIONS.c.id == bindparam("version"), _VERSIONS.c.deleted_at.is_(None))
    .values(deleted_at=bindparam("now"), updated_at=bindparam("now"))
)
_MARK_PURGED: Final = SingleStatement(
    update(_VERSIONS)
    .where(_VERSIONS.c.id == bindparam("version"))
    .values(purged_at=bindparam("now"))
)
# The versions whose object may exist (live ones, and rotated or deleted ones not purged).
_NOT_PURGED: Final = SingleStatement(
    select(*_VERSION_COLUMNS)
    .where(
        backup_versions.c.collection_id == bindparam("cid"),
        backup_versions.c.purged_at.is_(None),
    )
    .order_by(backup_versions.c.version_number)
)


def _now() -> datetime:
    return datetime.now(UTC)


def _locked(last_number: int, rows: Sequence[tuple[Any, ...]]) -> LockedCollection:
    versions = [_to_record(dict(zip(_NOT_PURGED.keys, row, strict=True))) for row in rows]
    return LockedCollection(
        last_number=last_number,
        live=[v for v in versions if v.deleted_at is None],
        unpurged=[v for v in versions if v.deleted_at is not None],
    )


class _NotTaken(Exception):
    """The upload lock is someone else's (or its collection has no state row yet)."""


def _raises(error: Exception) -> Callable[[], Exception]:
    return lambda: error


class SqlVersionRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def try_lock(self, collection_id: str, owner: str, lease_seconds: float) -> int | None:
        async with statements(self._engine) as steps:
            return await self._lock(steps, collection_id, owner, lease_seconds)

    async def lock_for_upload(
        self,
        collection_id: str,
        owner: str,
        lease_seconds: float,
        purged: Sequence[str] = (),
    ) -> LockedCollection | None:
        if self._engine.dialect.driver != "aiosqlite":
            # Once the lock is ours no other writer changes the versions, and the read, a
            # statement after the lock's, sees every commit made before it: they need not
            # commit together (one connection, no round trips for BEGIN and COMMIT). The
            # purge marks are true whether or not the lock is taken.
            async with statements(self._engine) as steps:
                for version_id in purged:
                    await steps.rows(_MARK_PURGED, {"version": version_id, "now": _now()})
                last = await self._lock(steps, collection_id, owner, lease_seconds)
                if last is None:
                    return None
                rows = await steps.rows(_NOT_PURGED, {"cid": collection_id})
            return _locked(last, rows)
        # On SQLite the purge marks, the lock and the read in one transaction, one trip to
        # the driver; the read is thrown away (and the marks rolled back) when the lock was
        # not taken. Someone else holds it, or this is the collection's first upload: its
        # state row is created and the lock tried again.
        for attempt in range(2):
            now = _now()
            params = {
                "cid": collection_id,
                "owner": owner,
                "expires": now + timedelta(seconds=lease_seconds),
                "now": now,
            }
            try:
                done = await in_one_transaction(
                    self._engine,
                    [
                        *(Step(_MARK_PURGED, {"version": v, "now": now}) for v in purged),
                        Step(_LOCK, params, unless_rows=_NotTaken),
                        Step(_NOT_PURGED, {"cid": collection_id}),
                    ],
                )
            except _NotTaken:
                if attempt:
                    return None
                await _ensure_state(self._engine.dialect.name).rows(self._engine, params)
                continue
            taken, rows = done.rows[len(purged) :]
            return _locked(int(taken[0][0]), rows)
        return None

    async def _lock(
        self, steps: Steps, collection_id: str, owner: str, lease_seconds: float
    ) -> int | None:
        now = _now()
        params = {
            "cid": collection_id,
            "owner": owner,
            "expires": now + timedelta(seconds=lease_seconds),
            "now": now,
        }
        taken = await steps.rows(_LOCK, params)
        if not taken:
            # Held by someone else, or the collection's first upload: its state row first.
            await steps.rows(_ensure_state(self._engine.dialect.name), params)
            taken = await steps.rows(_LOCK, params)
        return int(taken[0][0]) if taken else None

    async def renew_lock(self, collection_id: str, owner: str, lease_seconds: float) -> bool:
        now = _now()
        renewed = await _RENEW.rows(
            self._engine,
            {
                "cid": collection_id,
                "owner": owner,
                "expires": now + timedelta(seconds=lease_seconds),
                "now": now,
            },
        )
        return len(renewed) == 1

    async def release_lock(self, collection_id: str, owner: str) -> None:
        await _RELEASE.rows(self._engine, {"cid": collection_id, "owner": owner, "now": _now()})

    async def release_server_locks(self, tag: str | None) -> int:
        async with transaction(self._engine) as connection:
            result = await connection.execute(
                update(collection_states)
                .where(server_owner(collection_states.c.lock_owner, tag))
                .values(lock_owner=None, lock_expires_at=None, updated_at=_now())
            )
        return int(result.rowcount or 0)

    async def live_versions(self, collection_id: str) -> list[VersionRecord]:
        rows = await _LIVE.rows(self._engine, {"cid": collection_id})
        return [_to_record(dict(zip(_LIVE.keys, row, strict=True))) for row in rows]

    async def get_version(self, collection_id: str, number: int) -> VersionRecord | None:
        row = await _ONE_VERSION.one_or_none(self._engine, {"cid": collection_id, "number": number})
        return None if row is None else _to_record(dict(zip(_ONE_VERSION.keys, row, strict=True)))

    async def latest_version(self, collection_id: str) -> VersionRecord | None:
        row = await _LATEST_VERSION.one_or_none(self._engine, {"cid": collection_id})
        return (
            None if row is None else _to_record(dict(zip(_LATEST_VERSION.keys, row, strict=True)))
        )

    async def commit_version(
        self,
        version: VersionRecord,
        owner: str,
        rotated_ids: Sequence[str],
        consume_session_id: str | None = None,
        *,
        release: bool = False,
        audit: Sequence[Event] = (),
    ) -> Exception | None:
        now = _now()
        cid = version.collection_id
        advance = _ADVANCE_AND_RELEASE if release else _ADVANCE
        steps = [
            Step(
                advance,
                {
                    "cid": cid,
                    "owner": owner,
                    "previous": version.number - 1,
                    "number": version.number,
                    "now": now,
                },
                unless_rows=_raises(LockLost(f"upload lock of {cid} was taken over")),
            )
        ]
        if consume_session_id is not None:
            # A single-use token: whoever deactivates it first records their upload;
            # raising here rolls the whole transaction back (the counter included).
            steps.append(
                Step(
                    _CONSUME_SESSION,
                    {"session": consume_session_id, "now": now},
                    unless_rows=_raises(
                        SessionConsumed(f"session {consume_session_id[:12]} is not active")
                    ),
                )
            )
        steps.append(Step(_INSERT_VERSION, version_values(version)))
        steps.extend(Step(_ROTATE, {"version": rotated, "now": now}) for rotated in rotated_ids)
        # The audit rows are optional: when they cannot be written, the version is recorded
        # all the same, and the error is returned for the audit log to report.
        steps.extend(replace(step, optional=True) for step in insert_steps(audit))
        return (await in_one_transaction(self._engine, steps)).optional_failed

    async def set_protected(self, version_id: str, owner: str, protected: bool) -> bool:
        now = _now()
        async with transaction(self._engine) as connection:
            await _check_lock(connection, version_id, owner, now)
            changed = await connection.execute(
                update(backup_versions)
                .where(backup_versions.c.id == version_id, backup_versions.c.deleted_at.is_(None))
                .values(protected=protected, updated_at=now)
            )
        return bool(changed.rowcount == 1)

    async def delete_version(self, version_id: str, owner: str) -> datetime | None:
        now = _now()
        async with transaction(self._engine) as connection:
            await _check_lock(connection, version_id, owner, now)
            deleted = await connection.execute(
                update(backup_versions)
                .where(
                    backup_versions.c.id == version_id,
                    backup_versions.c.deleted_at.is_(None),
                    backup_versions.c.protected == false(),
                )
                .values(deleted_at=now, updated_at=now)
            )
        return now if deleted.rowcount == 1 else None

    async def deleted_unpurged(self, collection_id: str) -> list[VersionRecord]:
        statement = (
            select(*_VERSION_COLUMNS)
            .where(
                backup_versions.c.collection_id == collection_id,
                backup_versions.c.deleted_at.is_not(None),
                backup_versions.c.purged_at.is_(None),
            )
            .order_by(backup_versions.c.version_number)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [_to_record(r) for r in rows]

    async def mark_purged(self, version_ids: Sequence[str]) -> None:
        if not version_ids:
            return
        now = _now()
        if len(version_ids) == 1:
            await _MARK_PURGED.rows(self._engine, {"version": version_ids[0], "now": now})
            return
        await in_one_transaction(
            self._engine,
            [Step(_MARK_PURGED, {"version": version_id, "now": now}) for version_id in version_ids],
        )

    async def usage(self) -> dict[str, tuple[int, int]]:
        statement = (
            select(
                backup_versions.c.collection_id,
                func.count(backup_versions.c.id),
                func.coalesce(func.sum(backup_versions.c.filesize), 0),
            )
            .where(backup_versions.c.deleted_at.is_(None))
            .group_by(backup_versions.c.collection_id)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}

    async def last_uploads(self) -> dict[str, datetime]:
        # Over every recorded version, rotated ones included: the newest is the last upload.
        statement = select(
            backup_versions.c.collection_id, func.max(backup_versions.c.created_at)
        ).group_by(backup_versions.c.collection_id)
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return {str(r[0]): r[1] for r in rows if r[1] is not None}


async def _check_lock(
    connection: AsyncConnection, version_id: str, owner: str, now: datetime
) -> None:
    """Within a transaction that changes the version ``version_id``: its collection's upload
    lock is ``owner``'s (the row stays locked until the transaction ends), or LockLost."""
    collection_id = (
        select(backup_versions.c.collection_id).where(backup_versions.c.id == version_id)
    ).scalar_subquery()
    held = await connection.execute(
        update(collection_states)
        .where(
            collection_states.c.collection_id == collection_id,
            collection_states.c.lock_owner == owner,
        )
        .values(updated_at=now)
    )
    if held.rowcount != 1:
        raise LockLost(f"upload lock of the collection of version {version_id} was taken over")


# One version, as a download asks for it: its signature too (listings leave it out, it is
# the larger part). One statement each, built once (on SQLite one trip to the driver).
_ONE_VERSION: Final = SingleStatement(
    select(*_VERSION_COLUMNS, backup_versions.c.signature).where(
        backup_versions.c.collection_id == bindparam("cid"),
        backup_versions.c.version_number == bindparam("number"),
        backup_versions.c.deleted_at.is_(None),
    )
)
# The live versions of a collection, oldest first (listings, usage, retention).
_LIVE: Final = SingleStatement(
    select(*_VERSION_COLUMNS)
    .where(
        backup_versions.c.collection_id == bindparam("cid"), backup_versions.c.deleted_at.is_(None)
    )
    .order_by(backup_versions.c.version_number)
)
_LATEST_VERSION: Final = SingleStatement(
    select(*_VERSION_COLUMNS, backup_versions.c.signature)
    .where(
        backup_versions.c.collection_id == bindparam("cid"), backup_versions.c.deleted_at.is_(None)
    )
    .order_by(backup_versions.c.version_number.desc())
    .limit(1)
)


def _to_record(row: RowMapping | Mapping[str, Any]) -> VersionRecord:
    return VersionRecord(
        id=row["id"],
        collection_id=row["collection_id"],
        number=row["version_number"],
        filename=row["filename"],
        storage_key=row["storage_key"],
        size=row["filesize"],
        sha256=row["sha256"],
        session_id=row["uploaded_by_session_id"],
        user=row["user_name"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deleted_at=row["deleted_at"],
        access_key=row.get("access_key_name"),
        protected=bool(row.get("protected", False)),
        signer_fingerprint=row.get("signer_fingerprint"),
        signature=row.get("signature"),
    )


def insert_version(version: VersionRecord) -> Insert:
    """The INSERT of one version row (an upload's, or an imported one's)."""
    return insert(backup_versions).values(**version_values(version))


def version_values(version: VersionRecord) -> dict[str, Any]:
    """The columns of the row recording ``version``."""
    return {
        "id": version.id,
        "collection_id": version.collection_id,
        "version_number": version.number,
        "filename": version.filename,
        "storage_key": version.storage_key,
        "filesize": version.size,
        "sha256": version.sha256,
        "uploaded_by_session_id": version.session_id,
        "user_name": version.user,
        "created_at": version.created_at,
        "updated_at": version.updated_at,
        "signer_fingerprint": version.signer_fingerprint,
        "signature": version.signature,
    }
