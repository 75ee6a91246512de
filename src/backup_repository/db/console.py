"""The web console's batched reads (services/console.py): the live versions and the latest
integrity checks of every visible collection, each in one query, however many collections
the page shows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.db.integrity import _CHECK_COLUMNS, _to_check
from backup_repository.db.repositories import transaction
from backup_repository.db.tables import BackupVersion, VersionCheckRow
from backup_repository.services.ports import VersionCheck, VersionRecord

# The version columns without the uploading access key (a subquery per row; the collection
# page, which shows it, reads its versions through the collection service).
_COLUMNS: Final = (
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
)


class SqlConsoleRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def live_versions_of(
        self, collection_ids: Sequence[str]
    ) -> dict[str, list[VersionRecord]]:
        if not collection_ids:
            return {}
        statement = (
            select(*_COLUMNS)
            .where(
                BackupVersion.collection_id.in_(list(collection_ids)),
                BackupVersion.deleted_at.is_(None),
            )
            .order_by(BackupVersion.collection_id, BackupVersion.version_number)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        found: dict[str, list[VersionRecord]] = {}
        for row in rows:
            found.setdefault(row[1], []).append(
                VersionRecord(
                    id=row[0],
                    collection_id=row[1],
                    number=row[2],
                    filename=row[3],
                    storage_key=row[4],
                    size=row[5],
                    sha256=row[6],
                    session_id=row[7],
                    user=row[8],
                    created_at=row[9],
                    updated_at=row[10],
                )
            )
        return found

    async def latest_checks_of(
        self, collection_ids: Sequence[str]
    ) -> dict[str, list[VersionCheck]]:
        if not collection_ids:
            return {}
        statement = (
            select(*_CHECK_COLUMNS)
            .join(BackupVersion, BackupVersion.id == VersionCheckRow.version_id)
            .where(
                BackupVersion.deleted_at.is_(None),
                VersionCheckRow.collection_id.in_(list(collection_ids)),
            )
            .order_by(VersionCheckRow.collection_id, VersionCheckRow.version_number)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).mappings().all()
        found: dict[str, list[VersionCheck]] = {}
        for row in rows:
            check = _to_check(row)
            found.setdefault(check.collection_id, []).append(check)
        return found
