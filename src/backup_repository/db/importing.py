"""The database side of ``backup-repository import-reference``: what is registered already,
and registering a version found in storage (with its original time) under the collection's
upload lock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, insert, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from backup_repository.db.repositories import transaction
from backup_repository.db.tables import BackupVersion, CollectionState
from backup_repository.domain.importing import KnownVersion
from backup_repository.services.ports import LockLost, VersionRecord


def _now() -> datetime:
    return datetime.now(UTC)


class SqlImportRepository:
    """Implements :class:`~backup_repository.services.importer.ImportRepository`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def schema_ready(self) -> bool:
        """Whether our tables exist (a dry run must not create them)."""

        def check(connection: Any) -> bool:
            names = set(inspect(connection).get_table_names())
            return {"backup_versions", "collection_states"} <= names

        async with transaction(self._engine) as connection:
            return bool(await connection.run_sync(check))

    async def known_versions(self, collection_id: str) -> list[KnownVersion]:
        statement = (
            select(
                BackupVersion.version_number,
                BackupVersion.storage_key,
                BackupVersion.filesize,
                BackupVersion.deleted_at,
            )
            .where(BackupVersion.collection_id == collection_id)
            .order_by(BackupVersion.version_number)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return [
            KnownVersion(int(r[0]), str(r[1]), int(r[2]), deleted=r[3] is not None) for r in rows
        ]

    async def last_version_number(self, collection_id: str) -> int:
        async with transaction(self._engine) as connection:
            value = await connection.scalar(
                select(CollectionState.last_version_number).where(
                    CollectionState.collection_id == collection_id
                )
            )
        return int(value or 0)

    async def register(self, version: VersionRecord, owner: str) -> None:
        """In one transaction: check the upload lock is ``owner``'s, raise the counter to at
        least the version's number and record the version. Raises LockLost."""
        async with transaction(self._engine) as connection:
            await self._raise(connection, version.collection_id, version.number, owner)
            await connection.execute(
                insert(BackupVersion).values(
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
                )
            )

    async def raise_counter(self, collection_id: str, number: int, owner: str) -> int:
        """Raise the collection's last version number to at least ``number`` (never lower
        it) while ``owner`` holds the lock; returns the counter afterwards."""
        async with transaction(self._engine) as connection:
            await self._raise(connection, collection_id, number, owner)
            value = await connection.scalar(
                select(CollectionState.last_version_number).where(
                    CollectionState.collection_id == collection_id
                )
            )
        return int(value or 0)

    @staticmethod
    async def _raise(
        connection: AsyncConnection, collection_id: str, number: int, owner: str
    ) -> None:
        counter = CollectionState.last_version_number
        result = await connection.execute(
            update(CollectionState)
            .where(
                CollectionState.collection_id == collection_id,
                CollectionState.lock_owner == owner,
            )
            .values(
                last_version_number=case((counter < number, number), else_=counter),
                updated_at=_now(),
            )
        )
        if result.rowcount != 1:
            raise LockLost(f"upload lock of {collection_id} is not held by the import")
