"""Versions of collections and the per-collection upload lock (a lease row that works the
same on PostgreSQL and SQLite, holds no connection during an upload, and frees itself when
a replica dies)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    Insert,
    RowMapping,
    and_,
    bindparam,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backup_repository.db.owners import server_owner
from backup_repository.db.repositories import SingleStatement, transaction
from backup_repository.db.tables import BackupVersion, CollectionState, GrantedAccess
from backup_repository.services.ports import LockLost, SessionConsumed, VersionRecord

# The access key of the uploading session, from its row while it exists (sessions are
# purged --session-retention after they expire).
_UPLOADING_KEY: Final = (
    select(GrantedAccess.access_key_name)
    .where(GrantedAccess.id == BackupVersion.uploaded_by_session_id)
    .scalar_subquery()
    .label("access_key_name")
)
_VERSION_COLUMNS: Final = (
    BackupVersion.id,
    BackupVersion.collection_id,
    BackupVersion.version_number,
    BackupVersion.filename,
    BackupVersion.storage_key,
    BackupVersion.filesize,
    BackupVersion.sha256,
    BackupVersion.uploaded_by_session_id,
    BackupVersion.user_name,
    BackupVersion.created_at,
    BackupVersion.updated_at,
    BackupVersion.deleted_at,
    BackupVersion.protected,
    BackupVersion.signer_fingerprint,
    _UPLOADING_KEY,
)


def _now() -> datetime:
    return datetime.now(UTC)


class SqlVersionRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def _ensure_state(self, connection: AsyncConnection, collection_id: str) -> None:
        values: dict[str, Any] = {
            "collection_id": collection_id,
            "last_version_number": 0,
            "updated_at": _now(),
        }
        if connection.dialect.name == "postgresql":
            pg = postgresql.insert(CollectionState).values(**values).on_conflict_do_nothing()
            await connection.execute(pg)
        else:
            lite = sqlite.insert(CollectionState).values(**values).on_conflict_do_nothing()
            await connection.execute(lite)

    async def try_lock(self, collection_id: str, owner: str, lease_seconds: float) -> int | None:
        now = _now()
        async with transaction(self._engine) as connection:
            await self._ensure_state(connection, collection_id)
            result = await connection.execute(
                update(CollectionState)
                .where(
                    CollectionState.collection_id == collection_id,
                    or_(
                        CollectionState.lock_owner.is_(None),
                        CollectionState.lock_owner == owner,
                        CollectionState.lock_expires_at < now,
                    ),
                )
                .values(
                    lock_owner=owner,
                    lock_expires_at=now + timedelta(seconds=lease_seconds),
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                return None
            last = await connection.scalar(
                select(CollectionState.last_version_number).where(
                    CollectionState.collection_id == collection_id
                )
            )
        return int(last or 0)

    async def renew_lock(self, collection_id: str, owner: str, lease_seconds: float) -> bool:
        now = _now()
        async with transaction(self._engine) as connection:
            result = await connection.execute(
                update(CollectionState)
                .where(
                    CollectionState.collection_id == collection_id,
                    CollectionState.lock_owner == owner,
                )
                .values(lock_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
            )
        return bool(result.rowcount == 1)

    async def release_lock(self, collection_id: str, owner: str) -> None:
        async with transaction(self._engine) as connection:
            await connection.execute(
                update(CollectionState)
                .where(
                    CollectionState.collection_id == collection_id,
                    CollectionState.lock_owner == owner,
                )
                .values(lock_owner=None, lock_expires_at=None, updated_at=_now())
            )

    async def release_server_locks(self, tag: str | None) -> int:
        async with transaction(self._engine) as connection:
            result = await connection.execute(
                update(CollectionState)
                .where(server_owner(CollectionState.lock_owner, tag))
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
    ) -> None:
        now = _now()
        async with transaction(self._engine) as connection:
            advanced = await connection.execute(
                update(CollectionState)
                .where(
                    CollectionState.collection_id == version.collection_id,
                    CollectionState.lock_owner == owner,
                    CollectionState.last_version_number == version.number - 1,
                )
                .values(last_version_number=version.number, updated_at=now)
            )
            if advanced.rowcount != 1:
                raise LockLost(f"upload lock of {version.collection_id} was taken over")
            if consume_session_id is not None:
                # A single-use token: whoever deactivates it first records their upload;
                # raising here rolls the whole transaction back (the counter included).
                consumed = await connection.execute(
                    update(GrantedAccess)
                    .where(
                        GrantedAccess.id == consume_session_id,
                        GrantedAccess.deactivated == false(),
                        GrantedAccess.deleted_at.is_(None),
                    )
                    .values(deactivated=True, updated_at=now)
                )
                if consumed.rowcount != 1:
                    raise SessionConsumed(f"session {consume_session_id[:12]} is not active")
            await connection.execute(insert_version(version))
            if rotated_ids:
                await connection.execute(
                    update(BackupVersion)
                    .where(
                        BackupVersion.id.in_(list(rotated_ids)), BackupVersion.deleted_at.is_(None)
                    )
                    .values(deleted_at=now, updated_at=now)
                )

    async def set_protected(self, version_id: str, owner: str, protected: bool) -> bool:
        now = _now()
        async with transaction(self._engine) as connection:
            await _check_lock(connection, version_id, owner, now)
            changed = await connection.execute(
                update(BackupVersion)
                .where(BackupVersion.id == version_id, BackupVersion.deleted_at.is_(None))
                .values(protected=protected, updated_at=now)
            )
        return bool(changed.rowcount == 1)

    async def delete_version(self, version_id: str, owner: str) -> datetime | None:
        now = _now()
        async with transaction(self._engine) as connection:
            await _check_lock(connection, version_id, owner, now)
            deleted = await connection.execute(
                update(BackupVersion)
                .where(
                    BackupVersion.id == version_id,
                    BackupVersion.deleted_at.is_(None),
                    BackupVersion.protected == false(),
                )
                .values(deleted_at=now, updated_at=now)
            )
        return now if deleted.rowcount == 1 else None

    async def deleted_unpurged(self, collection_id: str) -> list[VersionRecord]:
        statement = (
            select(*_VERSION_COLUMNS)
            .where(
                BackupVersion.collection_id == collection_id,
                BackupVersion.deleted_at.is_not(None),
                BackupVersion.purged_at.is_(None),
            )
            .order_by(BackupVersion.version_number)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [_to_record(r) for r in rows]

    async def mark_purged(self, version_ids: Sequence[str]) -> None:
        if not version_ids:
            return
        async with transaction(self._engine) as connection:
            await connection.execute(
                update(BackupVersion)
                .where(and_(BackupVersion.id.in_(list(version_ids))))
                .values(purged_at=_now())
            )

    async def usage(self) -> dict[str, tuple[int, int]]:
        statement = (
            select(
                BackupVersion.collection_id,
                func.count(BackupVersion.id),
                func.coalesce(func.sum(BackupVersion.filesize), 0),
            )
            .where(BackupVersion.deleted_at.is_(None))
            .group_by(BackupVersion.collection_id)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}

    async def last_uploads(self) -> dict[str, datetime]:
        # Over every recorded version, rotated ones included: the newest is the last upload.
        statement = select(
            BackupVersion.collection_id, func.max(BackupVersion.created_at)
        ).group_by(BackupVersion.collection_id)
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return {str(r[0]): r[1] for r in rows if r[1] is not None}


async def _check_lock(
    connection: AsyncConnection, version_id: str, owner: str, now: datetime
) -> None:
    """Within a transaction that changes the version ``version_id``: its collection's upload
    lock is ``owner``'s (the row stays locked until the transaction ends), or LockLost."""
    collection_id = (
        select(BackupVersion.collection_id).where(BackupVersion.id == version_id)
    ).scalar_subquery()
    held = await connection.execute(
        update(CollectionState)
        .where(CollectionState.collection_id == collection_id, CollectionState.lock_owner == owner)
        .values(updated_at=now)
    )
    if held.rowcount != 1:
        raise LockLost(f"upload lock of the collection of version {version_id} was taken over")


# One version, as a download asks for it: its signature too (listings leave it out, it is
# the larger part). One statement each, built once (on SQLite one trip to the driver).
_ONE_VERSION: Final = SingleStatement(
    select(*_VERSION_COLUMNS, BackupVersion.signature).where(
        BackupVersion.collection_id == bindparam("cid"),
        BackupVersion.version_number == bindparam("number"),
        BackupVersion.deleted_at.is_(None),
    )
)
# The live versions of a collection, oldest first (listings, usage, retention).
_LIVE: Final = SingleStatement(
    select(*_VERSION_COLUMNS)
    .where(BackupVersion.collection_id == bindparam("cid"), BackupVersion.deleted_at.is_(None))
    .order_by(BackupVersion.version_number)
)
_LATEST_VERSION: Final = SingleStatement(
    select(*_VERSION_COLUMNS, BackupVersion.signature)
    .where(BackupVersion.collection_id == bindparam("cid"), BackupVersion.deleted_at.is_(None))
    .order_by(BackupVersion.version_number.desc())
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
    return insert(BackupVersion).values(
        id=version.id,
        collection_id=version.collection_id,
        version_number=version.number,
        filename=version.filename,
        storage_key=version.storage_key,
        filesize=version.size,
        sha256=version.sha256,
        uploaded_by_session_id=version.session_id,
        user_name=version.user,
        created_at=version.created_at,
        updated_at=version.updated_at,
        signer_fingerprint=version.signer_fingerprint,
        signature=version.signature,
    )
