"""The database side of ``backup-repository import-reference``: reading the reference
deployment's ``uploaded_versions`` table (read-only), and, in this server's database, what
is registered already and registering a version found in storage (with its original time)
under the collection's upload lock.

Read-only access to a reference deployment's database: its ``uploaded_versions`` table.

The reference project (Go, GORM) declares the table through its ``UploadedVersion`` model
(``server-go/storage/entity.go``, later ``pkg/storage``; created by GORM's ``AutoMigrate``)
with GORM's default names: ``id``, ``collection_id``, ``version_number``, ``filename``
(the file name only; the object key is ``<collection_id>/<filename>``), ``filesize``
(bytes), ``uploaded_by_session_id``, ``uploader``, ``created_at``, ``updated_at`` and
``deleted_at``. Rotation deletes rows softly: ``deleted_at`` is set and GORM leaves such
rows out of every query, so they are ignored here too.

Nothing is ever written to that database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    Table,
    Text,
    case,
    func,
    inspect,
    select,
    update,
)

from backup_repository.db.engine import AsyncConnection, AsyncEngine
from backup_repository.db.repositories import transaction
from backup_repository.db.tables import backup_versions, collection_states
from backup_repository.db.versions import insert_version
from backup_repository.domain.import_reference import KnownVersion, ReferenceRow
from backup_repository.services.ports import LockLost, VersionRecord

# -- the reference deployment's table (read-only) --------------------------------------------

REFERENCE_TABLE: Final = "uploaded_versions"

# Its own MetaData: this table is not ours, no migration may ever create it.
_metadata = MetaData()
uploaded_versions: Final = Table(
    REFERENCE_TABLE,
    _metadata,
    Column("id", Text, primary_key=True),
    Column("collection_id", Text),
    Column("version_number", BigInteger),
    Column("filename", Text),
    Column("filesize", BigInteger),
    Column("uploaded_by_session_id", Text),
    Column("uploader", Text),
    Column("created_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
    Column("deleted_at", DateTime(timezone=True)),
)


class ReferenceSchemaError(Exception):
    """The database does not hold the reference's ``uploaded_versions`` table."""


class SqlReferenceVersions:
    """Implements :class:`~backup_repository.services.import_reference.ReferenceVersions`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def check(self) -> None:
        """Raise ReferenceSchemaError unless the table and its columns are there."""

        def columns(connection: Any) -> set[str] | None:
            inspector = inspect(connection)
            if not inspector.has_table(REFERENCE_TABLE):
                return None
            return {str(c["name"]) for c in inspector.get_columns(REFERENCE_TABLE)}

        async with transaction(self._engine) as connection:
            found = await connection.run_sync(columns)
        if found is None:
            raise ReferenceSchemaError(
                f"the reference database has no {REFERENCE_TABLE} table (is it the database "
                f"of a Backup Repository v4 deployment?)"
            )
        missing = sorted({c.name for c in uploaded_versions.columns} - found)
        if missing:
            raise ReferenceSchemaError(
                f"the reference database's {REFERENCE_TABLE} table lacks the column(s) "
                f"{', '.join(missing)}"
            )

    async def counts(self) -> dict[str, int]:
        """Live rows per collection id."""
        statement = (
            select(uploaded_versions.c.collection_id, func.count())
            .where(uploaded_versions.c.deleted_at.is_(None))
            .group_by(uploaded_versions.c.collection_id)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    async def versions(self, collection_id: str) -> list[ReferenceRow]:
        """The live rows of a collection, by version number."""
        table = uploaded_versions.c
        statement = (
            select(
                table.version_number,
                table.filename,
                table.filesize,
                table.created_at,
                table.updated_at,
                table.uploader,
                table.uploaded_by_session_id,
            )
            .where(table.collection_id == collection_id, table.deleted_at.is_(None))
            .order_by(table.version_number, table.filename)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return [
            ReferenceRow(
                number=int(r[0] or 0),
                filename=str(r[1] or ""),
                size=None if r[2] is None else int(r[2]),
                created_at=_aware(r[3]),
                updated_at=_aware(r[4]),
                uploader=str(r[5] or ""),
                session_id=str(r[6] or ""),
            )
            for r in rows
        ]


def _aware(value: object) -> datetime | None:
    """A timestamp as UTC; one without a zone (``timestamp without time zone``, SQLite)
    is taken to be UTC. Go's zero time (year 1) means unknown."""
    if not isinstance(value, datetime) or value.year <= 1:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# -- registering in this server's database ---------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


class SqlImportRepository:
    """Implements :class:`~backup_repository.services.import_reference.ImportRepository`."""

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
                backup_versions.c.version_number,
                backup_versions.c.storage_key,
                backup_versions.c.filesize,
                backup_versions.c.deleted_at,
            )
            .where(backup_versions.c.collection_id == collection_id)
            .order_by(backup_versions.c.version_number)
        )
        async with transaction(self._engine) as connection:
            rows = (await connection.execute(statement)).all()
        return [
            KnownVersion(int(r[0]), str(r[1]), int(r[2]), deleted=r[3] is not None) for r in rows
        ]

    async def last_version_number(self, collection_id: str) -> int:
        async with transaction(self._engine) as connection:
            value = await connection.scalar(
                select(collection_states.c.last_version_number).where(
                    collection_states.c.collection_id == collection_id
                )
            )
        return int(value or 0)

    async def register(self, version: VersionRecord, owner: str) -> None:
        """In one transaction: check the upload lock is ``owner``'s, raise the counter to at
        least the version's number and record the version. Raises LockLost."""
        async with transaction(self._engine) as connection:
            await self._raise(connection, version.collection_id, version.number, owner)
            await connection.execute(insert_version(version))

    async def raise_counter(self, collection_id: str, number: int, owner: str) -> int:
        """Raise the collection's last version number to at least ``number`` (never lower
        it) while ``owner`` holds the lock; returns the counter afterwards."""
        async with transaction(self._engine) as connection:
            await self._raise(connection, collection_id, number, owner)
            value = await connection.scalar(
                select(collection_states.c.last_version_number).where(
                    collection_states.c.collection_id == collection_id
                )
            )
        return int(value or 0)

    @staticmethod
    async def _raise(
        connection: AsyncConnection, collection_id: str, number: int, owner: str
    ) -> None:
        counter = collection_states.c.last_version_number
        result = await connection.execute(
            update(collection_states)
            .where(
                collection_states.c.collection_id == collection_id,
                collection_states.c.lock_owner == owner,
            )
            .values(
                last_version_number=case((counter < number, number), else_=counter),
                updated_at=_now(),
            )
        )
        if result.rowcount != 1:
            raise LockLost(f"upload lock of {collection_id} is not held by the import")
